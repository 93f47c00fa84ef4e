#!/usr/bin/env bash
# Runs the service locally: starts its own Redis and MongoDB-compatible server on loopback
# (unless REDIS_URL / MONGODB_URI are set), then the API on LISTEN_ADDR (127.0.0.1:8080).
# Ctrl-C stops everything it started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

RUN_REDIS_PORT="${RUN_REDIS_PORT:-16379}"
RUN_MONGO_PORT="${RUN_MONGO_PORT:-27117}"

trap 'stop_services run' EXIT
trap 'exit 130' INT TERM

fresh_stores=false
if [ -z "${REDIS_URL:-}" ]; then
    ensure_redis
    start_redis run "$RUN_REDIS_PORT"
    export REDIS_URL="redis://127.0.0.1:$RUN_REDIS_PORT"
    fresh_stores=true
fi
if [ -z "${MONGODB_URI:-}" ]; then
    ensure_nx
    start_mongo run "$RUN_MONGO_PORT"
    export MONGODB_URI="mongodb://127.0.0.1:$RUN_MONGO_PORT/?directConnection=true"
    fresh_stores=true
fi
export APP_ENV="${APP_ENV:-development}"
if [ -z "${JWT_SECRET:-}" ]; then
    # The servers started above keep nothing across runs: a new run has no accounts and no
    # revocations, so a token of an earlier run would act for an account that no longer
    # exists, or come back to life after its logout. Tokens are therefore good for one run
    # (a new secret each time), unless both stores are your own: then the secret is kept.
    # Extra instances started by hand read it from .work/jwt-secret (see README).
    if $fresh_stores || [ ! -s "$WORK/jwt-secret" ]; then
        (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$WORK/jwt-secret")
    fi
    JWT_SECRET="$(cat "$WORK/jwt-secret")"
    export JWT_SECRET
fi
export LISTEN_ADDR="${LISTEN_ADDR:-127.0.0.1:8080}"
export RUST_LOG="${RUST_LOG:-info}"

log "building and starting the API on http://$LISTEN_ADDR (Swagger UI: http://$LISTEN_ADDR/docs)"
# Not exec: the traps above must run when the API exits.
cargo run --quiet --bin chat-server
