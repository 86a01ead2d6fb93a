#!/usr/bin/env bash
# Load-independent cost per DNS query of geo-router and gdnsd (issue 3): each server runs under
# valgrind's callgrind (user-space instructions, deterministic) and then under `perf stat`
# (system calls and context switches, counted by the kernel's tracepoints), answering the same
# ECS query file that bench/dns/run.sh uses, at a modest fixed rate so that nothing is lost.
# Not a test; run on demand:
#
#   bash bench/dns/profile.sh
#
# Knobs (environment):
#   ROUTER_BIN   the geo-router binary to measure (default: build target/release/geo-router)
#   PASSES=30    times dnsperf walks the query file (-n) under callgrind; PASSES_PERF=100 under perf
#   RATE=1500    offered queries/s under callgrind (dnsperf -Q); RATE_PERF=20000 under perf
#   OUT=DIR      keep callgrind outputs and logs there (default: a fresh /tmp directory)
#   SERVERS="geo-router gdnsd"
#   MEASURE="callgrind perf"   which measurements to take
#   PIN=1        servers on CPU 0 (so the router starts one UDP thread and gdnsd has
#                udp_threads 1), dnsperf on CPU 1, as bench/dns/run.sh does; PIN=0: no pinning
#
# Prints one line per server and measurement and a Markdown table at the end. `callgrind_annotate
# OUT/callgrind-geo-router.out` then shows where the router's instructions go.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
zone=mesh.localhost.
passes=${PASSES:-30}
passes_perf=${PASSES_PERF:-100}
rate=${RATE:-1500}
rate_perf=${RATE_PERF:-20000}
servers=${SERVERS:-geo-router gdnsd}
measure=${MEASURE:-callgrind perf}
if [[ ${PIN:-1} == 1 ]]; then
    on_server=(taskset -c 0)
    on_load=(taskset -c 1)
else
    on_server=()
    on_load=()
fi
venv=$root/bench/.venv
py=("$venv/bin/python" "$here/dnsbench.py")
log() { printf '== %s\n' "$*" >&2; }

if [[ -z ${ROUTER_BIN:-} ]]; then
    (cd "$root" && cargo build --release --bin geo-router)
    ROUTER_BIN=${CARGO_TARGET_DIR:-$root/target}/release/geo-router
fi
state=${OUT:-$(mktemp -d /tmp/meridian-profile-dns.XXXXXX)}
mkdir -p "$state"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

source "$root/bench/lib.sh" # free_port, wait_for

"$ROUTER_BIN" demo-geoip --out "$state/demo.mmdb" >/dev/null
gdnsd_port=$(free_port)
health_port=$(free_port)
"${py[@]}" prepare --regions "$root/regions" --state "$state" --mmdb "$state/demo.mmdb" \
    --zone "$zone" --gdnsd-port "$gdnsd_port" --gdnsd-version profile \
    --health-port "$health_port" --udp-threads 1
"${py[@]}" queries --mmdb "$state/demo.mmdb" --zone "$zone" --out "$state/queries-ecs.bin" \
    >"$state/queries.json"
"$venv/bin/python" -m http.server --bind 127.0.0.1 "$health_port" --directory "$state/health" \
    >"$state/health.log" 2>&1 &
pids+=($!)

regions_up() {
    "$venv/bin/python" -c "
import json, sys, urllib.request
regions = json.load(urllib.request.urlopen('http://$1/v1/regions', timeout=2))
regions = regions.get('regions', regions) if isinstance(regions, dict) else regions
sys.exit(0 if regions and all(r['health'] == 'up' for r in regions) else 1)"
}

# start_server NAME WRAPPER...: starts NAME under WRAPPER, sets server_pid and server_port.
start_server() {
    local name=$1
    shift
    if [[ $name == gdnsd ]]; then
        "$@" gdnsd -c "$state/gdnsd" start >"$state/$name.log" 2>&1 &
        server_pid=$!
        server_port=$gdnsd_port
    else
        : >"$state/router.out"
        "$@" "$ROUTER_BIN" --config "$state/router.toml" >"$state/router.out" 2>"$state/$name.log" &
        server_pid=$!
        wait_for 120 "geo-router's listening lines" grep -q '^http listening on' "$state/router.out"
        server_port=$(sed -n 's/^dns listening on 127.0.0.1://p' "$state/router.out")
        wait_for 120 "every region up" regions_up "$(sed -n 's/^http listening on //p' "$state/router.out")"
    fi
    wait_for 120 "$name answering" "${py[@]}" wait-dns --server "127.0.0.1:$server_port" --zone "$zone" --timeout 2
}
stop_server() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
}
# load QPS PASSES: the query file PASSES times at QPS; prints dnsperf's completed and lost counts
load() {
    "${on_load[@]}" dnsperf -s 127.0.0.1 -p "$server_port" -B -d "$state/queries-ecs.bin" -n "$2" -c 1 -T 1 \
        -q 50 -Q "$1" >"$state/dnsperf.txt" 2>&1
    local completed lost
    completed=$(sed -n 's/^ *Queries completed: *\([0-9]*\).*/\1/p' "$state/dnsperf.txt")
    lost=$(sed -n 's/^ *Queries lost: *\([0-9]*\).*/\1/p' "$state/dnsperf.txt")
    echo "$completed $lost"
}

rows=()
for name in $servers; do
    ipq=- completed=- spq=- cpq=- upq=- pcompleted=-
    if [[ $measure == *callgrind* ]]; then
    # 1. callgrind: user-space instructions between "instrumentation on" and "off".
    log "$name under callgrind"
    out=$state/callgrind-$name.out
    start_server "$name" "${on_server[@]}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        --trace-children=no
    callgrind_control -i on "$server_pid" >/dev/null
    read -r completed lost < <(load "$rate" "$passes")
    callgrind_control -i off "$server_pid" >/dev/null
    stop_server
    ir=$(sed -n "s/^totals: *\([0-9]*\).*/\1/p" "$out" | head -1)
    ipq=$(awk -v i="$ir" -v q="$completed" 'BEGIN { printf "%.0f", i / q }')
    log "$name: $ir instructions for $completed queries ($lost lost): $ipq per query"
    fi
    if [[ $measure == *perf* ]]; then

    # 2. perf stat: system calls, context switches and CPU time at a fixed rate.
    log "$name under perf stat"
    start_server "$name" env "${on_server[@]}"
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock -p "$server_pid" \
        -o "$state/perf-$name.txt" &
    perf_pid=$!
    sleep 0.5
    read -r pcompleted plost < <(load "$rate_perf" "$passes_perf")
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    stop_server
    syscalls=$(awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$state/perf-$name.txt")
    switches=$(awk -F, '/context-switches/ { print $1 }' "$state/perf-$name.txt")
    task_ms=$(awk -F, '/task-clock/ { print $1 }' "$state/perf-$name.txt")
    spq=$(awk -v s="$syscalls" -v q="$pcompleted" 'BEGIN { printf "%.2f", s / q }')
    cpq=$(awk -v s="$switches" -v q="$pcompleted" 'BEGIN { printf "%.3f", s / q }')
    upq=$(awk -v t="$task_ms" -v q="$pcompleted" 'BEGIN { printf "%.2f", t * 1000 / q }')
    log "$name: $syscalls syscalls, $switches context switches, $task_ms ms CPU for $pcompleted queries ($plost lost)"
    fi
    rows+=("| $name | $ipq | $completed | $spq | $cpq | $upq | $pcompleted |")
done

echo
echo "Query file: $(cat "$state/queries.json"); callgrind: $passes passes at $rate q/s; perf stat: $passes_perf passes at $rate_perf q/s."
echo
echo "| server | instructions/query (user, callgrind) | queries | syscalls/query | context switches/query | CPU µs/query at $rate_perf q/s (noisy) | queries |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo "state in $state" >&2
