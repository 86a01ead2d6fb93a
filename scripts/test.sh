#!/usr/bin/env bash
# Runs every check and test: format, lints, unit tests, the store conformance suite against a
# real redis-server, and the end-to-end tests that start redis-server and region-node processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-deps.sh
# The reconnect-storm test (tests/tests/ha.rs) holds ~10,000 loopback sockets.
# Only the soft limit: lowering the hard one too would stop children that raise their own
# (HAProxy in `meridian up` asks for ~2 x maxconn descriptors).
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt 16384 ]; then
  ulimit -Sn 16384 2>/dev/null || echo "test.sh: cannot raise ulimit -n to 16384; the storm test will say so" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Terraform, alert rules, dashboard and systemd units (installs promtool, python-hcl2, checkov).
bash scripts/check-infra.sh
# The end-to-end tests start the binaries, so build them first.
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  # No doc tests exist (examples live in docs/ and tests/), so nextest covers everything.
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 2
else
  cargo test --workspace --locked --no-fail-fast -- --test-threads 2
fi
# Dependency licences/bans/sources (deny.toml), then every fuzz target for a short run (docs/fuzzing.md).
bash scripts/deny.sh
bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
