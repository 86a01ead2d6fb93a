#!/usr/bin/env bash
# The main job: the whole Meridian mesh on this machine (geo-router, and per region Redis,
# nodes behind HAProxy and a relay), from the dev catalogue in regions/. Installs what is
# missing (redis-server, haproxy), builds the release binaries, then runs `meridian up` with
# any arguments given (e.g. --wan, --auto-ports, --state-dir DIR). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
cargo build --release --bins --locked
exec target/release/meridian up "$@"
