#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for N seconds each, one after the other,
# starting from the committed seed corpus. Fails when any target finds a crash, a failed
# assertion, a timeout or an out-of-memory; the input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]     (default: 30 s, every target)
#
# 0 seconds: build, then only replay the seed corpus once through each target (no fuzzing).
#
# Environment: FUZZ_SANITIZER (default none; `address` for ASan, a slower build),
# FUZZ_JOBS (parallel jobs per target, default 1). Installs cargo-fuzz when it is missing;
# runs on the stable toolchain through RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags).
# See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: seconds must be a whole number, got '$seconds'" >&2; exit 2 ;; esac
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
flags=(--sanitizer "${FUZZ_SANITIZER:-none}" --debug-assertions)
cd fuzz
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz.sh: built ${#targets[@]} targets in $(( $(date +%s) - start )) s" >&2
limit=(-max_total_time="$seconds")
if [ "$seconds" -eq 0 ]; then limit=(-runs=0); fi
extra=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then extra=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi
failed=()
for target in "${targets[@]}"; do
  # New inputs go to a scratch corpus under target/ (not committed); the seeds are read only.
  work="target/corpus/$target"
  mkdir -p "$work" "artifacts/$target" "corpus/$target"
  dict=()
  if [ -f "dict/$target.dict" ]; then dict=(-dict="dict/$target.dict"); fi
  echo "fuzz.sh: $target for ${seconds} s" >&2
  if ! cargo fuzz run "${flags[@]}" "$target" "$work" "corpus/$target" -- \
      "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 ${dict[@]+"${dict[@]}"} ${extra[@]+"${extra[@]}"} \
      >"target/$target.log" 2>&1; then
    tail -n 40 "target/$target.log" >&2
    failed+=("$target")
  else
    runs=$(awk '/^stat::number_of_executed_units/ {print $2}' "target/$target.log")
    echo "fuzz.sh: $target: ok, ${runs:-?} inputs" >&2
  fi
done
echo "fuzz.sh: done in $(( $(date +%s) - start )) s" >&2
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/; logs in fuzz/target/<target>.log)" >&2
  exit 1
fi
