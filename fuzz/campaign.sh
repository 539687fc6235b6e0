#!/usr/bin/env bash
# A fuzzing campaign: every target for SECONDS (default 1800), JOBS at a time
# (default 2), each from a working copy of its committed corpus. At the end the
# working corpus is merged back into corpus/<target> (only inputs that add
# coverage are kept) and one line per target is printed: executions, coverage
# before and after, corpus files. Logs stay in $WORK/<target>.log.
#
#   fuzz/campaign.sh [SECONDS] [JOBS] [TARGET ...]
#
# Needs the nightly toolchain and `cargo install cargo-fuzz`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-1800}; jobs=${2:-2}; shift $(( $# > 2 ? 2 : $# )) || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd "$here/fuzz_targets" && ls *.rs | sed 's/\.rs$//')
fi
work=${WORK:-$here/target/campaign}
mkdir -p "$work"
(cd "$here" && cargo +nightly fuzz build -O >/dev/null)
bin=$here/target/x86_64-unknown-linux-gnu/release

run_one() {
  local t=$1
  rm -rf "$work/$t" && mkdir -p "$work/$t" "$work/$t.artifacts"
  cp "$here/corpus/$t/"* "$work/$t/" 2>/dev/null || true
  local extra=()
  # apply_parallel starts threads for every input; LeakSanitizer, checking
  # while libFuzzer runs, reports glibc's per-thread destructor list
  # (__cxa_thread_atexit_impl, 112 bytes) of threads already joined. The
  # same input run alone reports no leak; leak checking is off for it.
  if [ "$t" = apply_parallel ]; then extra=(-detect_leaks=0); fi
  nice -n 10 "$bin/$t" "$work/$t" -max_total_time="$secs" -rss_limit_mb=2048 \
    -timeout=30 -print_final_stats=1 -artifact_prefix="$work/$t.artifacts/" "${extra[@]}" \
    >"$work/$t.log" 2>&1 || echo "$t: fuzzer exited $? (see $work/$t.log)" >&2
}

running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

for t in "${targets[@]}"; do
  # merge: keep only the inputs that add coverage to the committed corpus
  "$bin/$t" -merge=1 "$here/corpus/$t" "$work/$t" >"$work/$t.merge.log" 2>&1 || true
  execs=$(grep -m1 'stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}')
  cov0=$(grep -m1 'INITED' "$work/$t.log" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  cov1=$(grep -E '^#[0-9]+' "$work/$t.log" | tail -1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  crashes=$(ls "$work/$t.artifacts" | wc -l)
  files=$(ls "$here/corpus/$t" | wc -l)
  echo "$t execs=${execs:-?} cov_start=${cov0:-?} cov_end=${cov1:-?} corpus_files=$files artifacts=$crashes"
done
