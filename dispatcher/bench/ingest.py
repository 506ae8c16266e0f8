"""`bench ingest`: how fast the real API takes leads in.

Single `POST /v1/leads` at several concurrencies (requests/s, p50/p99 latency) and
`POST /v1/leads/bulk` with 10,000 leads per request, sequential and two at a time
(leads/s). The API is the real `switchboard api` process on a fresh database; every answer
is checked (status, one new id per lead) and the ids are counted back in the database, so
an error can never pass for a fast request.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from dispatcher.bench import stats
from dispatcher.bench.env import BENCH_TEMPLATE, BenchEnv, Procs
from dispatcher.bench.world import _wait_http, admin_token, free_port

RESELLER = "bench"
CONCURRENCIES = (1, 4, 16, 64)
# Area codes whose 555-0000..9999 lines phonenumbers accepts as valid (checked in tests):
# 100,000 distinct numbers, more than a default run sends, so no cache could flatter it.
_AREAS = ("202", "212", "310", "415", "312", "617", "305", "404", "503", "206")


class IngestError(RuntimeError):
    """The API answered something other than what a successful ingest returns."""


def phone(n: int) -> str:
    """The n-th distinct valid E.164 number (100,000 of them, then they repeat)."""
    n %= 10_000 * len(_AREAS)
    return f"+1{_AREAS[n // 10_000]}555{n % 10_000:04d}"


def lead_item(n: int) -> dict[str, Any]:
    """A lead as a client sends it: the fields a campaign typically fills in."""
    return {
        "phone": phone(n),
        "reseller_id": RESELLER,
        "template": BENCH_TEMPLATE,
        "customer_name": f"Customer {n}",
        "priority": 1 + n % 10,
        "payload": {"campaign": "bench", "ref": n},
    }


@dataclass
class Ids:
    """Every id the API returned, to be counted back in the database."""

    ids: list[int] = field(default_factory=list)

    def add(self, new: Sequence[Any], context: str) -> None:
        if not all(isinstance(i, int) for i in new):
            raise IngestError(f"{context}: an id is missing or not an integer: {new[:5]}...")
        self.ids.extend(new)


def check_single(response: httpx.Response) -> int:
    """The new lead's id, or IngestError with what the API said instead."""
    if response.status_code != 201:
        raise IngestError(f"POST /v1/leads → {response.status_code}: {response.text[:500]}")
    lead_id = response.json().get("id")
    if not isinstance(lead_id, int):
        raise IngestError(f"POST /v1/leads → 201 without an id: {response.text[:500]}")
    return lead_id


def check_bulk(response: httpx.Response, size: int) -> list[int]:
    """The ids of a bulk request in which every item must have been created."""
    if response.status_code != 200:
        raise IngestError(f"POST /v1/leads/bulk → {response.status_code}: {response.text[:500]}")
    body = response.json()
    ids = body.get("ids") or []
    if body.get("created") != size or body.get("errors") or len(ids) != size:
        summary = {k: body.get(k) for k in ("created", "duplicates")}
        raise IngestError(
            f"bulk of {size}: {summary}, {len(ids)} ids, errors {str(body.get('errors'))[:300]}"
        )
    if not all(isinstance(i, int) for i in ids):
        raise IngestError("bulk: an id is null although no item failed")
    return ids


def count_in_db(database_url: str, ids: Sequence[int]) -> int:
    """How many of `ids` are distinct leads of the bench reseller in the database."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM leads WHERE id = ANY(%s) AND reseller_id = %s",
            (list(set(ids)), RESELLER),
        ).fetchone()
    return int(row[0]) if row else 0


def verify(database_url: str, ids: Sequence[int], context: str) -> None:
    """Each id once, each a row: the run measured real, distinct inserts."""
    if len(set(ids)) != len(ids):
        raise IngestError(f"{context}: the API returned an id twice")
    found = count_in_db(database_url, ids)
    if found != len(ids):
        raise IngestError(f"{context}: {len(ids)} ids returned, {found} rows in the database")


# --- single requests ---------------------------------------------------------------------


@dataclass
class SingleRun:
    latencies_ms: list[float]
    seconds: float
    ids: list[int]

    def summary(self) -> dict[str, float]:
        out = {
            "requests": float(len(self.latencies_ms)),
            "requests_per_s": stats.rate(len(self.latencies_ms), self.seconds),
        }
        if self.latencies_ms:
            out["p50_ms"] = stats.percentile(self.latencies_ms, 50)
            out["p99_ms"] = stats.percentile(self.latencies_ms, 99)
        return out


async def _single_load(
    base_url: str, token: str, concurrency: int, seconds: float, max_requests: int, first: int
) -> SingleRun:
    """`concurrency` clients each posting one lead after the other until `seconds` have
    passed or `max_requests` were sent, whichever comes first."""
    latencies: list[float] = []
    ids: list[int] = []
    counter = iter(range(first, first + max_requests))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def one_client() -> None:
            for n in counter:
                if time.perf_counter() >= deadline:
                    return
                body = json.dumps(lead_item(n)).encode()
                t0 = time.perf_counter()
                response = await client.post("/v1/leads", content=body, headers=headers)
                latencies.append((time.perf_counter() - t0) * 1000)
                ids.append(check_single(response))

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return SingleRun(latencies, elapsed, ids)


def single(
    base_url: str,
    token: str,
    concurrency: int,
    seconds: float,
    max_requests: int = 1_000_000,
    first: int = 0,
) -> SingleRun:
    return asyncio.run(_single_load(base_url, token, concurrency, seconds, max_requests, first))


# --- bulk --------------------------------------------------------------------------------


@dataclass
class BulkRun:
    latencies_ms: list[float]
    seconds: float
    ids: list[int]

    def summary(self) -> dict[str, float]:
        out = {
            "leads": float(len(self.ids)),
            "leads_per_s": stats.rate(len(self.ids), self.seconds),
        }
        if self.latencies_ms:
            out["request_p50_ms"] = stats.percentile(self.latencies_ms, 50)
            out["request_max_ms"] = max(self.latencies_ms)
        return out


def bulk_bodies(requests: int, size: int, first: int) -> list[bytes]:
    """Request bodies encoded ahead of time: the client's JSON encoding is not timed."""
    return [
        json.dumps(
            {"leads": [lead_item(first + r * size + i) for i in range(size)]},
            separators=(",", ":"),
        ).encode()
        for r in range(requests)
    ]


def bulk(
    base_url: str, token: str, bodies: Sequence[bytes], size: int, concurrency: int
) -> BulkRun:
    """Post the bodies, `concurrency` at a time (threads: the client only waits)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    ids = Ids()
    with httpx.Client(base_url=base_url, timeout=600) as client:

        def post(body: bytes) -> None:
            t0 = time.perf_counter()
            response = client.post("/v1/leads/bulk", content=body, headers=headers)
            latencies.append((time.perf_counter() - t0) * 1000)
            ids.add(check_bulk(response, size), "bulk")

        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for done in [pool.submit(post, b) for b in bodies]:
                done.result()
        elapsed = time.perf_counter() - start
    return BulkRun(latencies, elapsed, ids.ids)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc; None elsewhere). On a
    shared machine, CPU per lead says more about the code than wall-clock throughput."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the scenario ------------------------------------------------------------------------


@dataclass
class Api:
    base_url: str
    token: str
    database_url: str
    procs: Procs

    @property
    def pid(self) -> int:
        return self.procs.procs["api"].pid


@contextmanager
def running_api(env: BenchEnv, name: str, **overrides: Any) -> Iterator[Api]:
    """A fresh database and a `switchboard api` process on a free port."""
    with env.database(name) as url:
        settings = env.settings(url, api_port=free_port(), **overrides)
        procs = Procs(settings, env.work_dir / "logs" / name)
        try:
            procs.start("api", "api")
            base_url = f"http://{settings.api_host}:{settings.api_port}"
            _wait_http(f"{base_url}/health", procs)
            yield Api(base_url, admin_token(settings), url, procs)
        finally:
            procs.stop_all()
            env.forget_redis(settings)


def run(
    env: BenchEnv,
    concurrencies: Sequence[int] = CONCURRENCIES,
    seconds: float = 5.0,
    max_requests: int = 1_000_000,
    bulk_size: int = 10_000,
    bulk_requests: int = 4,
    bulk_concurrencies: Sequence[int] = (1, 2),
) -> dict[str, float]:
    """Single requests at each concurrency, then bulk at each bulk concurrency."""
    out: dict[str, float] = {}
    with running_api(env, "ingest") as api:
        # Warm-up: the first requests pay for imports, plan caching and pool connections.
        warm = single(api.base_url, api.token, 4, 30.0, max_requests=40, first=0)
        verify(api.database_url, warm.ids, "warm-up")
        first = 40
        for c in concurrencies:
            result = single(api.base_url, api.token, c, seconds, max_requests, first)
            first += len(result.ids)
            verify(api.database_url, result.ids, f"single c={c}")
            out.update({f"single.c{c}.{k}": v for k, v in result.summary().items()})
            api.procs.check_alive()
        warm_bulk = bulk(api.base_url, api.token, bulk_bodies(1, 100, first), 100, 1)
        verify(api.database_url, warm_bulk.ids, "bulk warm-up")
        first += len(warm_bulk.ids)
        for c in bulk_concurrencies:
            bodies = bulk_bodies(bulk_requests, bulk_size, first)
            first += bulk_requests * bulk_size
            cpu_before = cpu_seconds(api.pid)
            result_b = bulk(api.base_url, api.token, bodies, bulk_size, c)
            cpu_after = cpu_seconds(api.pid)
            verify(api.database_url, result_b.ids, f"bulk c={c}")
            key = f"bulk{bulk_size}.c{c}"
            out.update({f"{key}.{k}": v for k, v in result_b.summary().items()})
            if cpu_before is not None and cpu_after is not None and result_b.ids:
                out[f"{key}.api_cpu_us_per_lead"] = (
                    (cpu_after - cpu_before) * 1e6 / len(result_b.ids)
                )
            api.procs.check_alive()
    return out
