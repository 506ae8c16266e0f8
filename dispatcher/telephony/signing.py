"""HMAC-SHA256 signatures on the simulator's status callbacks.

The simulator signs the raw request body, not a re-serialised form of it, so the receiver
must verify the bytes exactly as they arrived before parsing them.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Switchboard-Signature"
_PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The header value for `body`: `sha256=<hex HMAC-SHA256 of body keyed by secret>`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{_PREFIX}{digest}"


def verify(body: bytes, secret: str, header_value: str | None) -> bool:
    """Whether `header_value` is the signature of `body`; constant-time, so a forger
    learns nothing from how long a wrong guess takes to reject."""
    if not header_value:
        return False
    expected = sign(body, secret).encode()
    given = header_value.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(expected, given)
