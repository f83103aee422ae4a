#!/usr/bin/env bash
# Runs every fuzz target of a -DQS_FUZZ=ON build for SECONDS each, on a copy
# of its committed corpus (tests/fuzz/corpus/<name>; what the run finds is not
# added to it), and prints one line a target:
#   fuzz <name>: <executions> execs in <seconds> s, <cov> cov, <ft> ft: <result>
# ending with "fuzz: N passed, N failed". Fails when any target crashes,
# leaks, trips a sanitizer or a harness check, or times out.
#
#   tests/fuzz/run_fuzzers.sh BUILD_DIR SECONDS [JOBS] [NAME...]
#
# JOBS > 1 runs each target in libFuzzer's fork mode with JOBS processes.
# Crash inputs and logs go to $QS_FUZZ_OUT (default: a temporary folder,
# kept and named when something fails).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run_fuzzers.sh BUILD_DIR SECONDS [JOBS] [NAME...]}
seconds=${2:?usage: run_fuzzers.sh BUILD_DIR SECONDS [JOBS] [NAME...]}
jobs=${3:-1}
shift $(($# < 3 ? $# : 3))
names=("$@")
if ((${#names[@]} == 0)); then
  names=(safetensors safetensors_index gguf model_config tokenizer_json
    tokenizer_model recipe)
fi
out=${QS_FUZZ_OUT:-$(mktemp -d /tmp/qs-fuzz-run.XXXXXX)}
mkdir -p "$out"
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

passed=0
failed=0
for name in "${names[@]}"; do
  bin="$build/tests/fuzz/tests_fuzz_${name}_fuzz"
  log="$out/$name.log"
  if [[ ! -x $bin ]]; then
    echo "fuzz $name: no binary at $bin: FAILED"
    failed=$((failed + 1))
    continue
  fi
  corpus="$out/corpus-$name"
  rm -rf "$corpus"
  mkdir -p "$corpus" "$out/crashes"
  cp "$here/corpus/$name/"* "$corpus/"
  args=(-max_total_time="$seconds" -timeout=25 -rss_limit_mb=2560
    -artifact_prefix="$out/crashes/$name-" -print_final_stats=1)
  if ((jobs > 1)); then
    args+=(-fork="$jobs" -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
  fi
  start=$(date +%s)
  "$bin" "${args[@]}" "$corpus" >"$log" 2>&1
  rc=$?
  elapsed=$(($(date +%s) - start))
  # Executions: the final stats line (one process) or the last status line
  # (fork mode, where "#N" counts the children's executions).
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' \
    "$log" | tail -1)
  [[ -n $execs ]] || execs=$(sed -nE 's/^#([0-9]+)[: ].*/\1/p' "$log" | tail -1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' "$log" | tail -1)
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' "$log" | tail -1)
  crashes=$(find "$out/crashes" -name "$name-*" -newer "$corpus" | wc -l)
  if ((rc == 0 && crashes == 0)); then
    result=ok
    passed=$((passed + 1))
  else
    result="FAILED (exit $rc, $crashes crash inputs; log $log)"
    failed=$((failed + 1))
    grep -E 'ERROR: |runtime error|SUMMARY|fuzz property violated' "$log" |
      head -5 | sed 's/^/  /'
  fi
  echo "fuzz $name: ${execs:-0} execs in $elapsed s, ${cov:-?} cov," \
    "${ft:-?} ft: $result"
done
echo "fuzz: $passed passed, $failed failed"
if ((failed)); then
  echo "fuzz: logs and crash inputs in $out"
  exit 1
fi
[[ -n ${QS_FUZZ_OUT:-} ]] || rm -rf "$out"
exit 0
