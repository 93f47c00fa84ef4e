#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, then every test against a real redis-server
# and each of the two MongoDB wire-protocol servers (nx-27017, then SecantusDB), started here on
# ports of their own (so it works while scripts/run.sh is running) and stopped at the end. The
# fault tests start SecantusDB and Redis servers of their own, to step down, kill and restart.
# Arguments go to both `cargo test` runs (a test name filter, say).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

TEST_REDIS_PORT="${TEST_REDIS_PORT:-16380}"
TEST_MONGO_PORT="${TEST_MONGO_PORT:-27118}"
TEST_SECANTUS_PORT="${TEST_SECANTUS_PORT:-27119}"

trap 'stop_services test' EXIT
trap 'exit 130' INT TERM

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings

ensure_redis
ensure_nx
ensure_secantus
log "validating docker-compose.yml"
"$WORK/venv/bin/python" scripts/check_compose.py
start_redis test "$TEST_REDIS_PORT"
start_nx test "$TEST_MONGO_PORT"
start_secantus test "$TEST_SECANTUS_PORT" :memory: --enable-test-commands
export TEST_REDIS_URL="redis://127.0.0.1:$TEST_REDIS_PORT"
export TEST_NX_27017="$WORK/venv/bin/nx-27017"
export TEST_SECANTUSD="$WORK/secantus/bin/secantusd-py"

log "cargo test: unit tests, fault tests (SecantusDB), API tests on nx-27017"
TEST_MONGO_SERVER=nx TEST_MONGODB_URI="mongodb://127.0.0.1:$TEST_MONGO_PORT/?directConnection=true" \
    cargo test "$@"
log "cargo test --test api: API tests on SecantusDB"
TEST_MONGO_SERVER=secantus TEST_MONGODB_URI="mongodb://127.0.0.1:$TEST_SECANTUS_PORT/?replicaSet=secantus" \
    cargo test --test api "$@"
"$ROOT/scripts/browser-test.sh"
