#!/usr/bin/env bash
# Statistics benchmark: loads a generated history (default 1,000,000 messages, 2,000 users,
# 50 rooms over 90 days) into a fresh local MongoDB-compatible server, starts a release build
# of the API on it, and prints p50/p95/max of every stats endpoint (all-time and 7 days), of
# the read-state requests and of search.
#   ./scripts/bench-stats.sh [--messages N] [--users N] [--rooms N] [--days N]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

BENCH_REDIS_PORT="${BENCH_REDIS_PORT:-16400}"
BENCH_MONGO_PORT="${BENCH_MONGO_PORT:-27138}"
BENCH_API_PORT="${BENCH_API_PORT:-18100}"
PIDFILE="$WORK/bench/server.pid"
trap 'stop_pidfile "$PIDFILE"; stop_services bench' EXIT
trap 'exit 130' INT TERM

ensure_redis
ensure_nx
log "release build"
cargo build --quiet --release --bin chat-server --bin generate-history --example bench_stats
start_redis bench "$BENCH_REDIS_PORT"
start_nx bench "$BENCH_MONGO_PORT"
export MONGODB_URI="mongodb://127.0.0.1:$BENCH_MONGO_PORT/?directConnection=true"
export MONGODB_DATABASE=bench
export REDIS_URL="redis://127.0.0.1:$BENCH_REDIS_PORT"
export APP_ENV=development LISTEN_ADDR="127.0.0.1:$BENCH_API_PORT" RUST_LOG=warn
export AUTH_RATE_LIMIT_PER_MINUTE=1000 WRITE_RATE_LIMIT_PER_MINUTE=1000000000

log "generating history"
time target/release/generate-history --force "$@"
target/release/chat-server >"$WORK/bench/server.log" 2>&1 &
echo $! >"$PIDFILE"
wait_for_port "$BENCH_API_PORT" 60 || die "the API did not start (see .work/bench/server.log)"
log "benchmarking ($(date -u +%F), $(nproc) cores)"
BASE_URL="http://$LISTEN_ADDR" target/release/examples/bench_stats
