#!/usr/bin/env bash
# Build brine's cargo-fuzz targets (crates/proto/fuzz) and run each for SECONDS (default 10).
#
#   scripts/fuzz.sh            # CI: a short bounded run of every target
#   scripts/fuzz.sh 600        # ten minutes each
#   scripts/fuzz.sh 600 target # one target
#
# cargo-fuzz is installed if missing. The project's stable toolchain is used with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags) and no sanitizer: libFuzzer's coverage
# guidance and Rust's own checks (overflow, bounds, debug assertions) find the panics. A crash
# leaves its input in crates/proto/fuzz/artifacts/<target>/; turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-10}"
shift || true
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
  TARGETS=(envelope loads target crypticle lowstate)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
cd crates/proto/fuzz
cargo fuzz build --sanitizer none --debug-assertions 2>&1 | tail -3
for t in "${TARGETS[@]}"; do
  echo "=== fuzz $t (${SECONDS_EACH}s)"
  mkdir -p "corpus/$t"
  cargo fuzz run --sanitizer none --debug-assertions "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    2>&1 | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|thread|Done)|panicked|ERROR" || true
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $t crashed: $(ls artifacts/$t/crash-*)" >&2
    exit 1
  fi
done
