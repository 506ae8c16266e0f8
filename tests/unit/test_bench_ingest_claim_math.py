"""The arithmetic and the answer checks of `bench ingest` and `bench claim`: a benchmark
that miscounts or lets an error pass for a fast request is worse than none."""

from __future__ import annotations

import httpx
import phonenumbers
import pytest

from dispatcher.bench import claim, ingest


def response(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_bench_numbers_are_distinct_and_valid() -> None:
    numbers = [ingest.phone(n) for n in range(100_000)]
    assert len(set(numbers)) == 100_000
    for n in numbers[::997]:
        assert phonenumbers.is_valid_number(phonenumbers.parse(n, None)), n


def test_single_answer_must_be_201_with_an_id() -> None:
    assert ingest.check_single(response(201, {"id": 7})) == 7
    with pytest.raises(ingest.IngestError, match="422"):
        ingest.check_single(response(422, {"errors": []}))
    with pytest.raises(ingest.IngestError, match="without an id"):
        ingest.check_single(response(201, {"status": "BACKLOG"}))
    with pytest.raises(ingest.IngestError, match="200"):  # an idempotent replay is no insert
        ingest.check_single(response(200, {"id": 7}))


def test_bulk_answer_must_create_every_item() -> None:
    ok = {"created": 3, "duplicates": 0, "ids": [1, 2, 3], "errors": []}
    assert ingest.check_bulk(response(200, ok), 3) == [1, 2, 3]
    failed = {**ok, "created": 2, "ids": [1, None, 3], "errors": [{"index": 1}]}
    with pytest.raises(ingest.IngestError, match="bulk of 3"):
        ingest.check_bulk(response(200, failed), 3)
    with pytest.raises(ingest.IngestError, match="null"):
        ingest.check_bulk(response(200, {**ok, "ids": [1, None, 3]}), 3)
    with pytest.raises(ingest.IngestError, match="413"):
        ingest.check_bulk(response(413, {}), 3)


def test_single_summary() -> None:
    run = ingest.SingleRun(latencies_ms=[float(i) for i in range(1, 101)], seconds=2.0, ids=[])
    assert run.summary() == {"requests": 100, "requests_per_s": 50, "p50_ms": 50, "p99_ms": 99}


def test_bulk_summary() -> None:
    run = ingest.BulkRun(latencies_ms=[100.0, 300.0, 200.0], seconds=0.5, ids=list(range(3000)))
    summary = run.summary()
    assert summary["leads"] == 3000 and summary["leads_per_s"] == 6000
    assert summary["request_p50_ms"] == 200 and summary["request_max_ms"] == 300


def test_claim_summary() -> None:
    a = claim.ClaimerResult(
        claimed=list(range(100)),
        transactions_ms=[10.0, 30.0],
        statements=14,
        started=100.0,
        finished=101.0,
    )
    b = claim.ClaimerResult(
        claimed=list(range(100, 150)),
        transactions_ms=[20.0],
        statements=7,
        started=100.5,
        finished=102.0,
    )
    rows = claim.TableCounters(read=600, written=300, hot_updates=15)
    out = claim.summarize([a, b], rows)
    assert out["claimed"] == 150
    assert out["leads_per_s"] == 75  # 150 leads from the first start to the last finish: 2 s
    assert out["transactions"] == 3
    assert out["statements_per_lead"] == 21 / 150
    assert out["statements_per_txn"] == 7
    assert out["ms_per_lead"] == 60 / 150
    assert out["txn_p50_ms"] == 20 and out["txn_p99_ms"] == 30
    assert out["rows_read_per_lead"] == 4 and out["rows_written_per_lead"] == 2
    assert out["hot_updates_per_lead"] == 0.1


def test_claim_summary_of_nothing_claimed_has_no_division_by_zero() -> None:
    out = claim.summarize([claim.ClaimerResult(started=1.0, finished=1.0)])
    assert out == {"claimed": 0, "leads_per_s": 0, "transactions": 0}


def test_table_counters_delta() -> None:
    after = claim.TableCounters(read=10, written=7, hot_updates=2)
    before = claim.TableCounters(read=4, written=5, hot_updates=1)
    assert after.minus(before) == claim.TableCounters(6, 2, 1)
