#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, then every test against a real redis-server
# and the MongoDB wire-protocol server, started here on ports of their own (so it works while
# scripts/run.sh is running) and stopped at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

TEST_REDIS_PORT="${TEST_REDIS_PORT:-16380}"
TEST_MONGO_PORT="${TEST_MONGO_PORT:-27118}"

trap 'stop_services test' EXIT
trap 'exit 130' INT TERM

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings

ensure_redis
ensure_nx
log "validating docker-compose.yml"
"$WORK/venv/bin/python" scripts/check_compose.py
start_redis test "$TEST_REDIS_PORT"
start_mongo test "$TEST_MONGO_PORT"
export TEST_REDIS_URL="redis://127.0.0.1:$TEST_REDIS_PORT"
export TEST_MONGODB_URI="mongodb://127.0.0.1:$TEST_MONGO_PORT/?directConnection=true"
export TEST_NX_27017="$WORK/venv/bin/nx-27017"

log "cargo test"
cargo test "$@"
"$ROOT/scripts/browser-test.sh"
