#!/usr/bin/env bash
# A fuzzing campaign: several targets at once, each in libFuzzer's fork mode
# with its share of the machine's cores, for SECONDS; see bench/fuzz.md.
#
#   tests/fuzz/campaign.sh BIN_DIR OUT SECONDS NAME:JOBS...
#
# BIN_DIR holds tests_fuzz_<NAME>_fuzz (a -DQS_FUZZ=ON build's binaries, or
# a device-pack of them with its env.sh sourced). Each target starts from its
# committed corpus plus OUT/../seed-<NAME>/ if that exists (a corpus an
# earlier run brought back). Writes, per target, OUT/<NAME>.log (libFuzzer's
# output), OUT/<NAME>.stats (executions, CPU seconds, cov, ft, corpus size),
# crash inputs as OUT/crashes/<NAME>-*, and the run's corpus merged into
# OUT/corpus/<NAME>/.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: campaign.sh BIN_DIR OUT SECONDS NAME:JOBS...}
out=${2:?}
seconds=${3:?}
shift 3
mkdir -p "$out/crashes" "$out/corpus"
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

run_one() {
  local name=$1 jobs=$2
  local work="$out/work-$name"
  mkdir -p "$work/corpus"
  cp "$here/corpus/$name/"* "$work/corpus/"
  if [[ -d "$out/../seed-$name" ]]; then
    cp "$out/../seed-$name/"* "$work/corpus/" 2>/dev/null
  fi
  local start end
  start=$(date +%s.%N)
  # `times` after the fuzzer: the CPU time of the fuzzer and every process
  # it started (fork mode's children), user and system.
  (
    "$bin/tests_fuzz_${name}_fuzz" -fork="$jobs" -max_total_time="$seconds" \
      -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 -timeout=25 \
      -rss_limit_mb=2560 -artifact_prefix="$out/crashes/$name-" \
      "$work/corpus" >"$out/$name.log" 2>&1
    echo "exit $?" >>"$out/$name.log"
    times >"$work/times"
  )
  end=$(date +%s.%N)
  # Merge what the run found into a minimal corpus (kept small enough to
  # bring back).
  mkdir -p "$out/corpus/$name"
  "$bin/tests_fuzz_${name}_fuzz" -merge=1 -timeout=25 -rss_limit_mb=2560 \
    "$out/corpus/$name" "$work/corpus" >"$work/merge.log" 2>&1
  local cpu
  cpu=$(awk 'NR==2 {
      split($1, u, "m"); split($2, s, "m");
      sub("s", "", u[2]); sub("s", "", s[2]);
      printf "%.0f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$work/times")
  local last
  last=$(grep -E '^#[0-9]+: cov:' "$out/$name.log" | tail -1)
  {
    echo "target $name"
    echo "jobs $jobs"
    echo "wall_s $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.0f", b - a}')"
    echo "cpu_s $cpu"
    echo "execs $(sed -nE 's/^#([0-9]+):.*/\1/p' <<<"$last")"
    echo "cov $(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")"
    echo "ft $(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")"
    echo "corp_fork $(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")"
    echo "oom_timeout_crash $(sed -nE 's/.* oom\/timeout\/crash: ([0-9/]+).*/\1/p' <<<"$last")"
    echo "merged_inputs $(ls "$out/corpus/$name" | wc -l)"
    echo "merged_bytes $(du -sb "$out/corpus/$name" | cut -f1)"
    echo "crash_files $(ls "$out/crashes" | grep -c "^$name-")"
  } >"$out/$name.stats"
  rm -rf "$work"
}

for spec in "$@"; do
  run_one "${spec%%:*}" "${spec##*:}" &
done
wait
cat "$out"/*.stats
