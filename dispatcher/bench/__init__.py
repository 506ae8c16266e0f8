"""`switchboard bench`: every performance claim Switchboard makes comes from here.

Each scenario provisions its own database (and Redis key prefix), runs real processes
against real PostgreSQL and Redis, and returns plain measurements; `results` repeats
runs, keeps medians with min and max, and writes JSON under ops/bench/results/.
"""
