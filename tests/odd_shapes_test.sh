#!/usr/bin/env bash
# A model whose shapes are not multiples of 256 (intermediate size 172, not
# even a multiple of 32; tied embeddings; a 511-token vocabulary) goes
# through GPTQ into GGUF (Q4_0, Q4_K_M, Q2_K), a GPTQ checkpoint (groups of
# 128, and groups of 96 that do not divide 256 columns) and an AWQ
# checkpoint. Linears a target cannot hold stay in floating point, as the
# plain conversion leaves them (ffn_down in F16 in GGUF; the 172-wide MLP in
# the checkpoints), and the reports say which and why. llama.cpp
# (node-llama-cpp) loads the GGUF files; the independent numpy reader
# (quant/testdata/quant_checkpoint_reader.py) reads the checkpoints back.
#
# usage: odd_shapes_test.sh QUANTCTL NODE_MODULES
# Exit status: 0 pass, 1 failure, 77 skipped (no python3 with numpy).
# Without node-llama-cpp the llama.cpp loads are skipped with a message.
set -euo pipefail

quantctl=$1
node_modules=$2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
checker=$here/llamacpp/gguf_check.mjs
reader=$here/../quant/testdata/quant_checkpoint_reader.py

# Debian's python3 has numpy (scripts/install_deps.sh); another first on
# PATH may not.
py=/usr/bin/python3
[[ -x $py ]] || py=python3
"$py" -c 'import numpy' 2>/dev/null || {
  echo "SKIP: python3 with numpy is missing"
  exit 77
}
llamacpp=1
if ! command -v node >/dev/null || [[ ! -d $node_modules/node-llama-cpp ]]; then
  echo "NOTE: node-llama-cpp (in $node_modules) is missing; the GGUF files" \
    "are checked without llama.cpp (scripts/install_deps.sh installs it)"
  llamacpp=0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

model=$work/odd
"$quantctl" make-tiny-model --out "$model" --layers 2 --intermediate 172 \
  --tie_embeddings
for i in $(seq 1 1500); do echo -n "$(( (i * 37) % 500 )) "; done >"$work/tokens.txt"
calib=(--method gptq --calib-tokens "$work/tokens.txt" --calib-samples 4
  --calib-seqlen 64)

# kept REPORT.json EXPECTED...: the report lists exactly these block linears
# (in every layer) as kept in floating point, each with a reason.
kept() {
  "$py" - "$@" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
want = sorted("model.layers.%d.%s" % (l, m) for l in range(2) for m in sys.argv[2:])
got = sorted(k["tensor"] for k in report["kept_fp"])
reasons = {k["reason"] for k in report["kept_fp"]}
assert got == want, "kept in floating point: %s, expected %s" % (got, want)
assert all("172" in r for r in reasons), reasons
for block in report["blocks"]:
    assert block["backend"] == "cpu" and block["kernel"].startswith("OpenBLAS"), block
print("kept in floating point as expected:", "; ".join(sorted(reasons)))
PY
}

cat >"$work/expect.json" <<JSON
{"general.architecture": "llama", "llama.block_count": 2,
 "llama.embedding_length": 256, "llama.feed_forward_length": 172,
 "vocab_size": 511}
JSON
for type in Q4_0 Q4_K_M Q2_K; do
  gguf=$work/odd-$type.gguf
  "$quantctl" quantize --model "$model" --out "$gguf" --format gguf \
    --type "$type" "${calib[@]}" >"$gguf.log" 2>&1 ||
    { cat "$gguf.log"; fail "quantctl quantize to $type"; }
  kept "$gguf.report.json" mlp.down_proj || fail "the $type report"
  "$quantctl" inspect "$gguf" | grep -iE "blk\.0\.ffn_down\.weight +f16" >/dev/null ||
    fail "ffn_down of $type is not F16"
  if ((llamacpp)); then
    QS_NODE_MODULES=$node_modules node "$checker" --model "$gguf" \
      --expect "$work/expect.json" --generate 8 >"$gguf.check.log" 2>&1 ||
      { cat "$gguf.check.log"; fail "llama.cpp rejected or misread $type"; }
    echo "PASS: GGUF $type from GPTQ: $(tail -n 1 "$gguf.check.log")"
  else
    echo "PASS: GGUF $type from GPTQ (not loaded: no llama.cpp)"
  fi
done

# The service (a coordinator and in-process workers) writes the same bytes.
"$quantctl" run --local --state_dir "$work/state" --model "$model" \
  --out "$work/odd-service.gguf" --format gguf --type Q4_K_M "${calib[@]}" \
  >"$work/service.log" 2>&1 || { cat "$work/service.log"; fail "run --local"; }
cmp "$work/odd-service.gguf" "$work/odd-Q4_K_M.gguf" ||
  fail "run --local wrote another Q4_K_M than quantctl quantize"
echo "PASS: run --local wrote the same Q4_K_M bytes as quantctl quantize"

for spec in "gptq 128 gptq" "gptq 96 gptq" "awq 128 awq"; do
  read -r format group method <<<"$spec"
  out=$work/odd-$format-g$group
  "$quantctl" quantize --model "$model" --out "$out" --format "$format" \
    --bits 4 --group-size "$group" "${calib[@]}" --method "$method" \
    >"$out.log" 2>&1 || { cat "$out.log"; fail "quantctl quantize to $format"; }
  kept "$out/quantization_report.json" mlp.gate_proj mlp.up_proj mlp.down_proj ||
    fail "the $format g$group report"
  "$py" "$reader" --checkpoint "$out" "$model" >"$out.read.log" 2>&1 ||
    { cat "$out.read.log"; fail "the reader rejected the $format g$group checkpoint"; }
  echo "PASS: $format checkpoint, groups of $group: $(tail -n 1 "$out.read.log")"
done
