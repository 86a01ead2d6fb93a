#!/usr/bin/env bash
# geo-router DNS vs gdnsd (issue 3): one run, both servers side by side on loopback, the same
# catalogue, GeoIP database, zone and ECS query mix. Not a test; run on demand:
#
#   bash bench/dns/run.sh
#
# Prints a Markdown summary and writes it to bench/dns/results-<date>.md. Knobs (environment):
#   DURATION=15       seconds per saturation run (dnsperf -l)
#   CLIENTS=4         dnsperf -c
#   OUTSTANDING=200   dnsperf -q (queries in flight)
#   CAP=0.5           CPU quota (cores) of each server in the capped run (cgroup cpu controller);
#                     CAP=0 skips that run
#   FIXED_QPS=20000   offered rate of the per-query latency run (dnsperf -Q ... -v)
#   FIXED_DURATION=10
#   ROUNDS=3          saturation runs per server and query mix, alternating which server goes first
#   PIN=1             servers on CPU 0, load generators on CPU 1 (taskset); PIN=0: no pinning
#   NICE=-10          niceness of every benchmark process (servers, dnsperf, wrk), so compiles
#                     running beside the benchmark on this shared machine disturb it less; 0: off
#   GDNSD_UDP_THREADS gdnsd's udp_threads (default: 1 pinned, nproc unpinned)
#   WRK_DURATION=10s  WRK_CONNECTIONS=32
#   KEEP_STATE=1      keep the temporary state directory (configs, logs, raw outputs)
#
# Idempotent: installs only what is missing (gdnsd, dnsperf, wrk from Debian; dnspython and
# maxminddb into bench/.venv), builds only the geo-router binary, uses a fresh temp directory
# and ephemeral loopback ports, and stops every process it started.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
zone=${ZONE:-mesh.localhost.}
duration=${DURATION:-15}
clients=${CLIENTS:-4}
outstanding=${OUTSTANDING:-200}
fixed_qps=${FIXED_QPS:-20000}
fixed_duration=${FIXED_DURATION:-10}
rounds=${ROUNDS:-3}
cap=${CAP:-0.5}
pin=${PIN:-1}
niceness=${NICE:--10}
wrk_duration=${WRK_DURATION:-10s}
wrk_connections=${WRK_CONNECTIONS:-32}
today=$(date +%F)

log() { printf '== %s\n' "$*" >&2; }

# --- 0. tools ------------------------------------------------------------------------------------
missing=()
command -v gdnsd >/dev/null 2>&1 || missing+=(gdnsd)
command -v dnsperf >/dev/null 2>&1 || missing+=(dnsperf)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    for pkg in "${missing[@]}"; do
        if ! apt-cache policy "$pkg" | grep -q 'Candidate: [0-9]'; then
            echo "run.sh: Debian has no package '$pkg' here; see bench/README.md" >&2
            exit 1
        fi
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
venv=$root/bench/.venv
if ! "$venv/bin/python" -c 'import dns.message, maxminddb' >/dev/null 2>&1; then
    log "creating $venv (dnspython, maxminddb)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q dnspython maxminddb
fi
py=("$venv/bin/python" "$here/dnsbench.py")

if [[ $pin == 1 ]]; then
    server_cpus=0
    load_cpus=1
    on_server=(nice -n "$niceness" taskset -c "$server_cpus")
    on_load=(nice -n "$niceness" taskset -c "$load_cpus")
    gdnsd_threads=${GDNSD_UDP_THREADS:-1}
else
    on_server=(nice -n "$niceness")
    on_load=(nice -n "$niceness")
    gdnsd_threads=${GDNSD_UDP_THREADS:-$(nproc)}
fi

# --- 1. build, state, configs --------------------------------------------------------------------
log "building geo-router (release)"
(cd "$root" && cargo build --release --bin geo-router)
bin=${CARGO_TARGET_DIR:-$root/target}/release/geo-router

state=$(mktemp -d /tmp/meridian-bench-dns.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${cgroup:-} && -d $cgroup ]]; then
        rmdir "$cgroup" 2>/dev/null || true
    fi
    if [[ ${KEEP_STATE:-0} == 1 ]]; then
        echo "state kept in $state" >&2
    else
        rm -rf "$state"
    fi
}
trap cleanup EXIT

source "$root/bench/lib.sh" # free_port, wait_for

"$bin" demo-geoip --out "$state/demo.mmdb" >/dev/null
gdnsd_port=$(free_port)
health_port=$(free_port)
gdnsd_version=$({ gdnsd 2>&1 || true; } | sed -n 's/^gdnsd version //p' | head -1)
"${py[@]}" prepare --regions "$root/regions" --state "$state" --mmdb "$state/demo.mmdb" \
    --zone "$zone" --gdnsd-port "$gdnsd_port" --gdnsd-version "$gdnsd_version" \
    --health-port "$health_port" --udp-threads "$gdnsd_threads"
"${py[@]}" queries --mmdb "$state/demo.mmdb" --zone "$zone" --out "$state/queries-ecs.bin" \
    >"$state/queries.json"
printf 'ws.%s A\n' "${zone%.}" >"$state/queries-plain.txt"

# --- 2. start the servers ------------------------------------------------------------------------

log "health responder on 127.0.0.1:$health_port (every region's catalogue copy points here)"
"${on_load[@]}" "$venv/bin/python" -m http.server --bind 127.0.0.1 "$health_port" \
    --directory "$state/health" >"$state/health.log" 2>&1 &
health_pid=$!
pids+=("$health_pid")
wait_for 10 "the health responder" "$venv/bin/python" -c \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$health_port/readyz', timeout=1)"

log "gdnsd $gdnsd_version on 127.0.0.1:$gdnsd_port (udp_threads $gdnsd_threads)"
gdnsd -c "$state/gdnsd" checkconf >"$state/gdnsd-checkconf.log" 2>&1 || {
    cat "$state/gdnsd-checkconf.log" >&2
    exit 1
}
"${on_server[@]}" gdnsd -c "$state/gdnsd" start >"$state/gdnsd.log" 2>&1 &
gdnsd_pid=$!
pids+=("$gdnsd_pid")
wait_for 20 gdnsd "${py[@]}" wait-dns --server "127.0.0.1:$gdnsd_port" --zone "$zone" --timeout 1 || {
    cat "$state/gdnsd.log" >&2
    exit 1
}

log "geo-router"
"${on_server[@]}" "$bin" --config "$state/router.toml" >"$state/router.out" 2>"$state/router.err" &
router_pid=$!
pids+=("$router_pid")
wait_for 20 "geo-router's listening lines" grep -q '^http listening on' "$state/router.out" || {
    cat "$state/router.err" >&2
    exit 1
}
router_dns=$(sed -n 's/^dns listening on //p' "$state/router.out")
router_http=$(sed -n 's/^http listening on //p' "$state/router.out")
regions_up() {
    "$venv/bin/python" -c "
import json, sys, urllib.request
regions = json.load(urllib.request.urlopen('http://$router_http/v1/regions', timeout=1))
regions = regions.get('regions', regions) if isinstance(regions, dict) else regions
sys.exit(0 if regions and all(r['health'] == 'up' for r in regions) else 1)"
}
wait_for 30 "every region up in geo-router" regions_up
log "geo-router dns $router_dns http $router_http, every region healthy"

# --- 3. agreement --------------------------------------------------------------------------------
log "agreement: every network and every IPv4 address of the database, both servers"
"${on_load[@]}" "${py[@]}" agree --catalogue "$state/catalogue.json" --mmdb "$state/demo.mmdb" \
    --router "$router_dns" --gdnsd "127.0.0.1:$gdnsd_port" --out "$state/agree.json" | tee "$state/agree.txt"

# --- 4. load -------------------------------------------------------------------------------------
cpu_seconds() { # utime + stime of a process (all its threads), in seconds
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
udp_rcvbuf_errors() { # datagrams the kernel dropped for a full receive buffer (any socket here)
    awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}
phases=()
dnsperf_once() { # dnsperf_once PHASE ROUND SERVER -- dnsperf arguments (without -s/-p)
    local name=$1 round=$2 server=$3 port pid before after out drops foreign
    shift 3
    if [[ $server == geo-router ]]; then
        port=${router_dns##*:}
        pid=$router_pid
    else
        port=$gdnsd_port
        pid=$gdnsd_pid
    fi
    out=$state/dnsperf-$name-$server-r$round
    log "$name round $round, $server: dnsperf -s 127.0.0.1 -p $port $*"
    "${py[@]}" cpu-snapshot --out "$out.cpu.json"
    drops=$(udp_rcvbuf_errors)
    before=$(cpu_seconds "$pid")
    # bash's `time` gives dnsperf's own CPU (user, sys) without another tool.
    { TIMEFORMAT='%U %S' && time "${on_load[@]}" dnsperf -s 127.0.0.1 -p "$port" "$@" >"$out.txt" 2>&1; } 2>"$out.time"
    after=$(cpu_seconds "$pid")
    foreign=$("${py[@]}" cpu-foreign --before "$out.cpu.json" --exclude "$$,$gdnsd_pid,$router_pid,$health_pid")
    "${py[@]}" dnsperf --output "$out.txt" \
        --cpu-s "$(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')" \
        --loadgen-cpu-s "$(awk '{ print $1 + $2 }' "$out.time")" --foreign-cpu-s "$foreign" \
        --udp-drops "$(($(udp_rcvbuf_errors) - drops))" \
        --out "$out.json" >/dev/null
    grep -E 'Queries (completed|lost)|Queries per second|Average Latency' "$out.txt" | sed 's/^ */    /' >&2
    echo "    other processes' CPU during the run: $foreign s" >&2
}
run_phase() { # run_phase NAME ROUNDS -- dnsperf arguments: rounds alternate the first server
    local name=$1 count=$2 round
    shift 2
    for ((round = 1; round <= count; round++)); do
        if ((round % 2)); then
            dnsperf_once "$name" "$round" geo-router "$@"
            dnsperf_once "$name" "$round" gdnsd "$@"
        else
            dnsperf_once "$name" "$round" gdnsd "$@"
            dnsperf_once "$name" "$round" geo-router "$@"
        fi
    done
    phases+=("$name:$count")
}
dnsperf_saturate=(-l "$duration" -c "$clients" -T 1 -q "$outstanding")
run_phase ecs-mix "$rounds" -B -d "$state/queries-ecs.bin" "${dnsperf_saturate[@]}"
run_phase no-ecs "$rounds" -e -d "$state/queries-plain.txt" "${dnsperf_saturate[@]}"
# Server-bound: with one core each, dnsperf (not the server) can be the bottleneck for the faster
# server; capping each server at the same CPU quota makes both servers the bottleneck.
cgroup=
if [[ $cap != 0 ]]; then
    quota_us=$(awk -v c="$cap" 'BEGIN { printf "%d", c * 10000 }')
    if [[ -w /sys/fs/cgroup/cpu/cgroup.procs && -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
        cgroup=/sys/fs/cgroup/cpu/meridian-bench-$$ # cgroup v1
        cgroup_root=/sys/fs/cgroup/cpu
        mkdir "$cgroup"
        echo 10000 >"$cgroup/cpu.cfs_period_us"
        echo "$quota_us" >"$cgroup/cpu.cfs_quota_us"
    elif [[ -w /sys/fs/cgroup/cgroup.procs ]] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
        cgroup=/sys/fs/cgroup/meridian-bench-$$ # cgroup v2
        cgroup_root=/sys/fs/cgroup
        mkdir "$cgroup"
        echo "$quota_us 10000" >"$cgroup/cpu.max"
    else
        log "no writable cgroup cpu controller: skipping the capped run"
    fi
    if [[ -n $cgroup ]]; then
        log "capped run: each server limited to $cap core ($quota_us us per 10 ms) in $cgroup"
        echo "$gdnsd_pid" >"$cgroup/cgroup.procs"
        echo "$router_pid" >"$cgroup/cgroup.procs"
        run_phase ecs-mix-capped "$rounds" -B -d "$state/queries-ecs.bin" "${dnsperf_saturate[@]}"
        echo "$gdnsd_pid" >"$cgroup_root/cgroup.procs"
        echo "$router_pid" >"$cgroup_root/cgroup.procs"
        rmdir "$cgroup"
    fi
fi
run_phase ecs-fixed-rate 1 -B -d "$state/queries-ecs.bin" -l "$fixed_duration" -c "$clients" -T 1 \
    -q "$outstanding" -Q "$fixed_qps" -v

# --- 5. /v1/route --------------------------------------------------------------------------------
wrk_cmd=(wrk -t1 "-c$wrk_connections" "-d$wrk_duration" --latency "http://$router_http/v1/route?ip=81.20.3.1")
log "${wrk_cmd[*]}"
curl -fsS "http://$router_http/v1/route?ip=81.20.3.1" >"$state/route-sample.json" 2>/dev/null ||
    "$venv/bin/python" -c "import urllib.request; print(urllib.request.urlopen('http://$router_http/v1/route?ip=81.20.3.1').read().decode())" >"$state/route-sample.json"
"${on_load[@]}" "${wrk_cmd[@]}" >"$state/wrk.txt" 2>&1
sed 's/^/    /' "$state/wrk.txt" >&2

# --- 6. summary ----------------------------------------------------------------------------------
machine="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(uname -sr)"
if [[ $pin == 1 ]]; then
    pinning="servers pinned to CPU $server_cpus and dnsperf/wrk/the health responder to CPU $load_cpus with taskset, the same for both servers"
else
    pinning="no CPU pinning"
fi
pinning="$pinning; every benchmark process at nice $niceness (the machine is shared with other work: see 'other processes' below each table); load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
settings="gdnsd $gdnsd_version (Debian, geoip plugin, auto_dc_coords, udp_threads $gdnsd_threads), dnsperf $({ dnsperf -H 2>&1 || true; } | sed -n 's/^Version //p' | head -1), geo-router at $(cd "$root" && git rev-parse --short HEAD)$(cd "$root" && git diff --quiet HEAD -- crates || echo ' (+ uncommitted changes in crates/)'); $pinning. Query mix: $(cat "$state/queries.json")."
export CAP=$cap ROUNDS=$rounds DURATION=$duration CLIENTS=$clients OUTSTANDING=$outstanding \
    FIXED_QPS=$fixed_qps FIXED_DURATION=$fixed_duration
"$venv/bin/python" - "$state" "$today" "$machine" "$settings" "${wrk_cmd[*]}" "${phases[@]}" >"$state/run.json" <<'EOF'
import json, os, re, sys
env = os.environ
state, date, machine, settings, wrk_cmd, *phases = sys.argv[1:]
how = {
    "ecs-mix": "Saturation, per-query ECS mix: `dnsperf -B` (binary query file, one ECS option per query: every IPv4 /24 of the database with source /24, every IPv6 /40 as 4 source-/56 addresses asked A and AAAA), `-l {d} -c {c} -T 1 -q {q}`, {n} rounds alternating which server goes first.",
    "no-ecs": "Saturation, no ECS: `ws.<zone> A` with EDNS (`-e`), same settings and rounds. The client (127.0.0.1) is not in the database, so both answer their fallback order (us-east first).",
    "ecs-mix-capped": "The same ECS mix and dnsperf settings, each server limited to the same CPU quota (CFS bandwidth, {cap} core: {quota} µs per 10 ms period, cgroup cpu controller) so that the server, not the single-core dnsperf, is the bottleneck for both.",
    "ecs-fixed-rate": "Fixed offered rate with per-query latency (`-Q {r} -v`, {fd} s), same ECS mix: percentiles from dnsperf's per-query lines.",
}
titles = {"ecs-mix-capped": f"ECS mix, saturation, each server capped at {env.get('CAP', '0.5')} core", "ecs-mix": "ECS mix, saturation", "no-ecs": "No ECS, saturation", "ecs-fixed-rate": "ECS mix at a fixed rate: latency"}
import os
env = os.environ
fill = dict(cap=env.get("CAP", "0.5"), quota=int(float(env.get("CAP", "0.5")) * 10000), n=env.get("ROUNDS", "3"), d=env.get("DURATION", "15"), c=env.get("CLIENTS", "4"), q=env.get("OUTSTANDING", "200"), r=env.get("FIXED_QPS", "20000"), fd=env.get("FIXED_DURATION", "10"))
run = {"date": date, "machine": machine, "settings": settings, "phases": [], "agree": json.load(open(f"{state}/agree.json"))}
for entry in phases:
    p, count = entry.split(":")
    run["phases"].append({
        "name": p, "title": titles.get(p, p), "how": how.get(p, "").format(**fill),
        "rounds": [
            {s: json.load(open(f"{state}/dnsperf-{p}-{s}-r{i}.json")) for s in ("geo-router", "gdnsd")}
            for i in range(1, int(count) + 1)
        ],
    })
text = open(f"{state}/wrk.txt").read()
def grab(pattern):
    m = re.search(pattern, text, re.M)
    return m.group(1) if m else None
run["wrk"] = {
    "command": wrk_cmd.replace(re.search(r"http://[^/]+", wrk_cmd).group(0), "http://ROUTER"),
    "rps": grab(r"^Requests/sec:\s+([\d.]+)"),
    "p50": grab(r"^\s+50%\s+(\S+)"), "p90": grab(r"^\s+90%\s+(\S+)"), "p99": grab(r"^\s+99%\s+(\S+)"),
    "non2xx": grab(r"Non-2xx or 3xx responses:\s+(\d+)") or 0,
    "socket_errors": grab(r"Socket errors:\s+(.*)$") or "none",
}
json.dump(run, sys.stdout, indent=1)
EOF
result=$here/results-$today.md
"${py[@]}" summary --run "$state/run.json" | tee "$result"
cp "$state/run.json" "$here/results-$today.json"
echo >&2
log "wrote $result and ${result%.md}.json"
