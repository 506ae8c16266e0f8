"""Callback signatures: the exact header format, and rejection of anything else."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from dispatcher.telephony.signing import SIGNATURE_HEADER, sign, verify

BODY = b'{"event_id":"e1","status":"completed"}'
SECRET = "s3cret"


def test_header_name() -> None:
    assert SIGNATURE_HEADER == "X-Switchboard-Signature"


def test_sign_is_prefixed_hex_hmac_sha256_of_the_raw_body() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET) == f"sha256={expected}"


def test_sign_depends_on_body_and_secret() -> None:
    assert sign(BODY, SECRET) != sign(BODY + b" ", SECRET)
    assert sign(BODY, SECRET) != sign(BODY, SECRET + "x")


def test_verify_accepts_own_signature_with_surrounding_whitespace_and_upper_hex() -> None:
    header = sign(BODY, SECRET)
    assert verify(BODY, SECRET, header)
    assert verify(BODY, SECRET, f"  {header}\n")
    assert verify(BODY, SECRET, "sha256=" + header.removeprefix("sha256=").upper())


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha256=deadbeef",
        sign(BODY, "other-secret"),
        sign(BODY + b"x", SECRET),
        sign(BODY, SECRET).removeprefix("sha256="),  # bare hex, no scheme
        "sha1=" + sign(BODY, SECRET).removeprefix("sha256="),
        "sha256=\u00e9" + "0" * 63,  # non-ASCII must be rejected, not crash
    ],
)
def test_verify_rejects(header: str | None) -> None:
    assert verify(BODY, SECRET, header) is False


def test_verify_rejects_a_modified_body() -> None:
    header = sign(BODY, SECRET)
    assert not verify(BODY.replace(b"completed", b"busy"), SECRET, header)
