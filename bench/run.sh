#!/usr/bin/env bash
# Meridian side by side with the stacks people would otherwise pick (issue 8), one run, one
# machine, loopback only. Not a test; run on demand:
#
#   bash bench/run.sh                      # every scenario: fanout pairs idle joinstorm route
#   bash bench/run.sh fanout joinstorm     # some of them
#   QUICK=1 bash bench/run.sh              # tiny sizes: checks the harness in about a minute
#
# Topology per scenario, started fresh for each system and stopped after it:
#   meridian: 1 redis-server + 2 release-built region-node processes
#   socketio: 1 redis-server + 2 `node bench/socketio/server.js` (Socket.IO 4 + redis-adapter)
#   route:    geo-router (/v1/route, /v1/connect) and nginx with the geoip2 module (a geo
#             redirect from the same demo GeoIP database)
# The same load generator (target/release/meridian-loadgen) drives both systems.
#
# Fair CPU: every server process (Redis included) is pinned with taskset to SERVER_CPUS and the
# load generator to LOAD_CPUS, identically for both systems, and the load generator reads each
# server's CPU seconds from /proc/PID/stat for every measured window, so rates can be compared
# per server CPU-second as well as per wall-clock second.
#
# Writes bench/results-<date>.md (summary) and bench/results-<date>.json (every report).
# Knobs (environment):
#   SERVER_CPUS=0 LOAD_CPUS=1 PIN=1   taskset CPU lists; PIN=0 turns pinning off
#   NICE=-10                          niceness of every benchmark process (shared machine)
#   FANOUT_MEMBERS=1000 FANOUT_RATE=20 FANOUT_SECONDS=10 FANOUT_STEP_SECONDS=4
#   PAIRS=5000 PAIRS_INTERVAL_MS=10000 PAIRS_SECONDS=10
#   IDLE_CONNECTIONS=50000 IDLE_HOLD_SECONDS=15 IDLE_SERVERS, IDLE_PROCESSES (default: enough
#                                     for the hard open-files limit less 2,000 per process)
#   STORM_CLIENTS=10000 STORM_ROOM_SIZE=10 STORM_CONCURRENCY=1000
#   ROUTE_SECONDS=10 ROUTE_CONNECTIONS=32 ROUTE_ROUNDS=3 (alternating order; median verdict)
#   SYSTEMS="meridian socketio"       which systems to run
#   KEEP_STATE=1                      keep the temp directory (configs, logs, raw reports)
#   REGION_NODE_BIN=PATH              run another region-node build (e.g. a proposed fix)
#   RESULTS=NAME                      write bench/NAME.md/.json instead of results-<date>
#
# Idempotent: installs only what is missing (redis-server, nodejs/npm, nginx-light +
# libnginx-mod-http-geoip2, wrk from Debian after one `apt-get update`; npm packages into
# bench/socketio/node_modules), builds release, uses a fresh temp directory and ephemeral
# loopback ports, and stops every process it started.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
today=$(date -u +%F)
quick=${QUICK:-0}
pin=${PIN:-1}
server_cpus=${SERVER_CPUS:-0}
load_cpus=${LOAD_CPUS:-1}
niceness=${NICE:--10}
systems=${SYSTEMS:-meridian socketio}
secret=bench-secret-0123456789
if [[ $quick == 1 ]]; then
    : "${FANOUT_MEMBERS:=50}" "${FANOUT_RATE:=20}" "${FANOUT_SECONDS:=2}" "${FANOUT_STEP_SECONDS:=1}"
    : "${FANOUT_MAX_STEPS:=3}" "${PAIRS:=50}" "${PAIRS_SECONDS:=2}" "${PAIRS_CLOSED_SECONDS:=2}"
    : "${IDLE_CONNECTIONS:=500}" "${IDLE_HOLD_SECONDS:=1}" "${STORM_CLIENTS:=300}"
    : "${ROUTE_SECONDS:=2}" "${ROUTE_ROUNDS:=1}"
fi
fanout_members=${FANOUT_MEMBERS:-1000}
fanout_rate=${FANOUT_RATE:-20}
fanout_seconds=${FANOUT_SECONDS:-10}
fanout_step_seconds=${FANOUT_STEP_SECONDS:-4}
fanout_max_steps=${FANOUT_MAX_STEPS:-14}
pairs=${PAIRS:-5000}
pairs_interval_ms=${PAIRS_INTERVAL_MS:-10000}
pairs_seconds=${PAIRS_SECONDS:-10}
pairs_closed_seconds=${PAIRS_CLOSED_SECONDS:-10}
idle_connections=${IDLE_CONNECTIONS:-50000}
idle_hold=${IDLE_HOLD_SECONDS:-15}
# A process here may not hold more than 20,000 descriptors (hard RLIMIT_NOFILE, and no
# CAP_SYS_RESOURCE to raise it): 50,000 connections need 3 server processes and 3 load
# generator processes (up to 2,000 descriptors of each are left for everything else). Smaller
# runs keep the usual 2 servers.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
nofile_hard=$(ulimit -Hn)
[[ $nofile_hard == unlimited ]] && nofile_hard=1048576
per_process=$((nofile_hard > 4000 ? nofile_hard - 2000 : nofile_hard / 2))
idle_servers=${IDLE_SERVERS:-$(((idle_connections + per_process - 1) / per_process))}
((idle_servers >= 2)) || idle_servers=2
idle_processes=${IDLE_PROCESSES:-$(((idle_connections + per_process - 1) / per_process))}
storm_clients=${STORM_CLIENTS:-10000}
storm_room_size=${STORM_ROOM_SIZE:-10}
storm_concurrency=${STORM_CONCURRENCY:-1000}
route_seconds=${ROUTE_SECONDS:-10}
route_connections=${ROUTE_CONNECTIONS:-32}
route_rounds=${ROUTE_ROUNDS:-3}
scenarios=("$@")
((${#scenarios[@]})) || scenarios=(fanout pairs idle joinstorm route)
for s in "${scenarios[@]}"; do
    case $s in fanout | pairs | idle | joinstorm | route) ;; *)
        echo "run.sh: unknown scenario '$s' (fanout pairs idle joinstorm route)" >&2
        exit 2
        ;;
    esac
done

log() { printf '== %s\n' "$*" >&2; }

# --- 0. tools ------------------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
[[ -e /usr/lib/nginx/modules/ngx_http_geoip2_module.so ]] || missing+=(libnginx-mod-http-geoip2)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian starts nginx on install; the benchmark runs its own instance.
    if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl stop nginx 2>/dev/null || true
    fi
fi
if ! (cd "$here/socketio" && node -e 'require("socket.io"); require("@socket.io/redis-adapter"); require("redis")') >/dev/null 2>&1; then
    log "npm ci in bench/socketio"
    (cd "$here/socketio" && npm ci --no-audit --no-fund --loglevel=error)
fi

# --- 1. build ------------------------------------------------------------------------------------
log "building region-node, geo-router, meridian-loadgen (release)"
(cd "$root" && cargo build --release -p region-node -p geo-router -p loadgen --bins)
bin=${CARGO_TARGET_DIR:-$root/target}/release
# An experiment's region-node build instead of this tree's (before/after of a proposed fix).
region_node_bin=${REGION_NODE_BIN:-$bin/region-node}

if [[ $pin == 1 ]]; then
    on_server=(nice -n "$niceness" taskset -c "$server_cpus")
    on_load=(nice -n "$niceness" taskset -c "$load_cpus")
else
    on_server=(nice -n "$niceness")
    on_load=(nice -n "$niceness")
fi

state=$(mktemp -d /tmp/meridian-bench.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP_STATE:-0} == 1 ]]; then
        echo "state kept in $state" >&2
    else
        rm -rf "$state"
    fi
}
trap cleanup EXIT

source "$root/bench/lib.sh" # free_port, wait_for

listening_addr() { # listening_addr FILE: the ADDR of the first "listening on ADDR" line
    sed -n 's/^listening on //p' "$1" | head -1
}

# Every process of the system under test: "label=pid" words for --pid, and their pids.
sys_pids=()
sys_labels=()
sys_servers=()

start_redis() { # start_redis DIR: sets redis_url
    local dir=$1 port
    port=$(free_port)
    mkdir -p "$dir"
    "${on_server[@]}" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$dir" --maxclients 50000 >"$dir/redis.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    sys_pids+=("$pid")
    sys_labels+=("redis=$pid")
    wait_for 10 "redis-server on $port" redis-cli -p "$port" ping
    redis_url=redis://127.0.0.1:$port/
}

start_system() { # start_system meridian|socketio TAG [SERVERS]
    local system=$1 tag=$2 dir=$state/$2 count=${3:-2} i pid out
    sys_pids=()
    sys_labels=()
    sys_servers=()
    mkdir -p "$dir"
    start_redis "$dir/redis"
    for ((i = 1; i <= count; i++)); do
        out=$dir/node$i.out
        if [[ $system == meridian ]]; then
            cat >"$dir/node$i.toml" <<EOF
region = "bench"
listen = "127.0.0.1:0"
token_secret = "$secret"
store = { kind = "redis", url = "$redis_url" }

# The load generator, not a per-connection limit, sets the pace (Socket.IO has none).
[limits]
requests_per_second = 1000000.0
request_burst = 1000000.0
send_queue = 8192
max_members_per_room = 0
user_publishes_per_second = 0
dm_sent_per_second = 0
dm_sent_bytes_per_second = 0
dm_received_per_second = 0
dm_received_bytes_per_second = 0
EOF
            RUST_LOG=warn "${on_server[@]}" "$region_node_bin" --config "$dir/node$i.toml" \
                >"$out" 2>"$dir/node$i.err" &
        else
            PORT=0 HOST=127.0.0.1 REDIS_URL=$redis_url TOKEN_SECRET=$secret \
                "${on_server[@]}" node "$here/socketio/server.js" >"$out" 2>"$dir/node$i.err" &
        fi
        pid=$!
        pids+=("$pid")
        sys_pids+=("$pid")
        sys_labels+=("node$i=$pid")
        wait_for 30 "$system server $i" grep -q '^listening on' "$out" || {
            cat "$dir/node$i.err" >&2
            exit 1
        }
        sys_servers+=("$(listening_addr "$out")")
    done
    log "$system: redis $redis_url, servers ${sys_servers[*]} (pids ${sys_pids[*]})"
}

stop_system() {
    local pid
    for pid in "${sys_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${sys_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    sys_pids=()
}

joined_by() { local IFS=$1; shift; echo "$*"; }

loadgen() { # loadgen OUT.json SCENARIO ARGS...: runs the load generator on LOAD_CPUS
    local out=$1
    shift
    log "meridian-loadgen $*"
    "${on_load[@]}" "$bin/meridian-loadgen" "$@" --json "$out" --label "${LABEL:-$today}" \
        2> >(tee "${out%.json}.log" >&2)
}

load_before() { cut -d' ' -f1-3 /proc/loadavg; }
reports=()
run_ws_scenario() { # run_ws_scenario SCENARIO SYSTEM ARGS... (env SERVERS: processes, default 2)
    local scenario=$1 system=$2 out
    shift 2
    start_system "$system" "$scenario-$system" "${SERVERS:-2}"
    out=$state/$scenario-$system.json
    local load0
    load0=$(load_before)
    loadgen "$out" "$scenario" --system "$system" --server "$(joined_by , "${sys_servers[@]}")" \
        --pid "$(joined_by , "${sys_labels[@]}")" --secret "$secret" "$@"
    echo "$scenario $system $load0 $(load_before)" >>"$state/loadavg.txt"
    stop_system
    reports+=("$out")
}

# The fan-out latency floor of this machine: `floor-serve` (one write(2) per subscriber per
# publish, nothing else) on the server CPUs, the fan-out load over plain TCP, same members,
# rate and seconds as the fixed phase.
run_floor() {
    local out=$state/floor.json dir=$state/floor pid
    mkdir -p "$dir"
    "${on_server[@]}" "$bin/meridian-loadgen" floor-serve >"$dir/serve.out" 2>"$dir/serve.err" &
    pid=$!
    pids+=("$pid")
    wait_for 10 "floor-serve" grep -q '^listening on' "$dir/serve.out"
    loadgen "$out" floor --server "$(listening_addr "$dir/serve.out")" --pid "floor=$pid" \
        --members "$fanout_members" --rate "$fanout_rate" --seconds "$fanout_seconds"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    reports+=("$out")
}

order() { # alternate which system goes first from one scenario to the next
    if (($1 % 2)); then
        echo "$systems" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }'
    else
        echo "$systems"
    fi
}

# --- 2. scenarios --------------------------------------------------------------------------------
n=0
for scenario in "${scenarios[@]}"; do
    n=$((n + 1))
    case $scenario in
    fanout)
        for system in $(order $n); do
            run_ws_scenario fanout "$system" --members "$fanout_members" --rate "$fanout_rate" \
                --seconds "$fanout_seconds" --step-seconds "$fanout_step_seconds" \
                --max-steps "$fanout_max_steps"
        done
        run_floor
        ;;
    pairs)
        for system in $(order $n); do
            run_ws_scenario pairs "$system" --pairs "$pairs" --interval-ms "$pairs_interval_ms" \
                --seconds "$pairs_seconds" --closed-seconds "$pairs_closed_seconds"
        done
        ;;
    idle)
        for system in $(order $n); do
            SERVERS=$idle_servers run_ws_scenario idle "$system" --connections "$idle_connections" \
                --hold-seconds "$idle_hold" --sources 127.0.0.2-127.0.0.33 \
                --processes "$idle_processes"
        done
        ;;
    joinstorm)
        for system in $(order $n); do
            run_ws_scenario joinstorm "$system" --clients "$storm_clients" \
                --room-size "$storm_room_size" --concurrency "$storm_concurrency" \
                --sources 127.0.0.34-127.0.0.49
        done
        ;;
    route)
        dir=$state/route
        mkdir -p "$dir/regions"
        "$bin/geo-router" demo-geoip --out "$dir/demo.mmdb" >/dev/null
        nginx_port=$(free_port)
        health_port=$(free_port)
        # nginx: the geo redirect as one would write it with the geoip2 module: the client's
        # continent from the same database, a map to the region's WebSocket URL, a 307.
        ws_of() { sed -n 's/^ws_url = "\(.*\)"$/\1/p' "$root/regions/$1.toml"; }
        cat >"$dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_http_geoip2_module.so;
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $dir/nginx-tmp;
    proxy_temp_path $dir/nginx-tmp;
    fastcgi_temp_path $dir/nginx-tmp;
    uwsgi_temp_path $dir/nginx-tmp;
    scgi_temp_path $dir/nginx-tmp;
    geoip2 $dir/demo.mmdb {
        \$geo_continent source=\$arg_ip continent code;
        \$geo_country source=\$arg_ip country iso_code;
    }
    map \$geo_continent \$region {
        EU eu-central;
        AF eu-central;
        AS ap-southeast;
        OC ap-southeast;
        default us-east;
    }
    map \$region \$region_ws {
        eu-central "$(ws_of eu-central)";
        ap-southeast "$(ws_of ap-southeast)";
        default "$(ws_of us-east)";
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location = /v1/connect { return 307 \$region_ws; }
        location = /v1/route {
            default_type application/json;
            return 200 '{"regions":[{"name":"\$region","ws_url":"\$region_ws"}],"country":"\$geo_country"}';
        }
    }
    # The geo-router's health probes (every region healthy), apart from the measured port.
    server {
        listen 127.0.0.1:$health_port;
        location = /readyz { return 200 "ready\n"; }
    }
}
EOF
        mkdir -p "$dir/nginx-tmp"
        nginx -t -c "$dir/nginx.conf" -p "$dir" >"$dir/nginx-t.log" 2>&1 || {
            cat "$dir/nginx-t.log" >&2
            exit 1
        }
        "${on_server[@]}" nginx -c "$dir/nginx.conf" -p "$dir" >"$dir/nginx.out" 2>&1 &
        nginx_pid=$!
        pids+=("$nginx_pid")
        wait_for 10 nginx curl -fsS "http://127.0.0.1:$health_port/readyz"
        nginx_workers=$(pgrep -P "$nginx_pid" | tr '\n' ' ')
        nginx_labels="nginx=$nginx_pid"
        for w in $nginx_workers; do nginx_labels="$nginx_labels,nginx-worker=$w"; done
        for f in "$root"/regions/*.toml; do
            sed "s|^health_url = .*|health_url = \"http://127.0.0.1:$health_port/readyz\"|" "$f" \
                >"$dir/regions/$(basename "$f")"
        done
        cat >"$dir/router.toml" <<EOF
regions = "$dir/regions"
geoip = "$dir/demo.mmdb"
zone = "mesh.localhost."
dns_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
ttl = 30
instance = "bench"
allow_debug_ip = true

[policy]
default_region = "us-east"

# One load generator is one source: per-network DNS limits would measure themselves.
[dns_limits]
rate_per_s = 0
tcp_per_network = 256
EOF
        "${on_server[@]}" "$bin/geo-router" --config "$dir/router.toml" >"$dir/router.out" 2>"$dir/router.err" &
        router_pid=$!
        pids+=("$router_pid")
        wait_for 20 "geo-router" grep -q '^http listening on' "$dir/router.out" || {
            cat "$dir/router.err" >&2
            exit 1
        }
        router_http=$(sed -n 's/^http listening on //p' "$dir/router.out")
        regions_up() {
            curl -fsS "http://$router_http/v1/regions" | python3 -c '
import json, sys
d = json.load(sys.stdin); r = d.get("regions", d) if isinstance(d, dict) else d
sys.exit(0 if r and all(x["health"] == "up" for x in r) else 1)'
        }
        wait_for 30 "every region up in geo-router" regions_up
        curl -fsS "http://$router_http/v1/route?ip=81.20.3.1" >"$dir/router-sample.json"
        curl -fsS "http://127.0.0.1:$nginx_port/v1/route?ip=81.20.3.1" >"$dir/nginx-sample.json"
        log "geo-router http $router_http (pid $router_pid), nginx 127.0.0.1:$nginx_port (pids $nginx_pid $nginx_workers)"
        route_args=(--connections "$route_connections" --seconds "$route_seconds")
        # Rounds, alternating which server goes first: on a shared machine one short run of each
        # can differ by 15 % either way; the verdict is the median round's ratio.
        for ((round = 1; round <= route_rounds; round++)); do
            if ((round % 2)); then
                targets=(router-route nginx-connect router-connect nginx-route)
            else
                targets=(nginx-connect router-route nginx-route router-connect)
            fi
            for target in "${targets[@]}"; do
                case $target in
                router-route) args=(--name geo-router --server "$router_http" --path '/v1/route?ip={ip}' --pid "geo-router=$router_pid") ;;
                router-connect) args=(--name geo-router --server "$router_http" --path '/v1/connect?ip={ip}' --pid "geo-router=$router_pid") ;;
                nginx-connect) args=(--name nginx --server "127.0.0.1:$nginx_port" --path '/v1/connect?ip={ip}' --pid "$nginx_labels") ;;
                nginx-route) args=(--name nginx --server "127.0.0.1:$nginx_port" --path '/v1/route?ip={ip}' --pid "$nginx_labels") ;;
                esac
                out=$state/route-$target-$round.json
                load0=$(load_before)
                LABEL="$today round $round" loadgen "$out" route "${args[@]}" "${route_args[@]}"
                echo "route $target round $round $load0 $(load_before)" >>"$state/loadavg.txt"
                reports+=("$out")
            done
        done
        # wrk (one thread, one address) as a cross-check of the load generator.
        for target in "http://$router_http/v1/route?ip=81.20.3.1" "http://127.0.0.1:$nginx_port/v1/connect?ip=81.20.3.1"; do
            log "wrk -t1 -c$route_connections -d${route_seconds}s --latency $target"
            "${on_load[@]}" wrk -t1 "-c$route_connections" "-d${route_seconds}s" --latency "$target" \
                >>"$state/wrk.txt" 2>&1 || true
            echo "---- $target" >>"$state/wrk.txt"
        done
        kill "$router_pid" "$nginx_pid" 2>/dev/null || true
        wait "$router_pid" "$nginx_pid" 2>/dev/null || true
        ;;
    esac
done

# --- 3. summary ----------------------------------------------------------------------------------
machine="$(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(uname -sr)"
versions="redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), node $(node --version), socket.io $(cd "$here/socketio" && node -p 'require("socket.io/package.json").version'), @socket.io/redis-adapter $(cd "$here/socketio" && node -p 'require("@socket.io/redis-adapter/package.json").version'), $(nginx -v 2>&1 | sed 's/^nginx version: //'), meridian at $(cd "$root" && git rev-parse --short HEAD)$(cd "$root" && git diff --quiet HEAD -- crates || echo ' (+ uncommitted changes in crates/)')${REGION_NODE_BIN:+, region-node binary $REGION_NODE_BIN}"
if [[ $pin == 1 ]]; then
    pinning="servers (Redis included) on CPU $server_cpus, load generator on CPU $load_cpus (taskset), nice $niceness"
else
    pinning="no pinning, nice $niceness"
fi
touch "$state/wrk.txt" "$state/loadavg.txt"
# A QUICK run checks the harness; it never replaces a real run's results.
if [[ $quick == 1 ]]; then result=$state/results-quick; else result=$here/${RESULTS:-results-$today}; fi
command_line="bash bench/run.sh${*:+ $*}"
[[ $quick == 1 ]] && command_line="QUICK=1 $command_line"
python3 "$here/summary.py" --date "$today" --machine "$machine" --versions "$versions" \
    --pinning "$pinning" --command "$command_line" \
    --loadavg "$state/loadavg.txt" --wrk "$state/wrk.txt" --out-json "$result.json" \
    "${reports[@]}" | tee "$result.md"
log "wrote $result.md and $result.json"
