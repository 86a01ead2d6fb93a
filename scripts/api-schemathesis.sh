#!/usr/bin/env bash
# Property-based test of the server API against its OpenAPI document (docs/server-api.md):
# starts a redis-server and a region-node (the debug binary: run `cargo build --bins` first)
# on loopback, then runs schemathesis against the node's API with a bounded number of examples
# per operation. It fails on any 5xx, any status the document does not list, and any response
# body outside the document's schema. schemathesis is installed into .venv-api/ (git-ignored)
# the first time. SCHEMATHESIS_EXAMPLES sets the examples per operation (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION="4.32.5"
VENV=".venv-api"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-30}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$ST_VERSION')" 2>/dev/null; then
  echo "api-schemathesis: installing schemathesis $ST_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$ST_VERSION"
fi
NODE_BIN="${CARGO_TARGET_DIR:-target}/debug/region-node"
[ -x "$NODE_BIN" ] || { echo "api-schemathesis: $NODE_BIN is missing; run cargo build --bins" >&2; exit 1; }

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS COMMAND...: polls COMMAND until it succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_for 10 redis-cli -p "$REDIS_PORT" ping >/dev/null || { echo "api-schemathesis: redis-server did not start" >&2; exit 1; }

KEY="schemathesis-key-0123456789abcdef"
cat >"$WORK/node.toml" <<TOML
region = "api-fuzz"
listen = "127.0.0.1:0"
token_secret = "schemathesis-token-secret-0123"
store = { kind = "redis", url = "redis://127.0.0.1:$REDIS_PORT/" }
[api]
listen = "127.0.0.1:0"
[[api.keys]]
name = "schemathesis"
secret = "$KEY"
scopes = ["admin"]
TOML
RUST_LOG=warn "$NODE_BIN" --config "$WORK/node.toml" >"$WORK/node.out" 2>"$WORK/node.err" &
PIDS+=($!)
wait_for 20 grep -q '^api listening on ' "$WORK/node.out" || { echo "api-schemathesis: region-node did not start" >&2; cat "$WORK/node.err" >&2; exit 1; }
API="$(sed -n 's/^api listening on //p' "$WORK/node.out")"

echo "api-schemathesis: $EXAMPLES examples per operation against http://$API" >&2
timeout 300 "$VENV/bin/schemathesis" run "http://$API/api/v1/openapi.json" \
  --header "Authorization: Bearer $KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$EXAMPLES" \
  --seed 17 \
  --workers 1 \
  --no-color
