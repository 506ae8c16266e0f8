"""Switchboard's engine: the lead lifecycle, scheduler, actors, channels and telephony."""
