#!/usr/bin/env bash
# The full benchmark run behind ops/bench/RESULTS.md, one scenario after another (never
# two at once: they would measure each other). About 75 minutes on a 2-core machine.
#
#   DATABASE_URL=postgresql://postgres@127.0.0.1:5433/postgres REDIS_URL=redis://127.0.0.1:6379/0 \
#       ops/bench/run_all.sh
#
# DATABASE_URL names a server the benchmarks may create and drop databases on; unset, the
# embedded PostgreSQL and Valkey of `switchboard up` are used.
set -euo pipefail
cd "$(dirname "$0")/../.."
b() { echo "== switchboard bench $*"; switchboard bench "$@"; }

b e2e --mode engine --rate 100 --rate 500 --rate 1000 --seconds 10 --burst 20000 --repeats 3
b e2e --mode engine --shadow both --rate 100 --rate 300 --seconds 10 --burst 5000 --repeats 3
b e2e --mode simulator --rate 100 --rate 200 --seconds 10 --burst 3000 --repeats 3
b ingest --repeats 3
b claim --leads 50000 --repeats 3
b backlog --size 10000 --size 1000000 --size 10000000 --rate 300 --seconds 10
b compare --processes 2
b crash --mode engine --leads 10000 --rate 150 --kills 6 --seed 2
b snapshot --rate 300 --hold-s 600
b summary
