"""`bench ingest` and `bench claim` at a tiny size on real PostgreSQL and Redis: their
numbers must be what happened in the database (every counted lead a row, every claimed
lead claimed once), and a failed request or a double claim must fail the run."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from dispatcher.bench import claim, ingest
from dispatcher.bench.env import BenchEnv


@pytest.fixture
def env(pg_server_url: str, redis_server_url: str, tmp_path: Path) -> BenchEnv:
    return BenchEnv(pg_server_url, redis_server_url, tmp_path)


def leads_in(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM leads").fetchone()
    assert row is not None
    return int(row[0])


def test_ingest_counts_are_rows_and_errors_fail(env: BenchEnv) -> None:
    with ingest.running_api(env, "t_ingest") as api:
        single = ingest.single(api.base_url, api.token, 4, 60.0, max_requests=50)
        assert single.summary()["requests"] == 50 == len(set(single.ids))
        assert leads_in(api.database_url) == 50
        ingest.verify(api.database_url, single.ids, "single")

        bodies = ingest.bulk_bodies(2, 500, first=1000)
        bulk = ingest.bulk(api.base_url, api.token, bodies, 500, 2)
        assert bulk.summary()["leads"] == 1000 == len(set(bulk.ids))
        assert leads_in(api.database_url) == 1050
        ingest.verify(api.database_url, bulk.ids, "bulk")

        # An id the database does not have, or one returned twice, fails the check.
        with pytest.raises(ingest.IngestError, match="rows in the database"):
            ingest.verify(api.database_url, [*bulk.ids, 10**12], "made up")
        with pytest.raises(ingest.IngestError, match="twice"):
            ingest.verify(api.database_url, [*bulk.ids, bulk.ids[0]], "repeated")
        # A bulk request with a bad item is an error of the run, not a fast request.
        bad = b'{"leads": [{"phone": "+1", "reseller_id": "bench", "template": "bench"}]}'
        with pytest.raises(ingest.IngestError, match="bulk of 1"):
            ingest.bulk(api.base_url, api.token, [bad], 1, 1)
        pid = api.pid
        assert (ingest.cpu_seconds(pid) or 0) > 0


def test_ingest_run_reports_every_level(env: BenchEnv) -> None:
    out = ingest.run(
        env,
        concurrencies=(1, 2),
        seconds=30.0,
        max_requests=20,
        bulk_size=300,
        bulk_requests=2,
        bulk_concurrencies=(1, 2),
    )
    assert out["single.c1.requests"] == out["single.c2.requests"] == 20
    assert out["single.c1.p99_ms"] >= out["single.c1.p50_ms"] > 0
    assert out["bulk300.c1.leads"] == out["bulk300.c2.leads"] == 600
    assert out["bulk300.c2.leads_per_s"] > 0


def test_statement_counter_counts_statements(pg_server_url: str) -> None:
    with claim.counting_connect(pg_server_url) as conn:
        with conn.transaction():  # BEGIN and COMMIT are not statements of the claim code
            conn.execute("SELECT 1")
            conn.execute("SELECT 2").fetchone()
            with conn.cursor() as cur:
                cur.execute("SELECT 3")
                cur.executemany("SELECT %s", [(1,), (2,), (3,), (4,)])
        assert conn.statements == 7


def test_claim_claims_each_lead_once_with_one_and_two_processes(env: BenchEnv) -> None:
    out = claim.run(env, processes=(1, 2), leads=500, resellers=3, batch=50)
    for p in (1, 2):
        assert out[f"p{p}.claimed"] == 500
        assert out[f"p{p}.transactions"] == 10  # 500 leads, 50 a claim: none empty-handed
        assert out[f"p{p}.leads_per_s"] > 0
        # Each claim changes the lead and appends its event, plus the fairness rows.
        assert 2.0 <= out[f"p{p}.rows_written_per_lead"] < 2.5
        assert out[f"p{p}.rows_read_per_lead"] >= 1.0
        total = out[f"p{p}.statements_per_lead"] * 500
        assert total == pytest.approx(round(total)) and total >= 10 * 5


def test_claim_check_catches_double_and_missing_claims(env: BenchEnv) -> None:
    with env.database("t_claimcheck") as url:
        loaded = claim.load_due(url, 20, resellers=2)
        with claim.counting_connect(url, row_factory=dict_row) as conn:
            result = claim.claim_until_empty(conn, batch=5, lease_s=600)
        assert len(result.transactions_ms) == 4 and result.empty_transactions == 1
        assert result.statements > 4 * 3  # paused, advisory lock, resellers, ... per claim
        claim.check(url, loaded, [result])  # the real run adds up
        twice = [result, claim.ClaimerResult(claimed=[loaded[0]])]
        with pytest.raises(claim.ClaimError, match="claimed twice"):
            claim.check(url, loaded, twice)
        with pytest.raises(claim.ClaimError, match="21 leads loaded, 20 claimed"):
            claim.check(url, [*loaded, 10**12], [result])
