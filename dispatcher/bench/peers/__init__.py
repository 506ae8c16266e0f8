"""The contenders of `switchboard bench compare`: Switchboard's queue core, the legacy cron
picker, the Redis ZSET design of seeds/000, Procrastinate and PgQueuer.

Each runs as real processes on its own fresh database, with the same items, and records
the moment each item's no-op work starts in that database's `bench_started` table
(`base.Recorder`); `dispatcher.bench.compare` turns those rows into the figures.
"""
