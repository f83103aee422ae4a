#!/bin/bash
# How far the calibration draw alone moves a GPTQ result: the data README's
# reference recipe (128 windows of 512 tokens from calibration.txt,
# asymmetric min-max groups, damp 0.01, lazy block 128, true-sequential, no
# act-order) at one bit width, quantized once per calibration seed, each
# scored by held-out perplexity (the README's method) on both texts; then
# the mean, the sample standard deviation and the range.
#
# usage: bash bench/calibration_spread.sh [BUILD_DIR] [WORK_DIR] > table.md
# QS_BITS / QS_GROUP (default 2 / 64) and QS_SEEDS (default "0 1 2 3 4").
set -euo pipefail
build=${1:-build}
work=${2:-/tmp/calibration_spread}
data=${QS_SHARED_DATA:-$(cd "$(dirname "$0")/../../shared/data" && pwd)}
quantctl="$build/client/quantctl"
model="$data/llama-29m-books"
eval_texts="$data/text/heldout_books.txt,$data/text/heldout_stories.txt"
bits=${QS_BITS:-2}
group=${QS_GROUP:-64}
seeds=(${QS_SEEDS:-0 1 2 3 4})
mkdir -p "$work"

echo "| calibration seed | ppl books | ppl stories |"
echo "| --- | --- | --- |"
results=()
for seed in "${seeds[@]}"; do
  out="$work/gptq-${bits}b-g${group}-seed$seed"
  rm -rf "$out" "$out.work"
  "$quantctl" quantize --model "$model" --out "$out" --method gptq \
    --bits "$bits" --group-size "$group" \
    --calib "$data/text/calibration.txt" --calib-samples 128 \
    --calib-seqlen 512 --calib-seed "$seed" >"$out.log" 2>&1
  read -r books stories <<<"$("$quantctl" perplexity --model "$out" \
    --eval "$eval_texts" |
    awk '{for (i = 1; i <= NF; ++i) if ($i == "perplexity") printf "%s ", $(i + 1)}')"
  echo "| $seed | $books | $stories |"
  results+=("$books $stories")
  rm -rf "$out.work"
done
printf '%s\n' "${results[@]}" | awk '
  { b[NR] = $1; s[NR] = $2; sb += $1; ss += $2 }
  END {
    mb = sb / NR; ms = ss / NR
    for (i = 1; i <= NR; ++i) { vb += (b[i] - mb) ^ 2; vs += (s[i] - ms) ^ 2 }
    sdb = NR > 1 ? sqrt(vb / (NR - 1)) : 0; sds = NR > 1 ? sqrt(vs / (NR - 1)) : 0
    minb = maxb = b[1]; mins = maxs = s[1]
    for (i = 2; i <= NR; ++i) {
      if (b[i] < minb) minb = b[i]; if (b[i] > maxb) maxb = b[i]
      if (s[i] < mins) mins = s[i]; if (s[i] > maxs) maxs = s[i]
    }
    printf "| mean | %.3f | %.3f |\n", mb, ms
    printf "| sample sd | %.3f (%.1f%%) | %.3f (%.1f%%) |\n", sdb, 100 * sdb / mb, sds, 100 * sds / ms
    printf "| range | %.3f - %.3f | %.3f - %.3f |\n", minb, maxb, mins, maxs
  }'
