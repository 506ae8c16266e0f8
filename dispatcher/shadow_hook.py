"""The lifecycle's only link to the shadow ZSET schedule: two calls, no Redis.

`dispatcher.shadow` installs a mirror here once per process (from `Runtime.open`); until
then, and in processes without one, both calls return at once. The mirror never raises
and never writes anything the real path reads, so the lifecycle can call it inside its
transaction without a second thought.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Mirror(Protocol):
    def changed(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Lead rows a lifecycle transition returned (with `from_status`)."""

    def created(
        self, ids: Sequence[int | None], leads: Sequence[Any], inserted: Mapping[int, Any]
    ) -> None:
        """Leads `create_leads` inserted: `ids`/`leads` in input order, `inserted` by id."""


_mirror: Mirror | None = None


def install(mirror: Mirror | None) -> None:
    global _mirror
    _mirror = mirror


def current() -> Mirror | None:
    return _mirror


def changed(rows: Sequence[Mapping[str, Any]]) -> None:
    mirror = _mirror
    if mirror is not None and rows:
        mirror.changed(rows)


def created(ids: Sequence[int | None], leads: Sequence[Any], inserted: Mapping[int, Any]) -> None:
    mirror = _mirror
    if mirror is not None and inserted:
        mirror.created(ids, leads, inserted)
