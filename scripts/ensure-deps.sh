#!/usr/bin/env bash
# Installs what Meridian's scripts and tests need on a fresh Debian machine: redis-server (and
# redis-sentinel) for the regional state, haproxy for each region's load balancer in
# `meridian up`. Runs `apt-get update` once, only when something is missing.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ensure-deps: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's packages start a system redis on 6379 (and haproxy on its default config); Meridian
# never uses those.
command -v redis-server >/dev/null
command -v haproxy >/dev/null
