#!/usr/bin/env bash
# Runs the service locally: starts its own Redis and MongoDB-compatible server on loopback
# (unless REDIS_URL / MONGODB_URI are set), then the API on LISTEN_ADDR (127.0.0.1:8080).
# Ctrl-C stops everything it started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

RUN_REDIS_PORT="${RUN_REDIS_PORT:-16379}"
RUN_MONGO_PORT="${RUN_MONGO_PORT:-37017}"

trap 'stop_services run' EXIT
trap 'exit 130' INT TERM

if [ -z "${REDIS_URL:-}" ]; then
    ensure_redis
    start_redis run "$RUN_REDIS_PORT"
    export REDIS_URL="redis://127.0.0.1:$RUN_REDIS_PORT"
fi
if [ -z "${MONGODB_URI:-}" ]; then
    ensure_nx
    start_mongo run "$RUN_MONGO_PORT"
    export MONGODB_URI="mongodb://127.0.0.1:$RUN_MONGO_PORT/?directConnection=true"
fi
export APP_ENV="${APP_ENV:-development}"
if [ -z "${JWT_SECRET:-}" ]; then
    # One local secret, kept across runs, so tokens survive a restart and extra instances
    # started by hand (JWT_SECRET=$(cat .work/jwt-secret)) accept them too.
    [ -s "$WORK/jwt-secret" ] || (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$WORK/jwt-secret")
    JWT_SECRET="$(cat "$WORK/jwt-secret")"
    export JWT_SECRET
fi
export LISTEN_ADDR="${LISTEN_ADDR:-127.0.0.1:8080}"
export RUST_LOG="${RUST_LOG:-info}"

log "building and starting the API on http://$LISTEN_ADDR (Swagger UI: http://$LISTEN_ADDR/docs)"
# Not exec: the traps above must run when the API exits.
cargo run --quiet --bin chat-server
