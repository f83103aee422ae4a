#!/usr/bin/env bash
# Quick start: installs the dependencies, builds, and runs a real job end to
# end: a Hugging Face model directory -> GGUF (Q8_0), inspected by our reader
# and, when node-llama-cpp is installed, loaded and run by llama.cpp.
#
#   scripts/quickstart.sh               # on a small random-weight Llama it makes
#   scripts/quickstart.sh /models/X     # on a Hugging Face model you name
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"

quantctl=build/client/quantctl
work=build/quickstart
mkdir -p "$work"
model=${1:-}
if [[ -z "$model" ]]; then
  model=$work/tiny-llama
  [[ -f $model/config.json ]] || "$quantctl" make-tiny-model --out "$model"
fi
out=$work/$(basename "$model")-q8_0.gguf

"$quantctl" convert --model "$model" --out "$out" --type q8_0
# sed reads all its input (head would SIGPIPE quantctl under pipefail).
"$quantctl" inspect "$out" | sed -n 1,16p

if [[ -d .cache/node/node_modules/node-llama-cpp ]]; then
  echo "llama.cpp (node-llama-cpp) loads $out and generates:"
  QS_NODE_MODULES=$PWD/.cache/node/node_modules \
    node tests/llamacpp/gguf_check.mjs --model "$out" --generate 16
fi
echo "quick start done: $out"
