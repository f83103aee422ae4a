#!/usr/bin/env bash
# llama.cpp (node-llama-cpp) loads what `quantctl make-tiny-model` + `convert`
# write: the byte-level BPE ("gpt2") tokenizer path, every output type, and a
# Qwen2 model (q/k/v biases, no rope permutation) with tied embeddings. Needs
# no shared data, so it runs wherever node-llama-cpp is installed.
#
# usage: llamacpp_tiny_model_test.sh QUANTCTL NODE_MODULES
# Exit status: 0 pass, 1 failure, 77 skipped (node or node-llama-cpp missing).
set -euo pipefail

quantctl=$1
node_modules=$2
checker="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/llamacpp/gguf_check.mjs"

if ! command -v node >/dev/null || [[ ! -d $node_modules/node-llama-cpp ]]; then
  echo "SKIP: node or node-llama-cpp (in $node_modules) is missing;" \
    "scripts/install_deps.sh installs it"
  exit 77
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# check NAME ARCH TYPES... : convert $work/NAME to each type, load in llama.cpp.
expect() {  # NAME ARCH: what llama.cpp must read from the tiny model's GGUFs
  cat >"$work/$1.expect.json" <<JSON
{"general.architecture": "$2", "tokenizer.ggml.model": "gpt2",
 "$2.block_count": 2, "$2.embedding_length": 256,
 "$2.attention.head_count_kv": 2, "vocab_size": 511}
JSON
}

check() {
  local name=$1 arch=$2
  shift 2
  expect "$name" "$arch"
  for type in "$@"; do
    local gguf=$work/$name-$type.gguf
    "$quantctl" convert --model "$work/$name" --out "$gguf" --type "$type" \
      2>/dev/null
    QS_NODE_MODULES=$node_modules node "$checker" --model "$gguf" \
      --expect "$work/$name.expect.json" --generate 8 >"$gguf.log" 2>&1 || {
      cat "$gguf.log"
      echo "FAIL: llama.cpp rejected or misread $name as $type"
      exit 1
    }
    echo "PASS: $name $type: $(tail -n 1 "$gguf.log")"
  done
}

"$quantctl" make-tiny-model --out "$work/llama" --layers 2
check llama llama f32 f16 bf16 q8_0 q4_0
"$quantctl" make-tiny-model --out "$work/qwen2-tied" --layers 2 --arch qwen2 \
  --tie_embeddings
check qwen2-tied qwen2 f16 q4_0

# GGUF written from calibrated solutions (GPTQ, AWQ; llama and qwen2 with
# q/k/v biases): the exact Q4_0 path and the re-fitted Q4_K_M path.
for i in $(seq 1 1500); do echo -n "$(( (i * 37) % 500 )) "; done >"$work/tokens.txt"
for spec in "llama gptq Q4_0" "llama gptq Q4_K_M" "qwen2-tied awq Q4_K_M"; do
  read -r name method type <<<"$spec"
  gguf=$work/$name-$method-$type.gguf
  "$quantctl" quantize --model "$work/$name" --out "$gguf" --format gguf \
    --type "$type" --method "$method" --calib-tokens "$work/tokens.txt" \
    --calib-samples 4 --calib-seqlen 64 >"$gguf.quantize.log" 2>&1 || {
    cat "$gguf.quantize.log"
    echo "FAIL: quantctl quantize $name $method $type"
    exit 1
  }
  expect "$name" "${name%-tied}"
  QS_NODE_MODULES=$node_modules node "$checker" --model "$gguf" \
    --expect "$work/$name.expect.json" --generate 8 >"$gguf.log" 2>&1 || {
    cat "$gguf.log"
    echo "FAIL: llama.cpp rejected or misread $name from $method as $type"
    exit 1
  }
  echo "PASS: $name from $method as $type: $(tail -n 1 "$gguf.log")"
done
