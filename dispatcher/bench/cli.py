"""`switchboard bench SCENARIO`: each scenario is one command; all share the options that
say where to run and how often."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from dispatcher.bench import results
from dispatcher.bench.env import BenchEnv
from dispatcher.bench.world import MODES, Shape
from dispatcher.settings import Settings

bench_app = typer.Typer(help="Benchmarks: results under ops/bench/results/.", no_args_is_help=True)

DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="a server to create bench databases on (env DATABASE_URL; unset: embedded)",
    ),
]
RedisOpt = Annotated[
    str | None, typer.Option("--redis-url", help="env REDIS_URL (unset: embedded)")
]
RepeatsOpt = Annotated[int, typer.Option(help="runs per scenario; medians are reported")]
WorkDirOpt = Annotated[Path, typer.Option(help="logs and embedded servers")]
OutOpt = Annotated[Path, typer.Option(help="where the JSON results go")]


def execute(
    scenario: str,
    run: Callable[[BenchEnv], Mapping[str, float]],
    options: Mapping[str, Any],
    database_url: str | None,
    redis_url: str | None,
    repeats: int,
    work_dir: Path,
    out_dir: Path,
) -> None:
    """Open the servers, repeat the scenario, record medians."""
    settings = Settings.load(database_url=database_url, redis_url=redis_url)
    with BenchEnv.open(settings.database_url, settings.redis_url, work_dir) as env:
        host = results.machine(env.server_url, env.redis_url)
        runs = results.repeat(scenario, lambda: run(env), repeats)
    path = results.record(scenario, runs, options, host, out_dir)
    typer.echo(f"results: {path}")


@bench_app.command("e2e")
def e2e_command(
    mode: Annotated[str, typer.Option(help="engine (in-process provider) or simulator")] = "engine",
    rate: Annotated[list[float] | None, typer.Option(help="steady offered load, leads/s")] = None,
    seconds: Annotated[float, typer.Option(help="length of each steady load")] = 10.0,
    burst: Annotated[int, typer.Option(help="leads due at one instant (0: none)")] = 20_000,
    schedulers: int = 1,
    worker_processes: int = 2,
    worker_threads: int = 8,
    shadow: Annotated[
        str, typer.Option(help="shadow ZSET schedule: off, on, or both (side by side, its cost)")
    ] = "off",
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    repeats: RepeatsOpt = 3,
    work_dir: WorkDirOpt = Path(".switchboard/bench"),
    out_dir: OutOpt = results.RESULTS_DIR,
) -> None:
    """Due → call placed: pickup latency at steady loads and burn-down throughput."""
    from dispatcher.bench import e2e

    if mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}")
    if shadow not in ("off", "on", "both"):
        raise typer.BadParameter("--shadow must be off, on or both")
    rates = rate or [100.0, 1000.0]
    shape = Shape(
        mode=mode,
        schedulers=schedulers,
        worker_processes=worker_processes,
        worker_threads=worker_threads,
        shadow=shadow == "on",
    )
    scenario = e2e.shadow_cost if shadow == "both" else e2e.run
    execute(
        f"e2e-{mode}" + ("-shadow" if shadow != "off" else ""),
        lambda env: scenario(env, shape, rates, seconds, burst),
        {"mode": mode, "rates": rates, "seconds": seconds, "burst": burst, "shape": shape},
        database_url,
        redis_url,
        repeats,
        work_dir,
        out_dir,
    )


@bench_app.command("ingest")
def ingest_command(
    concurrency: Annotated[
        list[int] | None, typer.Option(help="single-request clients at once (default 1 4 16 64)")
    ] = None,
    seconds: Annotated[float, typer.Option(help="length of each single-request load")] = 5.0,
    bulk_size: Annotated[int, typer.Option(help="leads per bulk request")] = 10_000,
    bulk_requests: Annotated[int, typer.Option(help="bulk requests per bulk concurrency")] = 4,
    bulk_concurrency: Annotated[
        list[int] | None, typer.Option(help="bulk requests at once (default 1 2)")
    ] = None,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    repeats: RepeatsOpt = 3,
    work_dir: WorkDirOpt = Path(".switchboard/bench"),
    out_dir: OutOpt = results.RESULTS_DIR,
) -> None:
    """POST /v1/leads (requests/s, p50/p99) and POST /v1/leads/bulk (leads/s)."""
    from dispatcher.bench import ingest

    levels = concurrency or list(ingest.CONCURRENCIES)
    bulk_levels = bulk_concurrency or [1, 2]
    execute(
        "ingest",
        lambda env: ingest.run(
            env,
            levels,
            seconds,
            bulk_size=bulk_size,
            bulk_requests=bulk_requests,
            bulk_concurrencies=bulk_levels,
        ),
        {
            "concurrency": levels,
            "seconds": seconds,
            "bulk_size": bulk_size,
            "bulk_requests": bulk_requests,
            "bulk_concurrency": bulk_levels,
        },
        database_url,
        redis_url,
        repeats,
        work_dir,
        out_dir,
    )


@bench_app.command("claim")
def claim_command(
    processes: Annotated[
        list[int] | None, typer.Option(help="claiming processes (default 1 2 4)")
    ] = None,
    leads: Annotated[int, typer.Option(help="due leads claimed per process count")] = 100_000,
    resellers: Annotated[int, typer.Option(help="resellers the leads are spread over")] = 10,
    batch: Annotated[
        int | None, typer.Option(help="leads per claim (default SWITCHBOARD_CLAIM_BATCH)")
    ] = None,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    repeats: RepeatsOpt = 3,
    work_dir: WorkDirOpt = Path(".switchboard/bench"),
    out_dir: OutOpt = results.RESULTS_DIR,
) -> None:
    """Due → QUEUED: claim throughput and cost per claim (statements, ms, rows touched)."""
    from dispatcher.bench import claim

    counts = processes or list(claim.PROCESSES)
    execute(
        "claim",
        lambda env: claim.run(env, counts, leads, resellers, batch),
        {"processes": counts, "leads": leads, "resellers": resellers, "batch": batch},
        database_url,
        redis_url,
        repeats,
        work_dir,
        out_dir,
    )


@bench_app.command("backlog")
def backlog_command(
    size: Annotated[
        list[int] | None, typer.Option(help="future-dated BACKLOG leads (repeat for several)")
    ] = None,
    rate: Annotated[float, typer.Option(help="steady offered load, leads/s")] = 1000.0,
    seconds: Annotated[float, typer.Option(help="length of the steady load")] = 10.0,
    finished: Annotated[int, typer.Option(help="COMPLETED leads (with attempts)")] = 1_000_000,
    overdue: Annotated[int, typer.Option(help="overdue leads of a paused reseller")] = 100_000,
    priorities: Annotated[str, typer.Option(help="future leads: mixed (1..10) or same")] = "mixed",
    fill_method: Annotated[
        str, typer.Option("--fill", help="sql (generate_series) or copy")
    ] = "sql",
    schedulers: int = 1,
    worker_processes: int = 2,
    worker_threads: int = 8,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    repeats: RepeatsOpt = 1,
    work_dir: WorkDirOpt = Path(".switchboard/bench"),
    out_dir: OutOpt = results.RESULTS_DIR,
) -> None:
    """Pickup latency and claim cost with 10k, 1M and 10M rows in leads (engine mode)."""
    from dispatcher.bench import backlog

    sizes = size or [10_000, 1_000_000, 10_000_000]
    if priorities not in ("mixed", "same") or fill_method not in backlog.FILL_METHODS:
        raise typer.BadParameter("--priorities mixed|same, --fill sql|copy")
    shape = Shape(
        schedulers=schedulers, worker_processes=worker_processes, worker_threads=worker_threads
    )
    execute(
        "backlog",
        lambda env: backlog.run(
            env, shape, sizes, rate, seconds, finished, overdue, priorities, fill_method
        ),
        {
            "sizes": sizes,
            "rate": rate,
            "seconds": seconds,
            "finished": finished,
            "overdue": overdue,
            "priorities": priorities,
            "fill": fill_method,
            "shape": shape,
        },
        database_url,
        redis_url,
        repeats,
        work_dir,
        out_dir,
    )


@bench_app.command("snapshot")
def snapshot_command(
    rate: Annotated[float, typer.Option(help="steady offered load, leads/s")] = 800.0,
    settle_s: Annotated[float, typer.Option(help="load before the baseline counts")] = 10.0,
    baseline_s: Annotated[float, typer.Option(help="baseline phase")] = 60.0,
    hold_s: Annotated[float, typer.Option(help="how long the snapshot is held")] = 600.0,
    after_max_s: Annotated[float, typer.Option(help="most time waited for recovery")] = 300.0,
    sample_s: Annotated[float, typer.Option(help="sample and window length")] = 5.0,
    tolerance: Annotated[float, typer.Option(help="back to baseline: within this")] = 0.10,
    hold_windows: Annotated[int, typer.Option(help="... for this many windows")] = 3,
    schedulers: int = 1,
    worker_processes: int = 2,
    worker_threads: int = 8,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    repeats: RepeatsOpt = 1,
    work_dir: WorkDirOpt = Path(".switchboard/bench"),
    out_dir: OutOpt = results.RESULTS_DIR,
) -> None:
    """A REPEATABLE READ snapshot held under load: throughput, dead tuples, index size
    during and after, time back to baseline (series in snapshot-series-*.json)."""
    from dispatcher.bench import snapshot

    shape = Shape(
        schedulers=schedulers, worker_processes=worker_processes, worker_threads=worker_threads
    )
    options = {
        "rate": rate,
        "settle_s": settle_s,
        "baseline_s": baseline_s,
        "hold_s": hold_s,
        "after_max_s": after_max_s,
        "sample_s": sample_s,
        "tolerance": tolerance,
        "hold_windows": hold_windows,
        "shape": shape,
    }
    execute(
        "snapshot",
        lambda env: snapshot.run(
            env,
            shape,
            rate,
            settle_s,
            baseline_s,
            hold_s,
            after_max_s,
            sample_s,
            tolerance,
            hold_windows,
            out_dir,
        ),
        options,
        database_url,
        redis_url,
        repeats,
        work_dir,
        out_dir,
    )


@bench_app.command("crash")
def crash_command(
    mode: Annotated[str, typer.Option(help="simulator (duplicate-dial oracle) or engine")] = (
        "simulator"
    ),
    leads: Annotated[int, typer.Option(help="leads, due at --rate")] = 10_000,
    rate: Annotated[float, typer.Option(help="leads due per second")] = 100.0,
    kills: Annotated[int, typer.Option(help="SIGKILLs, at random moments of the load")] = 6,
    restart_delay_s: Annotated[float, typer.Option(help="kill → restart")] = 2.0,
    seed: Annotated[int, typer.Option(help="random kill times and targets")] = 1,
    settle_timeout_s: Annotated[float, typer.Option(help="most wait for all final")] = 600.0,
    lease_s: Annotated[
        float | None, typer.Option(help="claim lease (default: SWITCHBOARD_LEASE_S, 20)")
    ] = None,
    max_call_s: Annotated[
        float | None,
        typer.Option(help="longest call (default: engine 10, else SWITCHBOARD_MAX_CALL_S)"),
    ] = None,
    worker_processes: int = 1,
    worker_threads: int = 8,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    repeats: RepeatsOpt = 1,
    work_dir: WorkDirOpt = Path(".switchboard/bench"),
    out_dir: OutOpt = results.RESULTS_DIR,
) -> None:
    """2 schedulers + 2 worker services SIGKILLed at random: kill → re-dispatch, duplicate
    dials (must be 0), every lead final."""
    from dispatcher.bench import crash

    if mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}")
    shape = Shape(
        mode=mode,
        schedulers=2,
        worker_processes=worker_processes,
        worker_threads=worker_threads,
        settings={
            **({} if lease_s is None else {"lease_s": lease_s}),
            # The engine's provider lives in the worker: a killed worker takes the ends of
            # its placed calls with it, which the reconciler settles only after the
            # longest call (1 h by default). Its calls last 0 s, so 10 s is its longest.
            **({"max_call_s": 10.0} if mode == "engine" and max_call_s is None else {}),
            **({} if max_call_s is None else {"max_call_s": max_call_s}),
        },
    )
    execute(
        f"crash-{mode}",
        lambda env: crash.run(
            env, shape, leads, rate, kills, restart_delay_s, seed, settle_timeout_s
        ),
        {
            "mode": mode,
            "leads": leads,
            "rate": rate,
            "kills": kills,
            "restart_delay_s": restart_delay_s,
            "seed": seed,
            "shape": shape,
        },
        database_url,
        redis_url,
        repeats,
        work_dir,
        out_dir,
    )


@bench_app.command("compare")
def compare_command(
    processes: Annotated[int, typer.Option(help="worker processes, the same for all")] = 1,
    concurrency: Annotated[
        int, typer.Option(help="per process: threads, async tasks, PgQueuer's batch")
    ] = 10,
    items: Annotated[int, typer.Option(help="burn-down: items due now")] = 20_000,
    rate: Annotated[float, typer.Option(help="pickup: items due per second")] = 200.0,
    seconds: Annotated[float, typer.Option(help="pickup: for this long")] = 10.0,
    scheduled: Annotated[int, typer.Option(help="lateness: items enqueued")] = 1_000,
    ahead_s: Annotated[float, typer.Option(help="lateness: scheduled this far ahead")] = 5.0,
    scheduled_rate: Annotated[float, typer.Option(help="lateness: enqueued per second")] = 100.0,
    contender: Annotated[
        list[str] | None,
        typer.Option(help="core, cron, zset, procrastinate, pgqueuer (default: all)"),
    ] = None,
    core_batch: Annotated[int, typer.Option(help="core: leads per Dramatiq message")] = 50,
    cron_tick_s: Annotated[float, typer.Option(help="cron: tick interval")] = 30.0,
    cron_batch: Annotated[int, typer.Option(help="cron: rows per tick (seed: 500)")] = 500,
    cron_window_s: Annotated[
        float, typer.Option(help="cron: burn-down measured this long, then extrapolated; 0: all")
    ] = 60.0,
    zset_promote_ms: Annotated[int, typer.Option(help="zset: promoter tick")] = 200,
    procrastinate_poll_s: Annotated[
        float, typer.Option(help="procrastinate: fetch_job_polling_interval (its default 5)")
    ] = 5.0,
    database_url: DatabaseOpt = None,
    redis_url: RedisOpt = None,
    repeats: RepeatsOpt = 1,
    work_dir: WorkDirOpt = Path(".switchboard/bench"),
    out_dir: OutOpt = results.RESULTS_DIR,
) -> None:
    """Queue core vs cron picker, ZSET design, Procrastinate, PgQueuer: burn-down items/s,
    pickup latency at a steady rate, lateness of scheduled items; ratios core / peer."""
    from dispatcher.bench import compare
    from dispatcher.bench.peers.base import Shape as Workers

    names = tuple(contender or compare.CONTENDERS)
    unknown = set(names) - set(compare.CONTENDERS)
    if unknown:
        raise typer.BadParameter(f"unknown contender(s): {', '.join(sorted(unknown))}")
    opts = compare.Options(
        shape=Workers(processes=processes, concurrency=concurrency),
        sizes=compare.Sizes(
            items=items,
            rate=rate,
            seconds=seconds,
            scheduled=scheduled,
            ahead_s=ahead_s,
            scheduled_rate=scheduled_rate,
        ),
        contenders=names,
        core_batch=core_batch,
        cron_tick_s=cron_tick_s,
        cron_batch=cron_batch,
        cron_window_s=cron_window_s or None,
        zset_promote_ms=zset_promote_ms,
        procrastinate_poll_s=procrastinate_poll_s,
    )
    execute(
        f"compare-p{processes}",
        lambda env: compare.run(env, opts),
        compare.describe(opts),
        database_url,
        redis_url,
        repeats,
        work_dir,
        out_dir,
    )


@bench_app.command("summary")
def summary_command(
    results_dir: OutOpt = results.RESULTS_DIR,
    out: Annotated[Path | None, typer.Option(help="write here instead of printing")] = None,
) -> None:
    """Markdown tables of the newest result of every scenario (for RESULTS.md)."""
    from dispatcher.bench import summary

    text = summary.render(results_dir)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text)
