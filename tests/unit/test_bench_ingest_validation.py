"""The faster lead validation made for bulk ingest must decide exactly what the plain
phonenumbers calls decided, and must hash and measure bodies exactly as before (stored
request hashes are compared with new ones on every idempotent replay)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
from typing import Any

import phonenumbers
import pytest
from phonenumbers import timezone as phone_timezones

from dispatcher import leads


def _numbers() -> list[str]:
    """E.164-shaped strings over every country code, valid and not, plus fixed cases."""
    rng = random.Random(4)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    out = [
        "+14155550123",
        "+442071838750",  # London, fixed line
        "+447400123456",  # UK mobile: not geographical
        "+80012345678",  # international freephone (non-geographic region 001)
        "+61491570156",
        "+12345678901",
        "+999123456",
        "+1",
    ]
    for _ in range(6000):
        cc = str(rng.choice(codes))
        out.append(f"+{cc}{rng.randrange(10**6, 10**11)}"[:16])
    # Valid examples of every region and type, where the library has them.
    for region in phonenumbers.SUPPORTED_REGIONS:
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                out.append(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    return out


def _old_phone(value: str) -> str:
    """The validation as it was: parse, is_valid_number, format."""
    if not leads._E164.match(value.strip()):
        raise ValueError("must be an E.164 number, e.g. +14155550123")
    number = phonenumbers.parse(value.strip(), None)
    if not phonenumbers.is_valid_number(number):
        raise ValueError("is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _old_zone(e164: str) -> str | None:
    zones = phone_timezones.time_zones_for_number(phonenumbers.parse(e164, None))
    return zones[0] if len(zones) == 1 and zones[0] in leads._zone_names() else None


def test_validity_e164_and_time_zone_are_those_of_phonenumbers() -> None:
    valid = 0
    for value in _numbers():
        try:
            expected: str | None = _old_phone(value)
        except ValueError as exc:
            with pytest.raises(ValueError, match=re.escape(str(exc))):
                leads.parse_phone(value)
            continue
        except phonenumbers.NumberParseException:  # was a 500; now a 422 like any bad number
            with pytest.raises(ValueError, match="is not a valid phone number"):
                leads.parse_phone(value)
            continue
        phone = leads.parse_phone(value)
        assert phone.e164 == expected, value
        assert leads.phone_timezone(phone) == _old_zone(phone.e164), value
        assert leads.infer_timezone(phone.e164) == _old_zone(phone.e164), value
        valid += 1
    assert valid > 300  # the sample exercises valid numbers, not only rejections


def _old_hash(values: dict[str, Any]) -> str:
    canonical = json.dumps(
        values,
        sort_keys=True,
        separators=(",", ":"),
        default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_request_hash_is_unchanged() -> None:
    values = {
        "reseller_id": "r1",
        "phone": "+14155550123",
        "customer_name": 'Zoë «quoted» "name"',
        "payload": {"b": [1, 2.5, None, True], "a": {"é": "\u2028"}},
        "not_before": dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "priority": 5,
        "timezone": None,
    }
    assert leads._request_hash(values) == _old_hash(values)


def test_payload_size_limit_is_unchanged() -> None:
    limit = leads.MAX_PAYLOAD_BYTES
    text = "é" * ((limit - len('{"k":""}')) // 2)  # two bytes each in UTF-8: exactly the limit
    assert leads._payload({"k": text}) == {"k": text}
    with pytest.raises(ValueError, match="at most"):
        leads._payload({"k": text + "x"})
