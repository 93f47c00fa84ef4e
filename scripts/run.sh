#!/usr/bin/env bash
# Runs the service locally: starts its own Redis and MongoDB-compatible server on loopback
# (unless REDIS_URL / MONGODB_URI are set), then the API on LISTEN_ADDR (127.0.0.1:8080).
# Ctrl-C stops everything it started.
#
#   ./scripts/run.sh            SecantusDB (a replica set, as in production), data kept in
#                               .work/run/ across runs: accounts and messages survive a restart
#   ./scripts/run.sh --reset    the same, starting from empty stores
#   MONGO_SERVER=nx ./scripts/run.sh   nx-27017 instead: in memory, fast, gone when it stops
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

RUN_REDIS_PORT="${RUN_REDIS_PORT:-16379}"
RUN_MONGO_PORT="${RUN_MONGO_PORT:-27117}"
MONGO_SERVER="${MONGO_SERVER:-secantus}"
DIR="$WORK/run"

case "${1:-}" in
    "") ;;
    --reset) reset=true ;;
    *) die "usage: $0 [--reset]" ;;
esac
case "$MONGO_SERVER" in
    secantus | nx) ;;
    *) die "MONGO_SERVER must be secantus or nx, not '$MONGO_SERVER'" ;;
esac

trap 'stop_services run' EXIT
trap 'exit 130' INT TERM

stop_services run
if [ "${reset:-false}" = true ]; then
    log "--reset: removing the local stores' data (.work/run/data, .work/run/appendonlydir)"
    rm -rf "$DIR/data" "$DIR/appendonlydir" "$WORK/jwt-secret"
fi
mkdir -p "$DIR"

# Whether what a token refers to (accounts, revocations) is forgotten when this run stops.
forgetful=false
if [ -z "${MONGODB_URI:-}" ]; then
    if [ "$MONGO_SERVER" = secantus ]; then
        ensure_secantus
        start_secantus run "$RUN_MONGO_PORT" "$DIR/data"
        export MONGODB_URI="mongodb://127.0.0.1:$RUN_MONGO_PORT/?replicaSet=secantus"
    else
        ensure_nx
        start_nx run "$RUN_MONGO_PORT"
        export MONGODB_URI="mongodb://127.0.0.1:$RUN_MONGO_PORT/?directConnection=true"
        forgetful=true
    fi
fi
if [ -z "${REDIS_URL:-}" ]; then
    ensure_redis
    if $forgetful; then
        start_redis run "$RUN_REDIS_PORT"
    else
        # Revocations must outlive a restart as the accounts do: a logged-out token must not
        # come back to life.
        start_redis run "$RUN_REDIS_PORT" --appendonly yes
    fi
    export REDIS_URL="redis://127.0.0.1:$RUN_REDIS_PORT"
fi
export APP_ENV="${APP_ENV:-development}"
if [ -z "${JWT_SECRET:-}" ]; then
    # Tokens stay good across runs while the stores keep their data. With nx-27017 a new run
    # has no accounts and no revocations, so a token of an earlier run would act for an
    # account that no longer exists: a new secret each time. Extra instances started by hand
    # read it from .work/jwt-secret (see README).
    if $forgetful || [ ! -s "$WORK/jwt-secret" ]; then
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
