#!/usr/bin/env bash
# pgbench -S: PostgreSQL direct vs Switchyard vs PgBouncer, interleaved, medians and ratios, plus
# proxy CPU per transaction and RSS per idle client. Knobs: BENCH_SECONDS, BENCH_RUNS,
# BENCH_CLIENTS, BENCH_MODES, BENCH_IDLE_CLIENTS (see xtask/src/bench.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo xtask bench "$@"
