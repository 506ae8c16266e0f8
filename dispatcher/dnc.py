"""The do-not-call lists: one global list (reseller_id NULL) and one per reseller.

A number is listed for a lead when it is on the global list or on the lead's reseller's
list. Listing a number skips the leads still waiting for it (BACKLOG) at once, through
`lifecycle.skip_listed`; leads already claimed are caught by `is_listed`, which the
dispatcher asks just before dialing. Removing an entry does not revive skipped leads:
SKIPPED is final.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers
import structlog
from psycopg import Connection

from dispatcher import leads, lifecycle
from dispatcher.leads import FieldError, InvalidInput, Page
from dispatcher.logs import mask_phone

log = structlog.get_logger(__name__)

Row = dict[str, Any]

MAX_PHONES = leads.MAX_BULK
_LOGGED_PHONES = 5  # a bulk add logs its count and the first few numbers, masked


@dataclass(frozen=True)
class AddResult:
    added: int  # entries created
    already: int  # phones that were already on this list (or repeated in the request)
    skipped_leads: list[int]  # BACKLOG leads that ended SKIPPED because of this add


def normalise(value: Any) -> str:
    """The number in canonical E.164, as leads store it; ValueError says why not."""
    return phonenumbers.format_number(leads.parse_e164(value), phonenumbers.PhoneNumberFormat.E164)


def _phones(phones: Sequence[Any]) -> list[str]:
    """Every phone normalised, or InvalidInput naming each bad one as `phones[i]`."""
    if not phones:
        raise InvalidInput([FieldError("phones", "must list at least one number")])
    if len(phones) > MAX_PHONES:
        raise InvalidInput([FieldError("phones", f"must list at most {MAX_PHONES} numbers")])
    out: list[str] = []
    errors: list[FieldError] = []
    for i, raw in enumerate(phones):
        try:
            out.append(normalise(raw))
        except ValueError as exc:
            errors.append(FieldError(f"phones[{i}]", str(exc)))
    if errors:
        raise InvalidInput(errors)
    return out


def _list_id(reseller_id: str | None, field: str = "reseller_id") -> str | None:
    """None (the global list) or a reseller id; blank counts as missing."""
    if reseller_id is None or (isinstance(reseller_id, str) and not reseller_id.strip()):
        return None
    if not isinstance(reseller_id, str) or len(reseller_id.strip()) > leads.MAX_TEXT:
        raise InvalidInput([FieldError(field, f"must be a reseller id (<= {leads.MAX_TEXT})")])
    return reseller_id.strip()


def add(conn: Connection, phones: Sequence[str], reseller_id: str | None) -> AddResult:
    """List `phones` on the global list (reseller_id None) or that reseller's list.

    All or nothing: one bad phone stores none. Re-adding a listed number is not an error
    (it counts as `already`), so clients may retry freely."""
    normalised = _phones(phones)
    list_id = _list_id(reseller_id)
    inserted = conn.execute(
        """
        INSERT INTO dnc (phone, reseller_id)
        SELECT DISTINCT p, %s::text FROM unnest(%s::text[]) AS p
        ON CONFLICT (phone, (coalesce(reseller_id, ''))) DO NOTHING
        RETURNING phone
        """,
        (list_id, normalised),
    ).fetchall()
    skipped = sorted(lifecycle.skip_listed(conn, sorted(set(normalised)), list_id))
    result = AddResult(
        added=len(inserted), already=len(normalised) - len(inserted), skipped_leads=skipped
    )
    log.info(
        "dnc_added",
        reseller_id=list_id,
        phones=[mask_phone(p) for p in normalised[:_LOGGED_PHONES]],
        count=len(normalised),
        added=result.added,
        already=result.already,
        skipped_leads=len(skipped),
    )
    return result


def is_listed(conn: Connection, phone: str, reseller_id: str | None) -> bool:
    """Whether a lead of `reseller_id` must not call `phone` (an E.164 as leads store it):
    a global entry or one of that reseller's."""
    return bool(listed_among(conn, [(phone, reseller_id)]))


def listed_among(
    conn: Connection, pairs: Sequence[tuple[str, str | None]]
) -> set[tuple[str, str | None]]:
    """The (phone, reseller_id) pairs that must not be called, in one query: the
    dispatcher asks this just before dialing each batch."""
    if not pairs:
        return set()
    rows = conn.execute(
        """
        SELECT p.phone, p.reseller_id FROM unnest(%s::text[], %s::text[]) AS p(phone, reseller_id)
        WHERE EXISTS (SELECT 1 FROM dnc d WHERE d.phone = p.phone
                      AND (d.reseller_id IS NULL OR d.reseller_id = p.reseller_id))
        """,
        ([p[0] for p in pairs], [p[1] for p in pairs]),
    ).fetchall()
    return {(r["phone"], r["reseller_id"]) for r in rows}


def remove(conn: Connection, phone: str, reseller_id: str | None) -> bool:
    """Take `phone` off one list (reseller_id None: the global one); False when it was not
    on it. Raises InvalidInput for a malformed phone."""
    try:
        number = normalise(phone)
    except ValueError as exc:
        raise InvalidInput([FieldError("phone", str(exc))]) from None
    list_id = _list_id(reseller_id)
    row = conn.execute(
        "DELETE FROM dnc WHERE phone = %s AND coalesce(reseller_id, '') = coalesce(%s, '')"
        " RETURNING id",
        (number, list_id),
    ).fetchone()
    if row is not None:
        log.info("dnc_removed", phone=mask_phone(number), reseller_id=list_id)
    return row is not None


# --- reading ----------------------------------------------------------------------------


def list_entries(
    conn: Connection,
    scope_reseller: str | None,
    phone: str | None = None,
    limit: int = leads.DEFAULT_PAGE,
    cursor: str | None = None,
) -> Page:
    """One page of entries, newest first (keyset on id). `scope_reseller` None sees every
    list (an admin); a reseller sees its own list and the global one, since both stop its
    calls. Raises InvalidInput for a bad phone, limit or cursor."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    errors: list[FieldError] = []
    if not leads.MIN_PAGE <= limit <= leads.MAX_PAGE:
        errors.append(FieldError("limit", f"must be between {leads.MIN_PAGE} and {leads.MAX_PAGE}"))
    if scope_reseller is not None:
        clauses.append("(reseller_id IS NULL OR reseller_id = %(scope)s)")
        params["scope"] = scope_reseller
    if phone is not None and phone.strip():
        try:
            params["phone"] = normalise(phone)
            clauses.append("phone = %(phone)s")
        except ValueError as exc:
            errors.append(FieldError("phone", str(exc)))
    leads.add_cursor(cursor, clauses, params, errors)
    if errors:
        raise InvalidInput(errors)
    return leads.fetch_page(conn, "dnc", clauses, params, limit)


def entry_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "phone": row["phone"],
        "reseller_id": row["reseller_id"],
        "created_at": row["created_at"].isoformat(),
    }
