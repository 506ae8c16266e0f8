"""Switchboard's REST API (Litestar): routes, auth, webhooks, health."""
