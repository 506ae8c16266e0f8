"""Telephony providers behind one small interface (see `base`)."""
