#!/usr/bin/env bash
# Issue-6 benchmarks, each next to its ceiling and in the same run: the send path (POST /messages
# vs a bare MongoDB insert vs GET /healthz), SSE fan-out (two API instances vs nginx + nchan, in
# memory and with Redis storage) and the memory of idle streams (API vs nchan). Installs what is
# missing (redis-server, nx-27017, nginx + libnginx-mod-nchan), starts everything on loopback
# ports of its own, prints one markdown table, then a met/not met verdict for each target of
# issue 19, and stops everything on exit. All state lives in .work/loadbench.
#   ulimit -n 65536; ./scripts/bench.sh
# Environment: SEND_CONCURRENCY (32), SEND_SECONDS (10), FANOUT_SUBSCRIBERS ("100 1000 5000"),
# FANOUT_MESSAGES (per count: "100:20000 1000:500 5000:100"; others 100), FANOUT_PUBLISHERS
# ("32 128": each subscriber count runs once per publisher count: at 100 subscribers the API
# with no subscribers first, then the API, nchan, nchan + Redis), IDLE_STREAMS (10000),
# IDLE_HOLD_SECS (10), NGINX_WORKERS (auto), SCENARIOS ("send fanout idle log": which to run;
# log: the event log alone, the append script with 1, 10 and 100 events a call),
# BENCH_STATS=1 (also run
# scripts/bench-stats.sh afterwards), ports: LOADBENCH_REDIS_PORT (16410),
# LOADBENCH_MONGO_PORT (27148), LOADBENCH_API_PORT (18110), LOADBENCH_API2_PORT (18111),
# LOADBENCH_NCHAN_PORT (18120), LOADBENCH_METRICS_PORT (18130: api1's /metrics, api2's on the
# next port), RUST_LOG (warn) for the API instances (logs in .work/loadbench).
# Both instances serve /metrics (METRICS_ADDR) as in production; api1's is scraped every second
# and two scrapes are printed at the end: the busiest moment of the send path and the moment
# with the most open streams.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

REDIS_PORT="${LOADBENCH_REDIS_PORT:-16410}"
MONGO_PORT="${LOADBENCH_MONGO_PORT:-27148}"
API_PORT="${LOADBENCH_API_PORT:-18110}"
API2_PORT="${LOADBENCH_API2_PORT:-18111}"
NCHAN_PORT="${LOADBENCH_NCHAN_PORT:-18120}"
METRICS_PORT="${LOADBENCH_METRICS_PORT:-18130}"
SEND_CONCURRENCY="${SEND_CONCURRENCY:-32}"
SEND_SECONDS="${SEND_SECONDS:-10}"
FANOUT_SUBSCRIBERS="${FANOUT_SUBSCRIBERS:-100 1000 5000}"
FANOUT_MESSAGES="${FANOUT_MESSAGES:-100:20000 1000:500 5000:100}"
FANOUT_PUBLISHERS="${FANOUT_PUBLISHERS:-32 128}"
IDLE_STREAMS="${IDLE_STREAMS:-10000}"
IDLE_HOLD_SECS="${IDLE_HOLD_SECS:-10}"
NGINX_WORKERS="${NGINX_WORKERS:-auto}"
SCENARIOS="${SCENARIOS:-send fanout idle log}"
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
DIR="$WORK/loadbench"
LOADGEN="$ROOT/target/release/examples/loadgen"
mkdir -p "$DIR"

# 10,000 streams need as many descriptors in the load generator, the API and nginx. Take what
# the hard limit allows when 65536 is not allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=65536
[ "$NOFILE" -gt 65536 ] && NOFILE=65536
[ "$NOFILE" -ge $((IDLE_STREAMS + 1000)) ] ||
    die "open files limit $NOFILE is too low for IDLE_STREAMS=$IDLE_STREAMS (run: ulimit -n 65536)"

stop_nginx() {
    if [ -f "$DIR/nginx.pid" ]; then
        nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log" -s quit 2>/dev/null || true
        for _ in $(seq 50); do [ -f "$DIR/nginx.pid" ] || break; sleep 0.1; done
        stop_pidfile "$DIR/nginx.pid"
    fi
}

cleanup() {
    stop_nginx
    stop_pidfile "$DIR/api1.pid"
    stop_pidfile "$DIR/api2.pid"
    stop_pidfile "$DIR/sampler.pid"
    stop_services loadbench
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_nginx_nchan() {
    if command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
        return
    fi
    # In Debian 12 `nginx` is the server itself (nginx-light only adds the echo module); the
    # package may start a system-wide nginx on port 80 where systemd runs; we use our own.
    log "installing nginx and libnginx-mod-nchan (Debian packages)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan \
        >/dev/null
}

# rss_kib PID...: the summed proportional set size (PSS) of the processes, in KiB: resident
# memory with shared pages (nchan's shared zone, libraries) split between the processes that
# map them instead of counted once per worker. For one process it is its resident set.
rss_kib() {
    local total=0 pid kib
    for pid in "$@"; do
        kib=$(awk '/^Pss:/ {print $2; exit}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

nginx_workers() {
    local master
    master=$(cat "$DIR/nginx.pid")
    # The master's children, from /proc (no procps needed).
    cat /proc/"$master"/task/*/children 2>/dev/null | tr '\n' ' '
}

# messages_for N: the message count of a fan-out run with N subscribers.
messages_for() {
    local pair
    for pair in $FANOUT_MESSAGES; do
        [ "${pair%%:*}" = "$1" ] && { echo "${pair#*:}"; return; }
    done
    echo 100
}

start_api() { # start_api NAME PORT METRICS_PORT
    local name=$1 port=$2 metrics=$3
    stop_pidfile "$DIR/$name.pid"
    port_is_free "$port" || die "port $port is taken; set LOADBENCH_API_PORT/LOADBENCH_API2_PORT"
    port_is_free "$metrics" || die "port $metrics is taken; set LOADBENCH_METRICS_PORT"
    LISTEN_ADDR="127.0.0.1:$port" METRICS_ADDR="127.0.0.1:$metrics" \
        target/release/chat-server >"$DIR/$name.log" 2>&1 &
    echo $! >"$DIR/$name.pid"
    wait_for_port "$port" 60 || die "the API did not start (see $DIR/$name.log)"
    log "chat-server $name on 127.0.0.1:$port"
}

write_nginx_conf() {
    local module
    module=$({ dpkg -L libnginx-mod-nchan 2>/dev/null | grep 'ngx_nchan_module\.so$' | head -n1; } || true)
    module=${module:-/usr/lib/nginx/modules/ngx_nchan_module.so}
    mkdir -p "$DIR/nginx-tmp"
    cat >"$DIR/nginx.conf" <<EOF
# Written by scripts/bench.sh: nchan as the SSE fan-out ceiling, no auth; in memory (/pub, /sub)
# and with Redis storage (/rpub, /rsub: the benchmark's Redis, as nchan runs on several servers).
load_module $module;
daemon on;
pid $DIR/nginx.pid;
error_log $DIR/nginx-error.log warn;
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile $NOFILE;
events {
    worker_connections 20000;
    multi_accept on;
}
http {
    access_log off;
    client_body_temp_path $DIR/nginx-tmp/body;
    proxy_temp_path $DIR/nginx-tmp/proxy;
    fastcgi_temp_path $DIR/nginx-tmp/fastcgi;
    uwsgi_temp_path $DIR/nginx-tmp/uwsgi;
    scgi_temp_path $DIR/nginx-tmp/scgi;
    keepalive_requests 1000000;
    nchan_max_reserved_memory 256M;
    upstream bench_redis {
        nchan_redis_server redis://127.0.0.1:$REDIS_PORT;
    }
    server {
        listen 127.0.0.1:$NCHAN_PORT backlog=4096;
        location ~ ^/pub/(\w+)$ {
            nchan_publisher http;
            nchan_channel_id \$1;
            nchan_message_buffer_length 1000;
            nchan_message_timeout 5m;
        }
        location ~ ^/sub/(\w+)$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
            # Live messages only: a new subscriber gets nothing published before it came.
            nchan_subscriber_first_message newest;
        }
        # The same with Redis storage. Their own channel group: a channel id is one channel of
        # nginx's shared memory, whichever storage its locations use.
        location ~ ^/rpub/(\w+)$ {
            nchan_redis_pass bench_redis;
            nchan_channel_group redis;
            nchan_publisher http;
            nchan_channel_id \$1;
            nchan_message_buffer_length 1000;
            nchan_message_timeout 5m;
        }
        location ~ ^/rsub/(\w+)$ {
            nchan_redis_pass bench_redis;
            nchan_channel_group redis;
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
            nchan_subscriber_first_message newest;
        }
    }
}
EOF
}

start_nginx() {
    port_is_free "$NCHAN_PORT" || die "port $NCHAN_PORT is taken; set LOADBENCH_NCHAN_PORT"
    nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log"
    wait_for_port "$NCHAN_PORT" 10 || die "nginx did not start (see $DIR/nginx-error.log)"
    for _ in $(seq 50); do [ -n "$(nginx_workers)" ] && break; sleep 0.1; done
    log "nginx + nchan on 127.0.0.1:$NCHAN_PORT (worker_processes $NGINX_WORKERS: $(nginx_workers | wc -w) workers)"
}

# CPU accounting of the processes involved (see loadgen --cpu).
pid_of() { cat "$DIR/$1.pid"; }
nginx_cpu() { echo "nginx:$(nginx_workers | tr ' ' '+' | sed 's/+$//')"; }

ensure_redis
ensure_nx
ensure_nginx_nchan
log "release build"
cargo build --quiet --release --bin chat-server --example loadgen

start_redis loadbench "$REDIS_PORT"
start_nx loadbench "$MONGO_PORT"
export MONGODB_URI="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"
export MONGODB_DATABASE=loadbench
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export REDIS_KEY_PREFIX="loadbench:"
JWT_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export JWT_SECRET
export APP_ENV=development RUST_LOG=${RUST_LOG:-warn} AUTH_RATE_LIMIT_PER_MINUTE=100000
# A benchmark is the flood the write limits stop.
export WRITE_RATE_LIMIT_PER_MINUTE=1000000000 SIGNAL_RATE_LIMIT_PER_MINUTE=1000000000
# The in-process ring must hold a whole burst for the slowest stream.
export SSE_BUFFER_EVENTS=65536
start_api api1 "$API_PORT" "$METRICS_PORT"
start_api api2 "$API2_PORT" "$((METRICS_PORT + 1))"
# The sampler: api1's /metrics once a second, each scrape in its own file.
rm -rf "$DIR/metrics"
mkdir -p "$DIR/metrics"
(
    n=0
    while true; do
        curl -sf -m 2 -o "$DIR/metrics/$(printf %05d $n).txt" "http://127.0.0.1:$METRICS_PORT/metrics" || true
        n=$((n + 1))
        sleep 1
    done
) &
echo $! >"$DIR/sampler.pid"
API1="http://127.0.0.1:$API_PORT"
API2="http://127.0.0.1:$API2_PORT"

stop_nginx
write_nginx_conf
nginx -p "$DIR" -c "$DIR/nginx.conf" -e "$DIR/nginx-error.log" -t 2>"$DIR/nginx-test.log" ||
    die "nginx rejects $DIR/nginx.conf (see $DIR/nginx-test.log)"
start_nginx
NCHAN="http://127.0.0.1:$NCHAN_PORT"
STORES="mongo:$(pid_of mongo),redis:$(pid_of redis)"

began=$SECONDS
ROWS="$DIR/rows.md"
"$LOADGEN" header >"$ROWS"
# row CMD...: runs the load generator; its row goes to the table, a failure is reported in it.
row() {
    local out
    if ! out=$(timeout --foreground --kill-after=10 900 "$LOADGEN" "$@"); then
        log "loadgen $1 exited with an error (its row says what)"
    fi
    if [ -n "$out" ]; then
        echo "$out" >>"$ROWS"
        echo "$out" >&2
    else
        echo "| $1 | - | - | - | - | - | - | - | FAILED: no result |" >>"$ROWS"
    fi
}

if wants send; then
log "1. send path: C=$SEND_CONCURRENCY for $SEND_SECONDS s each"
row send --url "$API1" --users "$SEND_CONCURRENCY" --concurrency "$SEND_CONCURRENCY" \
    --seconds "$SEND_SECONDS" --label "api POST /messages (1 instance)" \
    --cpu "api:$(pid_of api1),$STORES"
row mongo-insert --uri "$MONGODB_URI" --db "$MONGODB_DATABASE" \
    --concurrency "$SEND_CONCURRENCY" --seconds "$SEND_SECONDS" \
    --label "nx-27017 insert_one (same server)" --cpu "mongo:$(pid_of mongo)"
row healthz --url "$API1" --concurrency "$SEND_CONCURRENCY" --seconds "$SEND_SECONDS" \
    --label "api GET /healthz (same instance)" --cpu "api:$(pid_of api1)"
rate_of() { { grep "^| $1 " "$ROWS" | grep -F "$2" | head -n1 | awk -F'|' '{gsub(/ /, "", $5); print $5}'; } || true; }
SEND_RATE=$(rate_of send "POST /messages")
MONGO_RATE=$(rate_of "send ceiling" insert_one)
HEALTH_RATE=$(rate_of "send ceiling" healthz)
fi

wants fanout || FANOUT_SUBSCRIBERS=""
# Each group of rows (API, nchan, nchan + Redis) runs back to back, so that all see the machine
# in the same state. Publishers are closed loops: with few of them, the rate is bounded by how
# long one publish takes (a durable write for the API, memory or Redis for nchan) rather than by
# capacity. At 100 subscribers the API's publish rate is held to its rate with the same
# publishers posting the same way and no subscribers, measured right before.
# api_fanout SUBSCRIBERS LABEL: the API's row with the loop's $m messages and $p publishers.
api_fanout() {
    row fanout --target api --sub-urls "$API1,$API2" --pub-url "$API1" --subscribers "$1" \
        --messages "$m" --publishers "$p" --timeout-secs 120 --label "$2" \
        --cpu "api1:$(pid_of api1),api2:$(pid_of api2),$STORES"
}
for n in $FANOUT_SUBSCRIBERS; do
    m=$(messages_for "$n")
    for p in $FANOUT_PUBLISHERS; do
        log "2. fan-out: $n subscribers, $m messages, $p publishers (api, nchan, nchan + Redis)"
        if [ "$n" = 100 ]; then api_fanout 0 "api: no subscribers, POST via 1"; fi
        api_fanout "$n" "api: streams on 2 instances, POST via 1"
        row fanout --target nchan --sub-urls "$NCHAN/sub/fan${n}p$p" \
            --pub-url "$NCHAN/pub/fan${n}p$p" --subscribers "$n" --messages "$m" \
            --publishers "$p" --timeout-secs 120 \
            --label "nchan (nginx, $NGINX_WORKERS workers)" --cpu "$(nginx_cpu)"
        row fanout --target nchan --sub-urls "$NCHAN/rsub/fan${n}p$p" \
            --pub-url "$NCHAN/rpub/fan${n}p$p" --subscribers "$n" --messages "$m" \
            --publishers "$p" --timeout-secs 120 \
            --label "nchan + Redis (nginx, $NGINX_WORKERS workers)" \
            --cpu "$(nginx_cpu),redis:$(pid_of redis)"
    done
done

# idle_rss LABEL TARGET URL CPU PIDS...: opens IDLE_STREAMS streams and reads the RSS of PIDS
# before and once they are all established (CPU: loadgen --cpu, measured while they are held).
idle_rss() {
    local label=$1 target=$2 url=$3 cpu=$4 before after ready delta lg
    shift 4
    [ "$#" -gt 0 ] || {
        echo "| idle memory | $label | 0 streams | - | - | - | - | - | FAILED: no server process to measure |" >>"$ROWS"
        return
    }
    # One stream opened and closed first, so one-off costs of the first connection (pools,
    # buffers) are in "before" rather than spread over the streams.
    "$LOADGEN" idle --target "$target" --url "$url" --login-url "$API1" --streams 1 \
        --hold-secs 0 --ready-file "$DIR/idle.warm" --label warm-up --timeout-secs 60 \
        >/dev/null 2>&1 || log "idle warm-up ($target) failed"
    rm -f "$DIR/idle.ready"
    sleep 1
    before=$(rss_kib "$@")
    # API users log in on instance 1: password hashing (argon2, 19 MiB each) must not land in
    # the measured process.
    "$LOADGEN" idle --target "$target" --url "$url" --login-url "$API1" \
        --streams "$IDLE_STREAMS" \
        --hold-secs "$IDLE_HOLD_SECS" --ready-file "$DIR/idle.ready" --label "$label" \
        --timeout-secs $((IDLE_HOLD_SECS + 240)) --cpu "$cpu" >"$DIR/idle.row" &
    lg=$!
    for _ in $(seq 2500); do
        [ -s "$DIR/idle.ready" ] && break
        alive "$lg" || break
        sleep 0.1
    done
    if [ -s "$DIR/idle.ready" ]; then
        sleep 2 # let the last streams' buffers settle
        after=$(rss_kib "$@")
        ready=$(cat "$DIR/idle.ready")
    fi
    wait "$lg" || log "loadgen idle ($target) exited with an error (its row says what)"
    cat "$DIR/idle.row" >>"$ROWS"
    cat "$DIR/idle.row" >&2
    if [ -n "${after:-}" ] && [ "${ready:-0}" -gt 0 ]; then
        delta=$((after - before))
        echo "| idle memory | $label | $ready streams | - | - | - | - | - | PSS $((before / 1024)) → $((after / 1024)) MiB: +$((delta / 1024)) MiB, $(awk "BEGIN {printf \"%.1f\", $delta / $ready}") KiB/stream |" >>"$ROWS"
    else
        echo "| idle memory | $label | 0 streams | - | - | - | - | - | FAILED: streams not established |" >>"$ROWS"
    fi
}
if wants idle; then
log "3. idle: $IDLE_STREAMS streams on a fresh API instance, then on a fresh nginx"
# Fresh processes, so that memory freed by the fan-out runs does not hide the streams' own.
stop_pidfile "$DIR/api2.pid"
start_api api2 "$API2_PORT" "$((METRICS_PORT + 1))"
idle_rss "api (fresh instance 2, chat-server PSS)" api "$API2" \
    "api2:$(pid_of api2),$STORES" "$(pid_of api2)"
stop_nginx
start_nginx
# shellcheck disable=SC2046 # one PID per word
idle_rss "nchan (fresh nginx, sum of workers' PSS)" nchan "$NCHAN/sub/idle" "$(nginx_cpu)" \
    $(nginx_workers)
fi

if wants log; then
log "4. the event log alone: the append script, C=$SEND_CONCURRENCY for $SEND_SECONDS s"
for b in 1 10 100; do
    row log-append --redis "$REDIS_URL" --batch "$b" --concurrency "$SEND_CONCURRENCY" \
        --seconds "$SEND_SECONDS" --cpu "redis:$(pid_of redis)"
done
fi

elapsed=$((SECONDS - began))
echo
cat "$ROWS"
echo
if [ -n "${SEND_RATE:-}" ] && [ -n "${MONGO_RATE:-}" ] && [ -n "${HEALTH_RATE:-}" ]; then
    awk -v s="$SEND_RATE" -v m="$MONGO_RATE" -v h="${HEALTH_RATE:-0}" 'BEGIN {
        if (m == 0 || h == 0) { print "Send path: a ceiling row failed; no ratios"; exit }
        printf "Send path: api/mongo = %.2f, api/healthz = %.3f (requests/s ratios)\n", s / m, s / h }'
fi
# The verdicts on the targets of issue 19, from the table. Fan-out rows are keyed by their load
# ("1000 subs, 32 pubs") and kind: api, base (the API with no subscribers, under the key of the
# 100-subscriber row it comes right before), nchan and redis (nchan + Redis).
awk -F'|' '
    function verdict(ok) { return ok ? "met" : "not met" }
    function have(kind, key) { return (kind SUBSEP key) in rate }
    { for (i = 2; i <= NF; i++) gsub(/^ +| +$/, "", $i) }
    $2 == "fan-out" {
        words = split($4, w, " ")
        subs = w[1]; key = (subs == 0 ? 100 : subs) " subs, " w[words - 1] " pubs"
        kind = $3 ~ /^api/ ? (subs == 0 ? "base" : "api") : ($3 ~ /Redis/ ? "redis" : "nchan")
        if (!(key in seen)) { seen[key]; keys[++nkeys] = key }
        if ($5 != "-") { rate[kind, key] = $5; p99[kind, key] = $7 }
        if (match($10, /^publish [0-9]+\/s/)) pub[kind, key] = substr($10, 9, RLENGTH - 10) + 0
    }
    $2 == "send" && $3 ~ /POST/ && $5 != "-" { send = $5 + 0 }
    $2 == "send ceiling" && $3 ~ /insert_one/ && $5 != "-" { insert = $5 + 0 }
    $2 == "idle memory" && match($10, /[0-9.]+ KiB\/stream/) {
        idle[$3 ~ /^api/ ? "api" : "nchan"] = substr($10, RSTART, RLENGTH - 11) + 0
    }
    $2 == "idle memory" { idle_rows++ }
    $2 ~ /^send/ { send_rows++ }
    # Every row but the memory ones (no such column) must have no errors, lost or duplicates.
    NR > 2 && $2 != "idle memory" {
        rows++
        if ($9 !~ /^[0\/]+$/) bad = bad sprintf("%s%s (%s): %s", bad == "" ? "" : "; ", $3, $4, $9)
    }
    END {
        name["nchan"] = "nchan"; name["redis"] = "nchan + Redis"
        for (k = 1; k <= nkeys; k++) {
            key = keys[k]; target = key ~ /^100 / ? 2 : 1
            if (target == 2) {
                what = "Target 2 (" key "), publish rate with subscribers against without: "
                if (!(("api" SUBSEP key) in pub) || !(("base" SUBSEP key) in pub) || pub["base", key] == 0)
                    print what "not measured (a row failed)"
                else
                    printf "%s%s: %d/s against %d/s (%.2f, at least 0.90)\n", what,
                        verdict(pub["api", key] >= 0.9 * pub["base", key]), pub["api", key],
                        pub["base", key], pub["api", key] / pub["base", key]
            }
            for (v = 1; v <= 2; v++) {
                other = v == 1 ? "nchan" : "redis"
                what = "Target " target " (" key "), api against " name[other] ": "
                if (!have("api", key) || !have(other, key)) { print what "not measured (a row failed)"; continue }
                a = rate["api", key]; b = rate[other, key]; ap = p99["api", key]; bp = p99[other, key]
                if (target == 2)
                    printf "%s%s: p99 %s against %s ms\n", what, verdict(ap + 0 <= bp + 0), ap, bp
                else
                    printf "%s%s: %d against %d deliveries/s (%.2f), p99 %s against %s ms\n", what,
                        verdict(a + 0 >= b + 0 && ap + 0 <= bp + 0), a, b, a / b, ap, bp
            }
        }
        if (send_rows) {
            what = "Target 4, send path, api POST against insert_one: "
            if (send == "" || insert == "" || insert == 0) print what "not measured (a row failed)"
            else printf "%s%s: %d/s against %d/s (%.2f)\n", what, verdict(send >= insert), send, insert, send / insert
        }
        if (idle_rows) {
            what = "Target 4, idle stream memory, api against nchan: "
            if (!("api" in idle) || !("nchan" in idle)) print what "not measured (a row failed)"
            else printf "%s%s: %s against %s KiB/stream\n", what, verdict(idle["api"] <= idle["nchan"]), idle["api"], idle["nchan"]
        }
        if (bad == "") printf "Target 4, nothing lost or duplicated: met (errors/lost/dup all 0 in the %d rows)\n", rows
        else print "Target 4, nothing lost or duplicated: not met: " bad
    }' "$ROWS"
stop_pidfile "$DIR/sampler.pid"
python3 - "$DIR/metrics" <<'PY'
import os, re, sys
SHOWN = ("chat_http_requests_total", "chat_messages_posted_total", "chat_log_events_appended_total",
         "chat_sse_streams", "chat_sse_events_sent_total", "chat_delivery_lag_seconds_count",
         "chat_delivery_lag_seconds_sum", "chat_delivery_waiting_batches", "chat_store_commands_total",
         "chat_redis_commands_total", "chat_users_online")
def read(path):
    values = {}
    for line in open(path):
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line.strip())
        if m and m.group(1).startswith(SHOWN):
            values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return values
d = sys.argv[1]
scrapes = [read(os.path.join(d, f)) for f in sorted(os.listdir(d))]
scrapes = [s for s in scrapes if s]
def total(s, name): return sum(v for k, v in s.items() if k.split("{")[0] == name)
if len(scrapes) < 2:
    print("Metrics: no scrapes (see .work/loadbench/api1.log)"); sys.exit()
posted = [total(b, "chat_messages_posted_total") - total(a, "chat_messages_posted_total") for a, b in zip(scrapes, scrapes[1:])]
busiest = posted.index(max(posted)) + 1
streams = max(range(len(scrapes)), key=lambda i: total(scrapes[i], "chat_sse_streams"))
for title, i in (("the busiest second of posting", busiest), ("the most open streams", streams)):
    print(f"\napi1's /metrics at {title} (scrape {i} of {len(scrapes)}; {posted[i - 1] if i else 0:.0f} posts in the second before it):")
    for k in sorted(scrapes[i]):
        if not k.startswith("chat_http_requests_total") or 'status="2' in k:
            print(f"  {k} {scrapes[i][k]:g}")
PY
echo "Statistics: not run here; ./scripts/bench-stats.sh loads 1M messages (~15 min) and measures them (or BENCH_STATS=1)."
echo "nginx: worker_processes $NGINX_WORKERS ($(nginx_workers | wc -w) workers), worker_connections 20000, worker_rlimit_nofile $NOFILE; open files limit $NOFILE"
echo "Scenarios took ${elapsed} s; $(date -u '+%F %T UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"

if [ "${BENCH_STATS:-0}" = 1 ]; then
    cleanup
    trap - EXIT
    log "statistics: scripts/bench-stats.sh"
    "$ROOT/scripts/bench-stats.sh"
fi
