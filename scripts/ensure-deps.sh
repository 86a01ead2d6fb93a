#!/usr/bin/env bash
# Installs what Meridian's scripts and tests need on a fresh Debian machine: redis-server.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-deps: installing redis-server" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
# Debian's package starts a system redis on 6379; Meridian never uses that port.
command -v redis-server >/dev/null
