#!/bin/bash
# Held-out perplexity of FP, RTN, GPTQ (with and without act-order) and AWQ
# on ../shared/data/llama-29m-books at 4-bit g128, 3-bit g128 and 2-bit g64,
# by the data README's method (512-token windows, BOS per paragraph), on
# heldout_books and heldout_stories. Recipe as the README's reference rows:
# 128 calibration windows of 512 tokens from calibration.txt, asymmetric
# min-max groups, damp 0.01, lazy block 128, true-sequential. Then the
# option sets that do best at 3 and 2 bits: act-order with group ranges
# found as AutoGPTQ finds them (at the start of each lazy block), and with
# searched ranges (--mse).
#
# usage: bash bench/quality_table.sh [BUILD_DIR] [WORK_DIR] > table.md
set -euo pipefail
build=${1:-build}
work=${2:-/tmp/quality_table}
data=${QS_SHARED_DATA:-$(cd "$(dirname "$0")/../../shared/data" && pwd)}
quantctl="$build/client/quantctl"
model="$data/llama-29m-books"
eval_texts="$data/text/heldout_books.txt,$data/text/heldout_stories.txt"
calib=(--calib "$data/text/calibration.txt" --calib-samples 128
       --calib-seqlen 512 --calib-seed 0)
mkdir -p "$work"

# Prints "books stories" for a checkpoint directory.
perplexities() {
  "$quantctl" perplexity --model "$1" --eval "$eval_texts" |
    awk '{for (i = 1; i <= NF; ++i) if ($i == "perplexity") printf "%s ", $(i + 1)}'
}

row() {  # label method bits group act-order(yes/no) seconds books stories
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$@"
}

echo "| config | method | bits | group | act-order | quantize s | ppl books | ppl stories |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
read -r books stories <<<"$(perplexities "$model")"
row FP - 16 - - - "$books" "$stories"

# label method bits group extra-flags...
run() {
  local label=$1 method=$2 bits=$3 group=$4
  shift 4
  local out="$work/$label"
  rm -rf "$out" "$out.work"
  local start=$SECONDS
  "$quantctl" quantize --model "$model" --out "$out" --method "$method" \
    --bits "$bits" --group-size "$group" "$@" >"$out.log" 2>&1
  local took=$((SECONDS - start))
  read -r books stories <<<"$(perplexities "$out")"
  local act=no
  [[ " $* " == *" --desc-act "* ]] && act=yes
  row "$label" "$method" "$bits" "$group" "$act" "$took" "$books" "$stories"
  rm -rf "$out.work"
}

for spec in "4 128" "3 128" "2 64"; do
  read -r bits group <<<"$spec"
  run "rtn-${bits}b-g${group}" rtn "$bits" "$group" --calib-samples 0
  run "gptq-${bits}b-g${group}" gptq "$bits" "$group" "${calib[@]}"
  run "gptq-${bits}b-g${group}-act" gptq "$bits" "$group" --desc-act "${calib[@]}"
  if [[ $bits == 4 ]]; then
    run "awq-${bits}b-g${group}" awq "$bits" "$group" --format awq "${calib[@]}"
  else
    run "awq-${bits}b-g${group}" awq "$bits" "$group" --format gptq "${calib[@]}"
  fi
done
# The reference recipe with AutoGPTQ's conventions: windows drawn as GPTQ's
# data scripts draw them (Python's random, seed 0) and group ranges found
# at the start of each lazy block.
autogptq=(--calib-sampling python --group-params-at-block-start)
run gptq-4b-g128-autogptq gptq 4 128 "${autogptq[@]}" "${calib[@]}"
run gptq-3b-g128-autogptq gptq 3 128 "${autogptq[@]}" "${calib[@]}"
run gptq-2b-g64-autogptq gptq 2 64 "${autogptq[@]}" "${calib[@]}"
run awq-4b-g128-fp-inputs awq 4 128 --format awq --awq-fp-inputs "${calib[@]}"
run awq-4b-g128-python-draw awq 4 128 --format awq --calib-sampling python "${calib[@]}"
run gptq-3b-g128-act-bs gptq 3 128 --desc-act --group-params-at-block-start "${calib[@]}"
run gptq-2b-g64-act-bs gptq 2 64 --desc-act --group-params-at-block-start "${calib[@]}"
run gptq-2b-g64-act-bs-mse gptq 2 64 --desc-act --group-params-at-block-start --mse "${calib[@]}"
run gptq-3b-g128-act-bs-mse gptq 3 128 --desc-act --group-params-at-block-start --mse "${calib[@]}"
