#!/usr/bin/env bash
# Tests the web page in a real browser: Debian's headless Chromium driven by playwright-core
# (tests/browser/), against the chat-server binary with its own Redis and MongoDB-compatible
# server on ports of their own. Screenshots go to .work/screenshots/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

BROWSER_REDIS_PORT="${BROWSER_REDIS_PORT:-16390}"
BROWSER_MONGO_PORT="${BROWSER_MONGO_PORT:-27128}"
BROWSER_API_PORT="${BROWSER_API_PORT:-18090}"
DIR="$WORK/browser"
PIDFILE="$DIR/server.pid"

cleanup() {
    stop_pidfile "$PIDFILE"
    stop_services browser
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed (see README)"
if [ ! -x /usr/bin/chromium ]; then
    log "installing chromium (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
log "npm ci (tests/browser)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

ensure_redis
ensure_nx
log "cargo build --bin chat-server"
cargo build --quiet --bin chat-server

mkdir -p "$DIR" "$WORK/screenshots"
rm -f "$WORK/screenshots"/*.png
stop_pidfile "$PIDFILE"
start_redis browser "$BROWSER_REDIS_PORT"
start_nx browser "$BROWSER_MONGO_PORT"
port_is_free "$BROWSER_API_PORT" || die "port $BROWSER_API_PORT is taken; set BROWSER_API_PORT"

export APP_ENV=development
# The tests post a hundred messages at once as one user.
export WRITE_RATE_LIMIT_PER_MINUTE=100000 SIGNAL_RATE_LIMIT_PER_MINUTE=100000
JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
export JWT_SECRET
export LISTEN_ADDR="127.0.0.1:$BROWSER_API_PORT"
export MONGODB_URI="mongodb://127.0.0.1:$BROWSER_MONGO_PORT/?directConnection=true"
export REDIS_URL="redis://127.0.0.1:$BROWSER_REDIS_PORT"
export REDIS_KEY_PREFIX="browser:"
export RUST_LOG="${RUST_LOG:-info}"
# What the tests need to restart the server themselves (same binary, env, port and data).
export CHAT_BASE_URL="http://$LISTEN_ADDR"
export CHAT_SERVER_BIN="$ROOT/target/debug/chat-server"
export CHAT_SERVER_PIDFILE="$PIDFILE"
export CHAT_SERVER_LOG="$DIR/server.log"
export SCREENSHOT_DIR="$WORK/screenshots"

log "starting chat-server on $CHAT_BASE_URL (log: .work/browser/server.log)"
: >"$CHAT_SERVER_LOG"
"$CHAT_SERVER_BIN" >>"$CHAT_SERVER_LOG" 2>&1 &
echo $! >"$PIDFILE"
wait_for_port "$BROWSER_API_PORT" 60 || die "chat-server did not start (see $CHAT_SERVER_LOG)"

log "browser tests (screenshots in .work/screenshots/)"
(cd tests/browser && node --test --test-concurrency=1 --test-timeout=120000 chat.test.mjs)
