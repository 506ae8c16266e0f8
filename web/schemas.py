"""Request bodies as msgspec Structs: they reject unknown fields and wrong types (422) and
document the API in OpenAPI. Value rules (valid numbers, existing templates, ranges that
depend on the database) live in the dispatcher services, which also serve the importer.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from dispatcher import leads
from dispatcher.leads import FieldError

_TEXT = Meta(max_length=leads.MAX_TEXT)
_TIME = Meta(
    description="RFC 3339 time with a UTC offset, e.g. 2025-01-31T09:00:00Z",
    examples=["2025-01-31T09:00:00Z"],
)


class LeadIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """A lead to dial. Blank strings count as missing."""

    phone: Annotated[str, Meta(description="E.164, a valid number", examples=["+14155550123"])]
    reseller_id: Annotated[str, Meta(description="admin only; otherwise from the token")] | None = (
        None
    )
    merchant_id: Annotated[str, _TEXT] | None = None
    template: Annotated[str, Meta(description='default "default"; must exist')] | None = None
    customer_name: Annotated[str, _TEXT] | None = None
    payload: (
        Annotated[dict[str, Any], Meta(description="passed to the voice agent; <= 16 KiB")] | None
    ) = None
    priority: (
        Annotated[
            int,
            Meta(
                ge=leads.PRIORITY_MIN,
                le=leads.PRIORITY_MAX,
                description="default 5; higher is dialed first",
            ),
        ]
        | None
    ) = None
    timezone: (
        Annotated[str, Meta(description="IANA name; inferred from the number when absent")] | None
    ) = None
    not_before: Annotated[str, _TIME] | None = None
    expires_at: Annotated[str, _TIME] | None = None
    max_attempts: (
        Annotated[int, Meta(ge=leads.MAX_ATTEMPTS_MIN, le=leads.MAX_ATTEMPTS_MAX)] | None
    ) = None
    idempotency_key: (
        Annotated[str, Meta(max_length=leads.MAX_TEXT, description="unique per reseller")] | None
    ) = None


class BulkIn(Struct, forbid_unknown_fields=True):
    leads: Annotated[
        list[Any],
        Meta(
            max_length=leads.MAX_BULK,
            description="LeadIn objects, each validated on its own",
        ),
    ]


class NumberIn(Struct, forbid_unknown_fields=True, kw_only=True):
    e164: Annotated[str, Meta(examples=["+14155550100"])]
    max_channels: Annotated[int, Meta(ge=1)]
    provider: str = "simulator"
    cps: Annotated[float, Meta(gt=0, description="calls per second; null: no limit")] | None = None
    reseller_id: (
        Annotated[str, Meta(description="null: the shared pool (admin only)")] | UnsetType | None
    ) = UNSET
    enabled: bool = True


class NumberPatch(Struct, forbid_unknown_fields=True, kw_only=True):
    provider: str | UnsetType = UNSET
    max_channels: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    cps: Annotated[float, Meta(gt=0)] | UnsetType | None = UNSET
    reseller_id: Annotated[str, Meta(description="admin only")] | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET


class CallingWindow(Struct, forbid_unknown_fields=True):
    start: Annotated[str, Meta(description="HH:MM in the lead's time zone", examples=["09:00"])]
    end: Annotated[str, Meta(description="HH:MM, after start", examples=["21:00"])]
    days: Annotated[list[str], Meta(description="mon, tue, wed, thu, fri, sat, sun")]
    restricted_dates: (
        Annotated[list[str], Meta(description="local dates YYYY-MM-DD with no calls")] | None
    ) = None


class RetrySpec(Struct, forbid_unknown_fields=True, kw_only=True):
    max_attempts: Annotated[int, Meta(ge=1, le=20)]
    retry_on: Annotated[list[str], Meta(description="call outcomes that are retried")]
    delay_s: Annotated[int, Meta(ge=0, description="seconds before the next attempt")]
    backoff: Annotated[str, Meta(description="fixed or exponential")] = "fixed"
    jitter: Annotated[float, Meta(ge=0, le=1, description="± fraction of the delay")] | None = None
    spread_hours: (
        Annotated[float, Meta(ge=0, le=24, description="min hours after the last attempt")] | None
    ) = None


class FrequencyCap(Struct, forbid_unknown_fields=True):
    per_phone_per_day: Annotated[int, Meta(ge=1)]


class TemplateIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """A full template: PUT replaces it. `calling_window` null means any time."""

    calling_window: CallingWindow | None
    retry: RetrySpec
    frequency_cap: FrequencyCap | None
    execution_mode: Annotated[str, Meta(description="telephony or telephony_alert")] = "telephony"


def to_item(struct: Struct) -> dict[str, Any]:
    """The struct as plain data for the services; UNSET fields are left out."""
    return msgspec.to_builtins(struct)


_UNKNOWN = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


def field_error(message: str, path: str) -> FieldError:
    """A msgspec error as a FieldError naming the bad field (`path` like `a.b`, or '' or
    'data' for the body itself, where the field is in the message)."""
    path = "" if path in ("data", "$") else path.removeprefix("data.").removeprefix("$.")
    if named := _UNKNOWN.search(message):
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return FieldError(path or "body", message)


def convert_item(raw: Any, type_: type[Struct]) -> Struct | FieldError:
    """Decode one bulk item like the API decodes a single body (lax: "5" is 5)."""
    try:
        return msgspec.convert(raw, type_, strict=False)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `")
        return field_error(message, where.rstrip("`"))
