#!/usr/bin/env bash
# Builds and tests the JavaScript SDK (clients/js): unit tests against the shared wire vectors,
# end-to-end tests against a real `meridian up --auto-ports` mesh, and the WebRTC demo in
# Debian's Chromium (playwright-core; no browser download). Needs the Rust binaries
# (`cargo build --bins`, done here when missing) and installs node/npm/chromium via apt when
# missing. Run from anywhere; scripts/test.sh calls it.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "clients/js/test.sh: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x ../../target/debug/meridian ] || (cd ../.. && cargo build --bins --locked)
npm ci --no-audit --no-fund --loglevel=error
npm run build
# The committed demo bundle must be what the source builds (examples/webrtc/meridian-client.js).
if command -v git >/dev/null 2>&1 && git rev-parse --git-dir >/dev/null 2>&1; then
  git diff --quiet -- ../../examples/webrtc/meridian-client.js ||
    { echo "examples/webrtc/meridian-client.js is stale: commit the rebuilt bundle" >&2; exit 1; }
fi
node --test --test-concurrency=1 test/unit.test.mjs test/mesh.test.mjs
# The browser test runs in a network namespace of its own: Chromium gathers no loopback ICE
# candidates, so the namespace gets one private address on a veth pair that leads nowhere, and
# the pages' peer-to-peer traffic (like the mesh's, on 127.0.0.1) never leaves it.
$SUDO env BROWSER_NETNS_ADDR=10.211.0.1 unshare --net sh -ec '
  ip link set lo up
  ip link add mr-br0 type veth peer name mr-br1
  ip addr add "$BROWSER_NETNS_ADDR/24" dev mr-br0
  ip link set mr-br0 up; ip link set mr-br1 up
  ip route add default via 10.211.0.2 dev mr-br0
  exec env BROWSER_NETNS_ADDR="$BROWSER_NETNS_ADDR" node --test --test-concurrency=1 test/browser.test.mjs'

