"""The lead service: what the REST API (and the CSV importer) call to create, read, list
and cancel leads.

An item is a mapping of the API's lead fields (a decoded JSON object or a CSV row with
`reseller_id` already resolved by the caller). Validation turns it into a
`lifecycle.NewLead` or a list of field errors; creation then checks templates,
idempotency keys and the do-not-call list with one set-based query each, so a bulk load
of 10,000 leads costs the same handful of statements as one lead. Status changes go
through `dispatcher.lifecycle` only.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import json
import re
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import phonenumbers
import structlog
from phonenumbers import phonenumberutil as _pnu
from phonenumbers import timezone as phone_timezones
from phonenumbers.phonemetadata import PhoneMetadata
from psycopg import Connection

from db.models import LEAD_STATUSES
from dispatcher import lifecycle, policy
from dispatcher.lifecycle import NewLead
from dispatcher.logs import mask_phone
from dispatcher.windows import CallingWindow

log = structlog.get_logger(__name__)

Row = dict[str, Any]

DEFAULT_TEMPLATE = "default"
DEFAULT_PRIORITY = 5
PRIORITY_MIN, PRIORITY_MAX = 1, 10
MAX_ATTEMPTS_MIN, MAX_ATTEMPTS_MAX = 1, 20
MAX_TEXT = 200  # customer_name, idempotency_key, reseller/merchant ids, template names
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_BULK = 10_000
MIN_PAGE, MAX_PAGE = 1, 500
DEFAULT_PAGE = 100

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")


# --- errors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class InvalidInput(Exception):
    """One or more fields are invalid; the API answers 422 naming each of them."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


class Conflict(Exception):
    """The request is well-formed but clashes with the current state (HTTP 409)."""


# --- validation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Phone:
    """A valid number, parsed once: its E.164 text and its type, which both validity and
    the time zone are derived from (phonenumbers computes the type for each of them, and
    the type is most of the cost of a lead's validation)."""

    e164: str
    number: phonenumbers.PhoneNumber
    number_type: int


def _number_type(number: phonenumbers.PhoneNumber) -> int:
    """`phonenumbers.number_type`, matching the number's patterns once where it would match
    them twice. A number is valid exactly when its type is not UNKNOWN (`is_valid_number`
    takes the same region and runs the same match); a unit test checks that both agree
    with phonenumbers on thousands of numbers.

    For a calling code shared by several regions (+1: the US, Canada, the Caribbean),
    phonenumbers finds the region by typing the number against each candidate, then types
    it again against the region found; here the type found is kept."""
    regions = _pnu.COUNTRY_CODE_TO_REGION_CODE.get(number.country_code)
    if regions is None or len(regions) == 1:
        return phonenumbers.number_type(number)
    national = phonenumbers.national_significant_number(number)
    for region in regions:  # as phonenumberutil._region_code_for_number_from_list
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        if metadata is None:
            continue
        if metadata.leading_digits is not None:
            if _pnu.re_compile(metadata.leading_digits).match(national):
                return phonenumbers.number_type(number)  # this region; typed once
        else:
            found = _pnu._number_type_helper(national, metadata)
            if found != phonenumbers.PhoneNumberType.UNKNOWN:
                return found
    return phonenumbers.PhoneNumberType.UNKNOWN  # no region: number_type says UNKNOWN


def parse_phone(value: Any) -> Phone:
    """The number in `value`, which must be E.164 and valid; ValueError says why not."""
    if not isinstance(value, str) or not _E164.match(value.strip()):
        raise ValueError("must be an E.164 number, e.g. +14155550123")
    try:
        number = phonenumbers.parse(value.strip(), None)
    except phonenumbers.NumberParseException:  # "+999…": no such country code
        raise ValueError("is not a valid phone number") from None
    number_type = _number_type(number)
    if number_type == phonenumbers.PhoneNumberType.UNKNOWN:
        raise ValueError("is not a valid phone number")
    return Phone(
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        number,
        number_type,
    )


def parse_e164(value: Any) -> phonenumbers.PhoneNumber:
    """The number in `value`, which must be E.164 and valid; ValueError says why not."""
    return parse_phone(value).number


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if len(value) > max_len:
        raise ValueError(f"must be at most {max_len} characters")
    return value


def _required_text(value: Any) -> str:
    if value is None:
        raise ValueError("is required")
    return _text(value)


def _int_between(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            value = int(value)  # a CSV cell
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _phone(value: Any) -> str:
    return _phone_info(value).e164


def _phone_info(value: Any) -> Phone:
    if value is None:
        raise ValueError("is required")
    return parse_phone(value)


# Built once: json.dumps with options builds a new encoder at every call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _payload(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    try:
        size = len(_COMPACT_JSON.encode(value).encode())
    except (TypeError, ValueError):
        raise ValueError("must be a JSON object") from None
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"must be at most {MAX_PAYLOAD_BYTES} bytes as JSON (it is {size})")
    return value


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _timezone(value: Any) -> str:
    name = _text(value)
    if name not in _zone_names():
        raise ValueError("must be an IANA time zone name, e.g. America/New_York")
    return name


def _timestamp(value: Any) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("must be an RFC 3339 time, e.g. 2025-01-31T09:00:00Z") from None
    if not isinstance(value, dt.datetime):
        raise ValueError("must be an RFC 3339 time, e.g. 2025-01-31T09:00:00Z")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must include a UTC offset, e.g. 2025-01-31T09:00:00Z")
    return value.astimezone(dt.UTC)


def _optional(parse: Callable[[Any], Any], default: Any = None) -> Callable[[Any], Any]:
    return lambda value: default if value is None else parse(value)


# Each field's parser gets None for a missing or blank value.
_FIELDS: dict[str, Callable[[Any], Any]] = {
    "reseller_id": _required_text,
    "merchant_id": _optional(_text),
    "phone": _phone_info,  # a Phone: _normalise keeps it apart and puts its E.164 text
    "template": _optional(_text, DEFAULT_TEMPLATE),
    "customer_name": _optional(_text),
    "payload": _payload,
    "priority": _optional(_int_between(PRIORITY_MIN, PRIORITY_MAX), DEFAULT_PRIORITY),
    "timezone": _optional(_timezone),
    "not_before": _optional(_timestamp),
    "expires_at": _optional(_timestamp),
    "max_attempts": _optional(_int_between(MAX_ATTEMPTS_MIN, MAX_ATTEMPTS_MAX)),
    "idempotency_key": _optional(_text),
}


@dataclass(frozen=True)
class _Draft:
    """A validated item before the database checks: NewLead's fields, the body hash and
    the parsed number (its time zone is inferred from it without parsing it again)."""

    values: dict[str, Any]
    request_hash: str
    phone: Phone | None = None


def _normalise(item: Mapping[str, Any]) -> tuple[dict[str, Any], list[FieldError], Phone | None]:
    """Parsed values (those that parsed), the errors of the others, the parsed number."""
    values: dict[str, Any] = {}
    errors = [FieldError(name, "is not a known field") for name in item if name not in _FIELDS]
    for name, parse in _FIELDS.items():
        raw = item.get(name)
        try:
            values[name] = parse(None if _blank(raw) else raw)
        except ValueError as exc:
            errors.append(FieldError(name, str(exc)))
    phone = values.get("phone")
    if phone is not None:
        values["phone"] = phone.e164
    not_before, expires_at = values.get("not_before"), values.get("expires_at")
    if not_before and expires_at and expires_at <= not_before:
        errors.append(FieldError("expires_at", "must be after not_before"))
    return values, errors, phone


# The canonical form behind request hashes, which are stored: it must never change, or a
# replay of an older lead would become a 409. One encoder, built once.
_CANONICAL_JSON = json.JSONEncoder(
    sort_keys=True,
    separators=(",", ":"),
    default=lambda v: v.isoformat() if isinstance(v, dt.datetime) else str(v),
)


def _request_hash(values: Mapping[str, Any]) -> str:
    """A canonical hash of the normalised body: equal for requests that mean the same lead."""
    return hashlib.sha256(_CANONICAL_JSON.encode(values).encode()).hexdigest()


def _time_errors(values: Mapping[str, Any], now: dt.datetime) -> list[FieldError]:
    """Checks that depend on the clock; an idempotent replay skips them."""
    expires_at = values.get("expires_at")
    if expires_at is not None and expires_at <= now:
        return [FieldError("expires_at", "must be in the future")]
    return []


def infer_timezone(phone: str) -> str | None:
    """The number's time zone when its prefix maps to exactly one, else None."""
    return _only_zone(phone_timezones.time_zones_for_number(phonenumbers.parse(phone, None)))


def phone_timezone(phone: Phone) -> str | None:
    """`infer_timezone` of a parsed number, from the type it already has:
    `time_zones_for_number` would compute the type again."""
    number = phone.number
    if not phonenumbers.is_number_type_geographical(phone.number_type, number.country_code):
        return _only_zone(phone_timezones._country_level_time_zones_for_number(number))
    return _only_zone(phone_timezones.time_zones_for_geographical_number(number))


def _only_zone(zones: Sequence[str]) -> str | None:
    if len(zones) == 1 and zones[0] in _zone_names():
        return zones[0]
    return None


def first_attempt_at(
    now: dt.datetime,
    not_before: dt.datetime | None,
    window: CallingWindow | None,
    timezone: str | None,
    phone: str,
) -> dt.datetime | None:
    """When a new lead is first due: not before `not_before`, at the first instant inside
    its calling window. None when its window never opens (the lead is skipped)."""
    earliest = max(now, not_before) if not_before is not None else now
    return policy.first_call_time(window, timezone, phone, earliest)


# --- creation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemError:
    index: int
    detail: str
    errors: list[FieldError]


@dataclass(frozen=True)
class BulkResult:
    created: int
    duplicates: int
    ids: list[int | None]  # one per item, None where it failed
    errors: list[ItemError]


@dataclass(frozen=True)
class _Outcome:
    lead_id: int | None = None
    duplicate: bool = False
    error: InvalidInput | Conflict | None = None


_KEY_REUSED = "idempotency_key was already used with a different body"


def create(
    conn: Connection, item: Mapping[str, Any], *, now: dt.datetime | None = None
) -> tuple[Row, bool]:
    """Create one lead; (the lead, True) when new, (the first lead, False) on an idempotent
    replay. Raises InvalidInput (422) or Conflict (409, a key reused with another body)."""
    [outcome] = _create_items(conn, [item], now or dt.datetime.now(dt.UTC))
    if outcome.error is not None:
        raise outcome.error
    assert outcome.lead_id is not None
    lead = _select(conn, ["l.id = %(id)s"], {"id": outcome.lead_id}, limit=1)[0]
    if not outcome.duplicate:
        log.info(
            "lead_created",
            lead_id=lead["id"],
            reseller_id=lead["reseller_id"],
            phone=mask_phone(lead["phone"]),
            status=lead["status"],
        )
    return lead, not outcome.duplicate


def create_many(
    conn: Connection,
    items: Sequence[Mapping[str, Any] | InvalidInput],
    *,
    now: dt.datetime | None = None,
) -> BulkResult:
    """Create every valid item with one `lifecycle.create_leads` call; the others get an
    error by index. An item may be an InvalidInput the caller already rejected (a wrong
    shape, a forbidden reseller) so that indexes stay those of the request."""
    outcomes = _create_items(conn, items, now or dt.datetime.now(dt.UTC))
    errors = [
        ItemError(
            i,
            str(o.error),
            o.error.errors
            if isinstance(o.error, InvalidInput)
            else [FieldError("idempotency_key", str(o.error))],
        )
        for i, o in enumerate(outcomes)
        if o.error is not None
    ]
    result = BulkResult(
        created=sum(1 for o in outcomes if o.lead_id is not None and not o.duplicate),
        duplicates=sum(1 for o in outcomes if o.duplicate),
        ids=[o.lead_id for o in outcomes],
        errors=errors,
    )
    log.info(
        "leads_bulk_created",
        items=len(items),
        created=result.created,
        duplicates=result.duplicates,
        failed=len(errors),
    )
    return result


def _create_items(
    conn: Connection, items: Sequence[Mapping[str, Any] | InvalidInput], now: dt.datetime
) -> list[_Outcome]:
    outcomes: dict[int, _Outcome] = {}
    drafts: dict[int, _Draft] = {}
    pending: dict[int, list[FieldError]] = {}  # items with errors, awaiting the template check
    parsed: dict[int, dict[str, Any]] = {}
    for i, item in enumerate(items):
        if isinstance(item, InvalidInput):
            outcomes[i] = _Outcome(error=item)
            continue
        values, errors, phone = _normalise(item)
        parsed[i] = values
        if errors:
            pending[i] = errors + _time_errors(values, now)
        else:
            drafts[i] = _Draft(values, _request_hash(values), phone)

    modes = _templates(conn, {v["template"] for v in parsed.values() if "template" in v})
    for i, values in parsed.items():
        name = values.get("template")
        if name is not None and name not in modes:
            unknown = FieldError("template", f"no template named {name!r}")
            pending.setdefault(i, []).append(unknown)
            if i in drafts:
                pending[i].extend(_time_errors(drafts.pop(i).values, now))

    # A key that already names a lead: the same body is a replay, another body a conflict.
    existing = _leads_by_key(conn, [d.values for d in drafts.values()])
    for i, draft in list(drafts.items()):
        found = existing.get(_key_of(draft.values))
        if found is not None:
            del drafts[i]
            outcomes[i] = _replay(found, draft)
        elif errors := _time_errors(draft.values, now):
            del drafts[i]
            pending[i] = errors
    for i, errors in pending.items():
        outcomes[i] = _Outcome(error=InvalidInput(errors))

    order = sorted(drafts)
    listed = _do_not_call(conn, [drafts[i].values for i in order])
    new_leads = [_new_lead(drafts[i], modes, listed, now) for i in order]
    ids = lifecycle.create_leads(conn, new_leads)
    unresolved = [i for i, lead_id in zip(order, ids, strict=True) if lead_id is None]
    for i, lead_id in zip(order, ids, strict=True):
        if lead_id is not None:
            outcomes[i] = _Outcome(lead_id)
    # Lost a race for the key, or repeated it within this batch: resolve like a replay.
    found_now = _leads_by_key(conn, [drafts[i].values for i in unresolved])
    for i in unresolved:
        outcomes[i] = _replay(found_now[_key_of(drafts[i].values)], drafts[i])
    return [outcomes[i] for i in range(len(items))]


def _key_of(values: Mapping[str, Any]) -> tuple[str, str] | None:
    key = values.get("idempotency_key")
    return (values["reseller_id"], key) if key else None


def _replay(found: Row, draft: _Draft) -> _Outcome:
    if found["request_hash"] == draft.request_hash:
        return _Outcome(found["id"], duplicate=True)
    return _Outcome(error=Conflict(_KEY_REUSED))


def _leads_by_key(conn: Connection, values: Sequence[Mapping[str, Any]]) -> dict[tuple, Row]:
    keys = {k for v in values if (k := _key_of(v)) is not None}
    if not keys:
        return {}
    rows = conn.execute(
        """
        SELECT id, reseller_id, idempotency_key, request_hash FROM leads
        WHERE (reseller_id, idempotency_key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
        """,
        ([r for r, _ in keys], [k for _, k in keys]),
    ).fetchall()
    return {(r["reseller_id"], r["idempotency_key"]): r for r in rows}


def _templates(conn: Connection, names: set[str]) -> dict[str, Row]:
    if not names:
        return {}
    rows = conn.execute(
        "SELECT name, execution_mode, calling_window FROM templates WHERE name = ANY(%s)",
        (list(names),),
    ).fetchall()
    return {r["name"]: r for r in rows}


def _do_not_call(conn: Connection, values: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(phone, reseller_id) pairs on the global list or on that reseller's own list."""
    if not values:
        return set()
    rows = conn.execute(
        "SELECT phone, reseller_id FROM dnc WHERE phone = ANY(%s)",
        (list({v["phone"] for v in values}),),
    ).fetchall()
    listed = {(r["phone"], r["reseller_id"]) for r in rows}
    return {
        (v["phone"], v["reseller_id"])
        for v in values
        if (v["phone"], None) in listed or (v["phone"], v["reseller_id"]) in listed
    }


def _new_lead(
    draft: _Draft, templates: Mapping[str, Row], listed: set[tuple[str, str]], now: dt.datetime
) -> NewLead:
    values = draft.values
    template = templates[values["template"]]
    timezone = values["timezone"] or (
        phone_timezone(draft.phone) if draft.phone else infer_timezone(values["phone"])
    )
    window = policy.window_for(template["execution_mode"], template["calling_window"])
    due = first_attempt_at(now, values["not_before"], window, timezone, values["phone"])
    skip = None
    if (values["phone"], values["reseller_id"]) in listed:
        skip = "do_not_call"
    elif due is None:
        skip = "no_calling_window"
    return NewLead(
        **{**values, "timezone": timezone},
        next_attempt_at=due or now,
        execution_mode=template["execution_mode"],
        request_hash=draft.request_hash,
        skip_reason=skip,
    )


# --- reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Which leads a caller may see: None means any (an admin)."""

    reseller_id: str | None = None
    merchant_id: str | None = None

    def where(self) -> tuple[list[str], dict[str, Any]]:
        clauses, params = [], {}
        if self.reseller_id is not None:
            clauses.append("l.reseller_id = %(scope_reseller)s")
            params["scope_reseller"] = self.reseller_id
        if self.merchant_id is not None:
            clauses.append("l.merchant_id = %(scope_merchant)s")
            params["scope_merchant"] = self.merchant_id
        return clauses, params


@dataclass(frozen=True)
class Page:
    items: list[Row]
    next_cursor: str | None


def _select(conn: Connection, where: list[str], params: dict[str, Any], limit: int) -> list[Row]:
    """Leads newest first, each with the reason of its latest status change."""
    sql = f"""
        SELECT l.*, ev.reason AS status_reason
        FROM leads l
        LEFT JOIN LATERAL (
            SELECT reason FROM lead_events WHERE lead_id = l.id ORDER BY id DESC LIMIT 1
        ) ev ON true
        WHERE {" AND ".join(where) or "true"}
        ORDER BY l.id DESC
        LIMIT %(limit)s
    """
    return conn.execute(sql, {**params, "limit": limit}).fetchall()


def get(conn: Connection, scope: Scope, lead_id: int) -> Row | None:
    """The lead if it exists and `scope` may see it (else None: a 404, never a 403)."""
    clauses, params = scope.where()
    rows = _select(conn, ["l.id = %(id)s", *clauses], {**params, "id": lead_id}, limit=1)
    return rows[0] if rows else None


def attempts(conn: Connection, lead_ids: Sequence[int]) -> dict[int, list[Row]]:
    """Each lead's call attempts, oldest first."""
    out: dict[int, list[Row]] = {lead_id: [] for lead_id in lead_ids}
    if not lead_ids:
        return out
    rows = conn.execute(
        "SELECT * FROM call_attempts WHERE lead_id = ANY(%s) ORDER BY lead_id, attempt_no",
        (list(lead_ids),),
    ).fetchall()
    for row in rows:
        out[row["lead_id"]].append(row)
    return out


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The last id of the previous page; a cursor this API did not return is a 422."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, last_id = text.partition(":")
        if version != "v1":
            raise ValueError(version)
        return int(last_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidInput([FieldError("cursor", "is not a cursor this API returned")]) from None


def add_cursor(
    cursor: str | None,
    clauses: list[str],
    params: dict[str, Any],
    errors: list[FieldError],
    column: str = "id",
) -> None:
    """Keyset pagination, newest first: only rows older than the cursor's last id."""
    if _blank(cursor):
        return
    try:
        params["before"] = decode_cursor(cursor or "")
        clauses.append(f"{column} < %(before)s")
    except InvalidInput as exc:
        errors.extend(exc.errors)


def fetch_page(
    conn: Connection, table: str, clauses: list[str], params: dict[str, Any], limit: int
) -> Page:
    """One page of `table`, newest first, and the cursor of the next one if there is one."""
    rows = conn.execute(
        f"SELECT * FROM {table} WHERE {' AND '.join(clauses) or 'true'}"
        " ORDER BY id DESC LIMIT %(limit)s",
        {**params, "limit": limit + 1},
    ).fetchall()
    return Page(rows[:limit], encode_cursor(rows[limit - 1]["id"]) if len(rows) > limit else None)


def list_leads(
    conn: Connection,
    scope: Scope,
    *,
    status: str | None = None,
    phone: str | None = None,
    template: str | None = None,
    limit: int = DEFAULT_PAGE,
    cursor: str | None = None,
) -> Page:
    """One page of leads, newest first (keyset on id: no gaps or repeats while leads are
    added). Raises InvalidInput for a bad filter, limit or cursor."""
    clauses, params = scope.where()
    errors: list[FieldError] = []
    if not MIN_PAGE <= limit <= MAX_PAGE:
        errors.append(FieldError("limit", f"must be between {MIN_PAGE} and {MAX_PAGE}"))
    if not _blank(status):
        if status not in LEAD_STATUSES:
            errors.append(FieldError("status", f"must be one of {', '.join(LEAD_STATUSES)}"))
        clauses.append("l.status = %(status)s")
        params["status"] = status
    if not _blank(phone):
        try:
            params["phone"] = _phone(phone)
            clauses.append("l.phone = %(phone)s")
        except ValueError as exc:
            errors.append(FieldError("phone", str(exc)))
    if not _blank(template):
        clauses.append("l.template = %(template)s")
        params["template"] = template
    add_cursor(cursor, clauses, params, errors, column="l.id")
    if errors:
        raise InvalidInput(errors)
    rows = _select(conn, clauses, params, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1]["id"]) if more else None)


# --- cancel -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CancelResult:
    lead: Row
    refused: str | None = None  # why it could not be cancelled (a 409); None: cancelled


def cancel(conn: Connection, scope: Scope, lead_id: int) -> CancelResult | None:
    """Cancel through the lifecycle; None when `scope` cannot see the lead."""
    if get(conn, scope, lead_id) is None:
        return None
    if lifecycle.cancel(conn, lead_id) is not None:
        log.info("lead_cancelled", lead_id=lead_id)
        lead = get(conn, scope, lead_id)
        assert lead is not None
        return CancelResult(lead)
    lead = get(conn, scope, lead_id)
    assert lead is not None
    return CancelResult(lead, refusal(lead["status"]))


def refusal(status: str) -> str:
    """Why a lead in `status` cannot be cancelled."""
    if status in lifecycle.FINAL:
        return f"lead is already {status}"
    if status == "IN_CALL":
        return "a call is in progress; it cannot be cancelled"
    return f"lead is {status}; it cannot be cancelled"


# --- serialisation ----------------------------------------------------------------------

_LEAD_FIELDS = (
    "id",
    "reseller_id",
    "merchant_id",
    "phone",
    "template",
    "execution_mode",
    "customer_name",
    "payload",
    "priority",
    "timezone",
    "not_before",
    "expires_at",
    "max_attempts",
    "idempotency_key",
    "status",
    "status_reason",
    "attempt_count",
    "next_attempt_at",
    "outcome",
    "created_at",
    "updated_at",
)
_ATTEMPT_FIELDS = (
    "id",
    "attempt_no",
    "number",
    "provider",
    "provider_call_id",
    "outcome",
    "started_at",
    "ended_at",
    "duration_s",
)


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool | dict | list):
        return value
    if isinstance(value, Decimal):
        return float(value)
    return str(value)  # UUID


def lead_json(row: Mapping[str, Any], lead_attempts: Sequence[Mapping[str, Any]]) -> dict:
    """The lead as the API returns it."""
    out = {name: _json_value(row.get(name)) for name in _LEAD_FIELDS}
    out["attempts"] = [
        {name: _json_value(a.get(name)) for name in _ATTEMPT_FIELDS} for a in lead_attempts
    ]
    return out
