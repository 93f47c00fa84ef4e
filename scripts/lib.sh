# Shared by the scripts: install and start, on loopback ports of our own, a real redis-server
# and the two MongoDB wire-protocol servers, nx-27017 and SecantusDB (see
# docs/local-servers.md). Everything lives in .work/ (git-ignored). Sourced, not executed.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/.work"
NX_VERSION="0.8.1"
SECANTUS_VERSION="0.7.0b3"
mkdir -p "$WORK"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_redis() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return
    log "installing redis-server (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # The package starts a system-wide Redis on 6379 where systemd runs; we use our own.
}

# ensure_venv DIR PACKAGE VERSION [MORE_REQUIREMENTS...]: a virtualenv in DIR holding
# PACKAGE==VERSION (and the rest), created or brought up to date when it does not.
ensure_venv() {
    local dir=$1 package=$2 version=$3 installed=""
    shift 3
    if [ -x "$dir/bin/python" ]; then
        installed=$("$dir/bin/pip" show "$package" 2>/dev/null | sed -n 's/^Version: //p')
    fi
    [ "$installed" = "$version" ] && return
    log "installing $package==$version into ${dir#"$ROOT"/}"
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$package==$version" "$@"
}

# nx-27017 (the speed server), plus PyYAML for scripts/check_compose.py.
ensure_nx() {
    ensure_venv "$WORK/venv" nx-27017 "$NX_VERSION" "PyYAML==6.0.2"
}

# SecantusDB (the fidelity server: a single-node replica set over WiredTiger). A pre-release,
# hence the exact pin; its own virtualenv, as it brings numpy and shapely.
ensure_secantus() {
    ensure_venv "$WORK/secantus" secantusdb "$SECANTUS_VERSION"
}

# wait_for_port PORT SECONDS [PID]: true once something accepts connections on
# 127.0.0.1:PORT; false after SECONDS, or as soon as PID (the server being started) has exited.
wait_for_port() {
    local port=$1 deadline=$((SECONDS + $2)) pid=${3:-}
    while [ "$SECONDS" -lt "$deadline" ]; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if [ -n "$pid" ] && ! alive "$pid"; then return 1; fi
        sleep 0.1
    done
    return 1
}

port_is_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# alive PID: the process exists and is not a zombie waiting to be reaped. Its state is read
# in one step from /proc (the field after the last ")", as the name may hold one): checking
# existence and state in two reads raced with the reaping of a child (there, then gone, so
# "not a zombie").
alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    [[ "${stat##*) }" != Z* ]]
}

# stop_pidfile FILE: stops the process named in FILE (left by an earlier run) and removes it.
stop_pidfile() {
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    if [ -n "$pid" ] && alive "$pid"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$file"
}

# start_redis NAME PORT [FLAGS...]: a Redis in .work/NAME, throw-away (no persistence) unless
# FLAGS say otherwise (later flags win: `--appendonly yes` keeps its data across restarts).
start_redis() {
    local dir="$WORK/$1" port=$2
    shift 2
    mkdir -p "$dir"
    stop_pidfile "$dir/redis.pid"
    port_is_free "$port" || die "port $port is taken; set another one (see README)"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
        "$@" >/dev/null
    wait_for_port "$port" 10 || die "redis-server did not start on port $port (see $dir/redis.log)"
    log "redis-server on 127.0.0.1:$port"
}

# start_nx NAME PORT: nx-27017 with an in-memory database, its files in .work/NAME. The
# scripts' fixed ports (Redis 163xx-164xx, MongoDB servers 271xx, the API 18xxx) lie below
# Linux's ephemeral range (32768-60999): a port in it can be held for a minute by a client socket
# in TIME_WAIT (the benchmark opens 10,000 streams), and a server then cannot bind it.
start_nx() {
    local dir="$WORK/$1" port=$2
    mkdir -p "$dir"
    start_server "$dir/mongo.pid" "$port" "nx-27017 (MongoDB wire protocol)" "$dir/mongo.out" \
        "$WORK/venv/bin/nx-27017" --db memory --host 127.0.0.1 -p "$port" \
        --log-file "$dir/mongo.log" --pid-file "$dir/nx.pid"
}

# start_secantus NAME PORT DATA [FLAGS...]: SecantusDB on PORT, its files in .work/NAME, its
# data in DATA (a directory, kept across restarts, or :memory:).
start_secantus() {
    local dir="$WORK/$1" port=$2 data=$3
    shift 3
    mkdir -p "$dir"
    start_server "$dir/secantus.pid" "$port" "SecantusDB (MongoDB wire protocol, replica set secantus)" \
        "$dir/secantus.log" \
        "$WORK/secantus/bin/secantusd-py" --host 127.0.0.1 --port "$port" --storage-path "$data" \
        --log-level WARNING "$@"
}

# start_server PIDFILE PORT WHAT LOG COMMAND...: runs COMMAND in the background until it
# listens on PORT. The port can stay taken for a moment after a server on it stopped (sockets
# of its connections still closing); the server then exits at once, and is started again.
start_server() {
    local pidfile=$1 port=$2 what=$3 out=$4 attempt pid
    shift 4
    stop_pidfile "$pidfile"
    port_is_free "$port" || die "port $port is taken; set another one (see README)"
    for attempt in 1 2 3 4 5; do
        "$@" >"$out" 2>&1 &
        pid=$!
        echo "$pid" >"$pidfile"
        # Listening, and by this process (not one that exited, nor a connection to itself).
        if wait_for_port "$port" 30 "$pid" && alive "$pid"; then
            log "$what on 127.0.0.1:$port"
            return 0
        fi
        stop_pidfile "$pidfile"
        grep -qsi "address already in use" "$out" || break
        [ "$attempt" -lt 5 ] || break
        log "port $port is still being released; starting it again ($attempt)"
        sleep 1
    done
    die "$what did not start on port $port (see $out)"
}

stop_services() {
    stop_pidfile "$WORK/$1/mongo.pid"
    stop_pidfile "$WORK/$1/secantus.pid"
    stop_pidfile "$WORK/$1/redis.pid"
}
