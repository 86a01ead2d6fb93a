#!/usr/bin/env bash
# Runs every check and test: format, lints, unit tests, the store conformance suite against a
# real redis-server, and the end-to-end tests that start redis-server and region-node processes.
# `scripts/test.sh --rust-only` (or MERIDIAN_TEST_ONLY=rust) skips the infrastructure checks
# (terraform, Prometheus rules, systemd units: they install checkov, python-hcl2 and promtool),
# the server API's schemathesis run, the JavaScript and browser tests and the fuzzers while
# developing; CI (`.ci/run`) runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
only="${MERIDIAN_TEST_ONLY:-all}"
for arg in "$@"; do
  case "$arg" in
    --rust-only) only=rust ;;
    *) echo "test.sh: unknown argument $arg (use --rust-only, or no argument for everything)" >&2; exit 2 ;;
  esac
done
case "$only" in
  all|rust) ;;
  *) echo "test.sh: MERIDIAN_TEST_ONLY must be rust (or unset)" >&2; exit 2 ;;
esac
bash scripts/ensure-deps.sh
# Incremental compilation caches are more than half of target/ for this run (2.0 of 3.4 GB
# after the test build) and a run from a clean clone gains nothing from them: CI's disk
# filled up with them. Set CARGO_INCREMENTAL=1 to keep them while iterating.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The reconnect-storm test (tests/tests/ha.rs) holds ~10,000 loopback sockets.
# Only the soft limit: lowering the hard one too would stop children that raise their own
# (HAProxy in `meridian up` asks for ~2 x maxconn descriptors).
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt 16384 ]; then
  ulimit -Sn 16384 2>/dev/null || echo "test.sh: cannot raise ulimit -n to 16384; the storm test will say so" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Dependency licences, bans and sources (deny.toml).
bash scripts/deny.sh
# Terraform, alert rules, dashboard and systemd units (installs promtool, python-hcl2, checkov).
if [ "$only" = all ]; then
  bash scripts/check-infra.sh
else
  echo "test.sh: skipping the infrastructure checks (--rust-only)" >&2
fi
# The end-to-end tests start the binaries, so build them first.
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  # No doc tests exist (examples live in docs/ and tests/), so nextest covers everything.
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 2
else
  cargo test --workspace --locked --no-fail-fast -- --test-threads 2
fi
if [ "$only" = all ]; then
  # The server API against its OpenAPI document with schemathesis (installs it into .venv-api/).
  bash scripts/api-schemathesis.sh
  # The JavaScript SDK: unit, end-to-end on `meridian up`, and the WebRTC demo in Chromium.
  bash clients/js/test.sh
  # A short run of every fuzz target (docs/fuzzing.md; FUZZ_SECONDS per target, 0 replays the
  # committed corpus only).
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
else
  echo "test.sh: skipping the JavaScript, browser and fuzz tests (--rust-only)" >&2
fi
