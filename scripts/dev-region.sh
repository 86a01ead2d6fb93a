#!/usr/bin/env bash
# Brings up one Meridian region on this machine: a redis-server and two region-node processes
# (ports from regions/<region>.toml), prints how to connect, and runs until Ctrl-C, which stops
# everything (nodes drain first). Usage: scripts/dev-region.sh [region] [--smoke]
#   --smoke   start, check /healthz and /readyz of both nodes, stop (used to test this script)
set -euo pipefail
cd "$(dirname "$0")/.."
REGION="us-east"
SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -*) echo "unknown flag $arg" >&2; exit 2 ;;
    *) REGION="$arg" ;;
  esac
done
FILE="regions/$REGION.toml"
[ -f "$FILE" ] || { echo "no region file $FILE (see regions/)" >&2; exit 2; }
bash scripts/ensure-deps.sh
PROFILE="${DEV_PROFILE:-release}"
echo "building ($PROFILE)..." >&2
cargo build --quiet --profile "$PROFILE" --bins -p region-node -p meridian
BIN="target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")"

read -r REDIS_PORT NODE_PORTS < <(python3 - "$FILE" <<'PY'
import sys, tomllib
r = tomllib.load(open(sys.argv[1], "rb"))
print(r["local"]["redis_port"], ",".join(str(p) for p in r["local"]["node_ports"][:2]))
PY
)
IFS=, read -r -a PORTS <<< "$NODE_PORTS"
for p in "$REDIS_PORT" "${PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is already in use; stop what runs there (another dev region?)" >&2; exit 1
  fi
done

STATE="$(mktemp -d -t meridian-region-XXXXXX)"
SECRET="dev-secret-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  for pid in "${PIDS[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:1}"; do wait "$pid" 2>/dev/null || true; done
  [ "${#PIDS[@]}" -gt 0 ] && kill -TERM "${PIDS[0]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "stopped; logs are in $STATE" >&2
}
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$STATE" >"$STATE/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping >/dev/null

for i in "${!PORTS[@]}"; do
  MERIDIAN_REGION="$REGION" MERIDIAN_LISTEN="127.0.0.1:${PORTS[$i]}" MERIDIAN_TOKEN_SECRET="$SECRET" \
  MERIDIAN_STORE__KIND=redis MERIDIAN_STORE__URL="redis://127.0.0.1:$REDIS_PORT/" \
    "$BIN/region-node" >"$STATE/node-$((i + 1)).out" 2>"$STATE/node-$((i + 1)).log" &
  PIDS+=($!)
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$p/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$p/readyz" >/dev/null || { echo "node on $p is not ready; see $STATE" >&2; exit 1; }
done

ALICE="$("$BIN/meridian" token --user alice --secret "$SECRET")"
BOB="$("$BIN/meridian" token --user bob --secret "$SECRET")"
cat <<EOT

Region $REGION is up: redis-server on 127.0.0.1:$REDIS_PORT, nodes on ${PORTS[*]}.
  WebSocket:  ws://127.0.0.1:${PORTS[0]}/v1/ws   ws://127.0.0.1:${PORTS[1]}/v1/ws
  Health:     curl http://127.0.0.1:${PORTS[0]}/readyz     Metrics: curl http://127.0.0.1:${PORTS[0]}/metrics
  Logs:       $STATE

Two users on two nodes, one room (run each in its own terminal, type to publish):
  $BIN/meridian chat --url ws://127.0.0.1:${PORTS[0]}/v1/ws --room lobby --token $ALICE
  $BIN/meridian chat --url ws://127.0.0.1:${PORTS[1]}/v1/ws --room lobby --token $BOB

More tokens: $BIN/meridian token --user NAME --secret $SECRET
Ctrl-C stops the region.
EOT

if [ "$SMOKE" = 1 ]; then
  for p in "${PORTS[@]}"; do
    curl -fsS "http://127.0.0.1:$p/healthz" >/dev/null
    curl -fsS "http://127.0.0.1:$p/metrics" >"$STATE/metrics-$p.txt"
    grep -q meridian_node_connections "$STATE/metrics-$p.txt"
  done
  echo "smoke: ok"
  exit 0
fi
wait
