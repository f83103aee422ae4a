#!/usr/bin/env bash
# llama.cpp (node-llama-cpp) loads what `quantctl make-tiny-model` + `convert`
# write: the byte-level BPE ("gpt2") tokenizer path, every output type. Needs
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
"$quantctl" make-tiny-model --out "$work/model" --layers 2
cat >"$work/expect.json" <<'JSON'
{"tokenizer.ggml.model": "gpt2", "llama.block_count": 2,
 "llama.embedding_length": 256, "llama.attention.head_count_kv": 2,
 "vocab_size": 511}
JSON
for type in f32 f16 bf16 q8_0 q4_0; do
  "$quantctl" convert --model "$work/model" --out "$work/$type.gguf" \
    --type "$type" 2>/dev/null
  QS_NODE_MODULES=$node_modules node "$checker" --model "$work/$type.gguf" \
    --expect "$work/expect.json" --generate 8 >"$work/$type.log" 2>&1 || {
    cat "$work/$type.log"
    echo "FAIL: llama.cpp rejected or misread the $type file"
    exit 1
  }
  echo "PASS: $type: $(tail -n 1 "$work/$type.log")"
done
