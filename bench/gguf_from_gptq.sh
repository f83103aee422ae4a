#!/bin/bash
# GGUF written from the GPTQ solution vs plain GGUF quantization of the same
# type (ours and llama-quantize's), scored by llama.cpp's own
# llama-perplexity -c 512 on heldout_books (llama-perplexity counts
# differently from the data README's method: compare rows with each other).
# GPTQ recipe: 128 calibration windows of 512 tokens from calibration.txt,
# each linear solved by GPTQ on its GGUF type's own grid (every block fitted
# with the Hessian diagonal as importance when the solve reaches it), the
# rows written as solved.
#
# usage: bash bench/gguf_from_gptq.sh BUILD_DIR [WORK_DIR] > table.md
# Needs the llama.cpp tools that tests/llamacpp/build_llama_tools.sh builds
# (the llamacpp_kquant test builds them into BUILD_DIR/llama-tools).
set -euo pipefail
build=$1
work=${2:-/tmp/gguf_from_gptq}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data=${QS_SHARED_DATA:-$(cd "$here/../../shared/data" && pwd)}
quantctl="$build/client/quantctl"
bin=$(bash "$here/../tests/llamacpp/build_llama_tools.sh" \
  "${QS_NODE_MODULES:-$here/../.cache/node/node_modules}" "$build/llama-tools" | tail -1)
model="$data/llama-29m-books"
text="$data/text/heldout_books.txt"
types=(${QS_GGUF_TYPES:-Q4_0 Q4_K_M Q3_K_M Q2_K})
mkdir -p "$work"

perplexity() {  # FILE.gguf -> llama-perplexity's final estimate (one retry)
  local log=$1.perplexity.log value
  for attempt in 1 2; do
    "$bin/llama-perplexity" -m "$1" -f "$text" -c 512 -t "$(nproc)" >"$log" 2>&1 || true
    value=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$log")
    [[ -n $value ]] && { echo "$value"; return 0; }
  done
  echo "no estimate for $1" >&2
  return 1
}

echo "| type | weights from | file bytes | llama-perplexity (books) |"
echo "| --- | --- | --- | --- |"
"$quantctl" convert --model "$model" --out "$work/f16.gguf" --type F16 >/dev/null 2>&1
echo "| F16 | convert | $(stat -c %s "$work/f16.gguf") | $(perplexity "$work/f16.gguf") |"
for type in "${types[@]}"; do
  "$quantctl" convert --model "$model" --out "$work/plain-$type.gguf" \
    --type "$type" >/dev/null 2>&1
  "$bin/llama-quantize" "$work/f16.gguf" "$work/llama-$type.gguf" "$type" \
    "$(nproc)" >"$work/llama-$type.log" 2>&1
  rm -rf "$work/gptq-$type.gguf" "$work/gptq-$type.gguf.work"
  "$quantctl" quantize --model "$model" --out "$work/gptq-$type.gguf" \
    --format gguf --type "$type" --method gptq \
    --calib "$data/text/calibration.txt" --calib-samples 128 \
    --calib-seqlen 512 >"$work/gptq-$type.log" 2>&1
  for from in llama plain gptq; do
    label=$from
    [[ $from == llama ]] && label="llama-quantize (no imatrix)"
    [[ $from == plain ]] && label="quantctl convert (no calibration)"
    [[ $from == gptq ]] && label="quantctl quantize --method gptq"
    file="$work/$from-$type.gguf"
    echo "| $type | $label | $(stat -c %s "$file") | $(perplexity "$file") |"
  done
done
