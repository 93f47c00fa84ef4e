#!/usr/bin/env bash
# Fault tolerance under steady load, measured: runs the fault tests (tests/faults) one at a time
# in a release build, with longer steady traffic before each fault and after its repair, and
# prints one row per fault: messages posted and acknowledged, acknowledged messages lost from
# history or from a stream, duplicates, 503 answers, and the seconds from the repair until
# posts succeed, every stream is open and /readyz is 200 again. Each fault runs two API
# instances (in one process), a SecantusDB and a Redis of its own; see docs/fault-tolerance.md.
#
#   ./scripts/failover.sh               # every fault, 10 s of traffic before and after each
#   FAULT_SECONDS=30 ./scripts/failover.sh stepdown    # longer, one fault (a test name filter)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

DIR="$WORK/failover"
mkdir -p "$DIR"
REPORT="$DIR/report.jsonl"
: >"$REPORT"

ensure_redis
ensure_secantus
export TEST_SECANTUSD="$WORK/secantus/bin/secantusd-py"
export FAULT_SECONDS="${FAULT_SECONDS:-10}"
export FAULT_REPORT="$REPORT"

log "fault tests, release build, $FAULT_SECONDS s of traffic before and after each fault"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
status=0
cargo test --release --quiet --test faults -- --test-threads=1 "$@" || status=$?

python3 - "$REPORT" "$started" <<'EOF'
import json, platform, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"\nscripts/failover.sh, {sys.argv[2]}, {platform.node()} ({cpu}), release build\n")
print("| fault | posted | acked | lost | duplicated | 503s | resyncs | posts back | streams back | ready back | slowest post |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    print(f"| {r['fault']} | {r['posted']:,} | {r['acknowledged']:,} | {r['lost']} | {r['duplicated']} "
          f"| {r['unavailable']:,} | {r['resyncs']} | {r['posts_back_s']:.1f} s | {r['streams_back_s']:.1f} s "
          f"| {r['ready_back_s']:.1f} s | {r['slowest_post_s']:.1f} s |")
broken = sum(r["broken"] for r in rows)
print(f"\n{len(rows)} faults, {broken} broken promises")
EOF
exit "$status"
