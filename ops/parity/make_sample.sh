#!/usr/bin/env bash
# Regenerate ops/parity/sample.md and ops/parity/sample.html: shadow mode on real
# Switchboard processes, one Redis FLUSHALL, one SIGKILL of the promoter leader, then the
# README's `switchboard parity report --since <start> --format md|html --out ...`.
#
#   PG_URL=postgresql://postgres@127.0.0.1/postgres ops/parity/make_sample.sh
#
# Needs a PostgreSQL server it may create (and drop) a database on, and redis-server (or
# valkey-server) on PATH for a private Redis: FLUSHALL must not touch a shared one.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PG_URL="${PG_URL:-postgresql://postgres@127.0.0.1/postgres}"
exec python -m ops.parity.make_sample "$@"
