#!/usr/bin/env bash
# Quick start: installs the dependencies, builds, and runs a real job end to
# end on the embedded default (`quantctl run --local`: a coordinator and two
# workers in one process, the cluster's code path): GPTQ 4-bit, solved on
# the grid of each tensor's GGUF type, into a Q4_K_M GGUF file, which our
# reader inspects and, when node-llama-cpp is installed, llama.cpp loads and
# runs.
#
#   scripts/quickstart.sh                      # a small random-weight Llama it makes
#   scripts/quickstart.sh /models/X [TEXT]     # a Hugging Face model you name,
#                                              # calibrated on TEXT if given
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"

quantctl=build/client/quantctl
work=build/quickstart
mkdir -p "$work"
model=${1:-}
text=${2:-}
if [[ -z "$model" ]]; then
  model=$work/tiny-llama
  [[ -f $model/config.json ]] || "$quantctl" make-tiny-model --out "$model"
fi
out=$work/$(basename "$model")-gptq-q4_k_m.gguf
rm -f "$out" "$out".report.*  # A job never overwrites an output.

if [[ -n $text ]]; then
  calibration=(--calib "$text")
else
  # No text at hand: token ids drawn evenly from the vocabulary (a smoke
  # test of the pipeline; calibrate real models on real text).
  python3 - "$model/config.json" >"$work/calibration-ids.txt" <<'PY'
import json, random, sys
vocab = json.load(open(sys.argv[1]))["vocab_size"]
rng = random.Random(0)
print(" ".join(str(rng.randrange(vocab)) for _ in range(8192)))
PY
  calibration=(--calib-tokens "$work/calibration-ids.txt")
fi
"$quantctl" run --local --workers 2 --model "$model" --out "$out" \
  --method gptq --format gguf --type Q4_K_M "${calibration[@]}" \
  --calib-samples 16 --calib-seqlen 256
# sed reads all its input (head would SIGPIPE quantctl under pipefail).
"$quantctl" inspect "$out" | sed -n 1,16p

if [[ -d .cache/node/node_modules/node-llama-cpp ]]; then
  echo "llama.cpp (node-llama-cpp) loads $out and generates:"
  QS_NODE_MODULES=$PWD/.cache/node/node_modules \
    node tests/llamacpp/gguf_check.mjs --model "$out" --generate 16
fi
echo "quick start done: $out"
