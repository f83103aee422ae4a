#!/usr/bin/env bash
# The k-quant mixes against llama.cpp's own quantizer, in one run.
#
# usage: llamacpp_kquant_test.sh QUANTCTL NODE_MODULES SHARED_DATA TOOLS_DIR
#
# Builds llama-quantize and llama-perplexity from the llama.cpp source in
# node-llama-cpp (tests/llamacpp/build_llama_tools.sh, cached in TOOLS_DIR),
# then for Q4_K_M, Q3_K_M, Q2_K, Q5_K_M and Q6_K:
#   - converts ../shared/data/llama-29m-books with quantctl;
#   - makes the same mix with llama-quantize from an F16 GGUF (quantctl's
#     F16 conversion: llama.cpp's convert_hf_to_gguf.py needs PyTorch, which
#     the machine does not have; the F16 file's perplexity matches the
#     reference, see llamacpp_conformance_test.sh);
#   - checks that both files have the same tensors with the same types and
#     sizes within 1%, that llama.cpp (node-llama-cpp) loads ours, reports
#     the mix's file type and generates text, and that llama-perplexity -c 512
#     on heldout_books.txt gives ours at most 1.01x llama-quantize's.
# Prints a table. Exit status: 0 pass, 1 failure, 77 skipped (node-llama-cpp,
# a toolchain or the data absent). About 3 minutes on 2 cores once the tools
# are built (6 more minutes the first time). QS_KEEP_TMP=1 keeps the work
# folder.
set -euo pipefail

quantctl=$1
node_modules=$2
shared_data=$3
tools_dir=$4
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
model=$shared_data/llama-29m-books
text=$shared_data/text/heldout_books.txt
mixes=(Q4_K_M Q3_K_M Q2_K Q5_K_M Q6_K)

skip() {
  echo "SKIP: $*"
  exit 77
}
command -v node >/dev/null || skip "node is not installed"
[[ -d $node_modules/node-llama-cpp ]] ||
  skip "node-llama-cpp is not in $node_modules (scripts/install_deps.sh installs it)"
[[ -f $model/config.json && -f $text ]] ||
  skip "the shared test data ($model, $text) is absent"
[[ -x $quantctl ]] || { echo "FAIL: no quantctl at $quantctl"; exit 1; }
set +e
bin=$(bash "$here/llamacpp/build_llama_tools.sh" "$node_modules" "$tools_dir" | tail -1)
status=${PIPESTATUS[0]}
set -e
[[ $status == 77 ]] && skip "llama.cpp tools cannot be built here"
[[ $status == 0 ]] || { echo "FAIL: building llama.cpp's tools"; exit 1; }

work=$(mktemp -d)
cleanup() {
  if [[ ${QS_KEEP_TMP:-0} == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
export QS_NODE_MODULES=$node_modules

perplexity() {  # FILE.gguf -> the perplexity, or a failure with the log.
  # llama-perplexity sometimes exits (status 0) with its last log lines lost
  # (llama.cpp logs from a background thread): the estimate is then missing.
  # One retry; each miss is reported.
  local log=$1.perplexity.log value status
  for attempt in 1 2; do
    status=0
    "$bin/llama-perplexity" -m "$1" -f "$text" -c 512 -t "$(nproc)" >"$log" 2>&1 || status=$?
    value=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$log")
    [[ -n $value ]] && { echo "$value"; return 0; }
    echo "llama-perplexity on $1 (attempt $attempt) exited with status $status and no estimate" >&2
  done
  tail -5 "$log" >&2
  echo "FAIL: llama-perplexity gave no estimate for $1" >&2
  return 1
}

"$quantctl" convert --model "$model" --out "$work/f16.gguf" --type F16 2>/dev/null
for mix in "${mixes[@]}"; do
  echo "=== $mix"
  ours=$work/ours-$mix.gguf
  theirs=$work/llama-$mix.gguf
  "$quantctl" convert --model "$model" --out "$ours" --type "$mix" 2>/dev/null
  "$bin/llama-quantize" "$work/f16.gguf" "$theirs" "$mix" "$(nproc)" \
    >"$work/quantize-$mix.log" 2>&1 ||
    { tail -5 "$work/quantize-$mix.log"; echo "FAIL: llama-quantize $mix"; exit 1; }
  # Same tensors, same types.
  "$quantctl" inspect "$ours" | grep -E ' bytes$' | awk '{print $1, $2}' | sort >"$work/ours-$mix.types"
  "$quantctl" inspect "$theirs" | grep -E ' bytes$' | awk '{print $1, $2}' | sort >"$work/llama-$mix.types"
  [[ -s $work/ours-$mix.types ]] || { echo "FAIL: no tensors listed for $mix"; exit 1; }
  diff "$work/llama-$mix.types" "$work/ours-$mix.types" ||
    { echo "FAIL: tensor types of $mix differ from llama-quantize's (< theirs, > ours)"; exit 1; }
  # The file type llama-quantize itself records for this mix.
  file_type=$("$quantctl" inspect "$theirs" | sed -n 's/^ *general\.file_type = //p')
  echo "{\"general.file_type\": $file_type}" >"$work/expect-$mix.json"
  node "$here/llamacpp/gguf_check.mjs" --model "$ours" --expect "$work/expect-$mix.json" \
    --generate 16 >"$work/check-$mix.log" 2>&1 ||
    { tail -20 "$work/check-$mix.log"; echo "FAIL: llama.cpp checks on $mix"; exit 1; }
  ours_ppl=$(perplexity "$ours") || exit 1
  theirs_ppl=$(perplexity "$theirs") || exit 1
  echo "$mix $(stat -c %s "$ours") $(stat -c %s "$theirs") $ours_ppl $theirs_ppl" \
    >>"$work/results.txt"
done

python3 - "$work/results.txt" <<'PY'
import sys
failed = False
print(f"{'mix':7} {'ours MB':>8} {'llama MB':>9} {'ours ppl':>9} {'llama ppl':>10} {'ratio':>7}  verdict")
for line in open(sys.argv[1]):
    mix, ours_bytes, theirs_bytes, ours_ppl, theirs_ppl = line.split()
    ours_bytes, theirs_bytes = int(ours_bytes), int(theirs_bytes)
    ours_ppl, theirs_ppl = float(ours_ppl), float(theirs_ppl)
    ratio = ours_ppl / theirs_ppl
    ok = ratio <= 1.01 and abs(ours_bytes / theirs_bytes - 1) <= 0.01
    failed |= not ok
    print(f"{mix:7} {ours_bytes / 1e6:8.2f} {theirs_bytes / 1e6:9.2f} {ours_ppl:9.4f} "
          f"{theirs_ppl:10.4f} {ratio:7.4f}  {'PASS' if ok else 'FAIL'}")
print("FAILED" if failed else "PASSED")
sys.exit(1 if failed else 0)
PY
