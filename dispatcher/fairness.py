"""Sharing free channels between resellers: weighted stride scheduling.

Each reseller has a weight and a virtual time; every lead claimed for it advances its
virtual time by 1/weight, and each free channel goes to the active reseller with the
smallest virtual time. A reseller that becomes active starts at the system's virtual
time (the smallest among the active ones), so it neither starves others with credit
saved while idle nor waits behind the backlog of others.

The bound this gives (README "Fairness"): while k resellers of equal weight have due
leads, each gets every k-th claimed channel; a reseller's n-th due lead is claimed within
n·k claims (n·W/w with weights: W the sum of active weights, w its own), plus the leads
already QUEUED when it became due.

Within a reseller, leads go highest priority first, but every AGING_EVERY-th lead claimed
for it is its oldest due lead whatever its priority, so a steady stream of high-priority
leads cannot hold a low-priority one back forever.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from psycopg import Connection

AGING_EVERY = 5
SYSTEM = ""  # the fair_shares row that holds the system's virtual time


@dataclass
class Share:
    weight: float = 1.0
    vtime: float = 0.0
    claimed: int = 0

    def charge(self, n: int) -> None:
        self.vtime += n / self.weight
        self.claimed += n


def allocate(slots: int, shares: Mapping[str, Share]) -> dict[str, int]:
    """How many of `slots` each reseller gets (ties go to the smaller reseller id)."""
    heap = [(s.vtime, r) for r, s in shares.items()]
    heapq.heapify(heap)
    out = dict.fromkeys(shares, 0)
    for _ in range(slots if heap else 0):
        vtime, r = heapq.heappop(heap)
        out[r] += 1
        heapq.heappush(heap, (vtime + 1 / shares[r].weight, r))
    return {r: n for r, n in out.items() if n}


def oldest_quota(claimed_before: int, count: int) -> int:
    """How many of the next `count` claims for a reseller go to its oldest leads."""
    return (claimed_before + count) // AGING_EVERY - claimed_before // AGING_EVERY


# The distinct resellers with BACKLOG leads, as `r`: a loose index scan (one probe per
# reseller) over the claim indexes; prefix of a query that reads `r`.
BACKLOG_RESELLERS = """
    WITH RECURSIVE r(reseller_id) AS (
        (SELECT reseller_id FROM leads WHERE status = 'BACKLOG'
         ORDER BY reseller_id LIMIT 1)
        UNION ALL
        SELECT (SELECT l.reseller_id FROM leads l
                WHERE l.status = 'BACKLOG' AND l.reseller_id > r.reseller_id
                ORDER BY l.reseller_id LIMIT 1)
        FROM r WHERE r.reseller_id IS NOT NULL
    )
"""


def active_resellers(conn: Connection, exclude: Collection[str]) -> list[str]:
    """Resellers with a due BACKLOG lead: a loose index scan over the distinct resellers
    in the backlog, then one index probe each (resellers are few; leads are many)."""
    rows = conn.execute(
        BACKLOG_RESELLERS
        + """
        SELECT r.reseller_id FROM r
        WHERE r.reseller_id IS NOT NULL AND NOT (r.reseller_id = ANY(%s))
          AND EXISTS (SELECT 1 FROM leads d WHERE d.status = 'BACKLOG'
                      AND d.reseller_id = r.reseller_id AND d.next_attempt_at <= now())
        """,
        (list(exclude),),
    ).fetchall()
    return [r["reseller_id"] for r in rows]


def load(conn: Connection, resellers: Collection[str]) -> dict[str, Share]:
    """Shares of `resellers`, newcomers lifted to the system's virtual time. Locks the
    rows: claims are allocated by one scheduler at a time."""
    rows = conn.execute(
        "SELECT reseller_id, weight, vtime, claimed FROM fair_shares"
        " WHERE reseller_id = ANY(%s) ORDER BY reseller_id FOR UPDATE",
        ([SYSTEM, *resellers],),
    ).fetchall()
    known = {r["reseller_id"]: Share(r["weight"], r["vtime"], r["claimed"]) for r in rows}
    floor = known[SYSTEM].vtime if SYSTEM in known else 0.0
    shares = {r: known.get(r, Share()) for r in resellers}
    for share in shares.values():
        share.vtime = max(share.vtime, floor)
    return shares


def save(conn: Connection, shares: Mapping[str, Share]) -> None:
    if not shares:
        return
    floor = min(s.vtime for s in shares.values())
    rows = [(r, s.weight, s.vtime, s.claimed) for r, s in shares.items()]
    rows.append((SYSTEM, 1.0, floor, 0))
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO fair_shares (reseller_id, weight, vtime, claimed)
            VALUES (%s, %s, %s, %s)
            ON CONFLICT (reseller_id) DO UPDATE
            SET vtime = EXCLUDED.vtime, claimed = EXCLUDED.claimed
            """,
            rows,
        )
