#!/usr/bin/env bash
# Conformance of the GGUF files quantctl writes, judged by llama.cpp itself
# (node-llama-cpp 3.22.1, see tests/llamacpp/gguf_check.mjs).
#
# usage: llamacpp_conformance_test.sh QUANTCTL NODE_MODULES SHARED_DATA
#
# For f16, q8_0 and q4_0: convert ../shared/data/llama-29m-books, load the
# file in llama.cpp, compare the metadata it reports with config.json, check
# its tokenizer against the reference token ids, generate 32 tokens greedily,
# and measure perplexity on heldout_stories.txt by the data README's method:
# all windows for f16 (within 1% of reference.json), the first 8 for q8_0
# (within 1% of f16 on the same windows) and q4_0 (at most 6% above it).
# Exit status: 0 pass, 1 failure, 77 skipped (node-llama-cpp or data absent).
# About 2 minutes on 2 cores. QS_KEEP_TMP=1 keeps the work folder.
set -euo pipefail

quantctl=$1
node_modules=$2
shared_data=$3
checker="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/llamacpp/gguf_check.mjs"
model=$shared_data/llama-29m-books
text=$shared_data/text/heldout_stories.txt
quick_windows=8

skip() {
  echo "SKIP: $*"
  exit 77
}
command -v node >/dev/null || skip "node is not installed"
[[ -d $node_modules/node-llama-cpp && -d $node_modules/@node-llama-cpp/linux-x64 ]] ||
  skip "node-llama-cpp is not in $node_modules (scripts/install_deps.sh installs it)"
[[ -f $model/config.json && -f $text ]] ||
  skip "the shared test data ($model, $text) is absent"
[[ -x $quantctl ]] || { echo "FAIL: no quantctl at $quantctl"; exit 1; }

work=$(mktemp -d)
cleanup() {
  if [[ ${QS_KEEP_TMP:-0} == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
export QS_NODE_MODULES=$node_modules

for type in f16 q8_0 q4_0; do
  # What llama.cpp must report, from the checkpoint's own config.json.
  python3 - "$model/config.json" "$type" >"$work/expect_$type.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
file_type = {"f16": 1, "q8_0": 7, "q4_0": 2}[sys.argv[2]]
theta = c.get("rope_theta") or c.get("rope_parameters", {}).get("rope_theta")
print(json.dumps({
    "general.architecture": "llama",
    "general.file_type": file_type,
    "llama.block_count": c["num_hidden_layers"],
    "llama.context_length": c["max_position_embeddings"],
    "llama.embedding_length": c["hidden_size"],
    "llama.feed_forward_length": c["intermediate_size"],
    "llama.attention.head_count": c["num_attention_heads"],
    "llama.attention.head_count_kv": c["num_key_value_heads"],
    "llama.attention.layer_norm_rms_epsilon": c["rms_norm_eps"],
    "llama.rope.freq_base": theta,
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.bos_token_id": c["bos_token_id"],
    "tokenizer.ggml.eos_token_id": c["eos_token_id"],
    "vocab_size": c["vocab_size"],
    # Embedding, final norm, output + 9 per block.
    "tensor_count": 9 * c["num_hidden_layers"] + 3,
}))
PY
  gguf=$work/llama-29m-books-$type.gguf
  "$quantctl" convert --model "$model" --out "$gguf" --type "$type" 2>/dev/null
  args=(--model "$gguf" --expect "$work/expect_$type.json" --generate 32
    --ref-tokens "$model/reference/ref_tokens_stories_first64.npy"
    --ppl-text "$text" --ppl-ctx 512 --out "$work/result_$type.json")
  [[ $type == f16 ]] || args+=(--ppl-max-windows "$quick_windows")
  echo "=== $type"
  node "$checker" "${args[@]}" || { echo "FAIL: llama.cpp checks on $type"; exit 1; }
done

# Perplexity verdicts and the summary table.
python3 - "$work" "$model/reference/reference.json" "$quick_windows" <<'PY'
import json, math, os, sys
work, reference, quick = sys.argv[1], sys.argv[2], int(sys.argv[3])
ref = json.load(open(reference))["ppl_stories_seq512_fp32"]
results = {t: json.load(open(os.path.join(work, f"result_{t}.json")))
           for t in ("f16", "q8_0", "q4_0")}
f16 = results["f16"]["perplexity"]
first = f16["window_nll"][:quick]
f16_quick = math.exp(sum(first) / (len(first) * f16["ctx"]))
limits = {"f16": (ref, 0.01, True), "q8_0": (f16_quick, 0.01, True),
          "q4_0": (f16_quick, 0.06, False)}
failed = False
print(f"reference ppl {ref:.3f}; f16 on the first {quick} windows {f16_quick:.4f}")
print(f"{'type':6} {'MB':>6} {'ppl':>9} {'windows':>8} {'vs':>9}  verdict")
for t, r in results.items():
    p = r["perplexity"]
    base, tolerance, two_sided = limits[t]
    change = p["ppl"] / base - 1
    ok = abs(change) <= tolerance if two_sided else change <= tolerance
    failed |= not ok
    mb = os.path.getsize(os.path.join(work, f"llama-29m-books-{t}.gguf")) / 1e6
    print(f"{t:6} {mb:6.1f} {p['ppl']:9.4f} {p['windows']:>8} {change:+9.2%}  "
          f"{'PASS' if ok else 'FAIL'}")
print("FAILED" if failed else "PASSED")
sys.exit(1 if failed else 0)
PY
