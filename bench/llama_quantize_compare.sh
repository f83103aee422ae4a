#!/usr/bin/env bash
# GGUF quantization throughput, quantctl against llama.cpp's llama-quantize,
# side by side in one run on the same machine.
#
# usage: bench/llama_quantize_compare.sh BUILD_DIR [NODE_MODULES]
#
# Makes a random-weight Llama checkpoint (quantctl make-tiny-model, 2 layers,
# hidden 2048: 103M parameters, 411 MB as F32) and its F32 GGUF, then for
# every type and 1 and 2 threads times, end to end (read, quantize, write):
#   ours:  quantctl convert --model CHECKPOINT --type TYPE --threads T
#   llama: llama-quantize --pure F32.gguf OUT.gguf TYPE T
# MB/s = F32 bytes of the model / wall seconds (best of 2). llama-quantize is
# built from the llama.cpp source in node-llama-cpp
# (tests/llamacpp/build_llama_tools.sh) into BUILD_DIR/llama-tools; none of it
# is committed. Mixes are used where llama.cpp has no pure name: Q3_K_S,
# Q4_K_S and Q5_K_S are nearly all Q3_K, Q4_K and Q5_K (ours follows the
# mix, llama-quantize gets --pure; both write the type for most bytes).
set -euo pipefail

build=$(cd "$1" && pwd)
node_modules=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache/node/node_modules}
quantctl=$build/client/quantctl
bin=$(bash "$(dirname "${BASH_SOURCE[0]}")/../tests/llamacpp/build_llama_tools.sh" \
  "$node_modules" "$build/llama-tools" | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$quantctl" make-tiny-model --out "$work/model" --layers 2 --hidden 2048 --seed 1 >/dev/null
"$quantctl" convert --model "$work/model" --out "$work/f32.gguf" --type F32 2>/dev/null >/dev/null
f32_bytes=$(stat -c %s "$work/f32.gguf")

best_of_2() {  # Prints the faster wall time of two runs of "$@".
  local best=
  for _ in 1 2; do
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s.%N)
    best=$(python3 -c "import sys; a=float(sys.argv[1]); b=sys.argv[2]; print(min(a, float(b)) if b else a)" \
      "$(echo "$end - $start" | bc)" "$best")
  done
  echo "$best"
}

echo "model: $(python3 -c "print(f'{$f32_bytes / 1e6:.1f}')") MB as F32; $(nproc) CPUs: $(lscpu | sed -n 's/^Model name: *//p')"
echo
echo "| type | threads | ours MB/s | llama-quantize MB/s | ours / llama |"
echo "| --- | ---: | ---: | ---: | ---: |"
for type in Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q4_K_S Q5_K_S Q6_K; do
  for threads in 1 2; do
    ours=$(best_of_2 "$quantctl" convert --model "$work/model" --out "$work/ours.gguf" \
      --type "$type" --threads "$threads")
    theirs=$(best_of_2 "$bin/llama-quantize" --pure "$work/f32.gguf" "$work/llama.gguf" \
      "$type" "$threads")
    python3 -c "
import sys
b, o, t = $f32_bytes / 1e6, float(sys.argv[1]), float(sys.argv[2])
print(f'| $type | $threads | {b / o:.0f} | {b / t:.0f} | {t / o:.2f}x |')" "$ours" "$theirs"
  done
done
