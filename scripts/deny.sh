#!/usr/bin/env bash
# Licence, ban and source policy of the dependency graph (deny.toml). No network or advisory
# database is needed for these three checks; installs cargo-deny when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version >/dev/null 2>&1; then
  cargo install cargo-deny --locked
fi
cargo deny --locked check --hide-inclusion-graph licenses bans sources
