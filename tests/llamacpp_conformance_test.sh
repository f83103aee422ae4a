#!/ usr / bin / env bash
#Conformance of the GGUF files quantctl writes, \
    checked by llama.cpp itself(node - llama - cpp 3.22.1).
#
#usage : llamacpp_conformance_test.sh[QUANTCTL[NODE_MODULES[SHARED_DATA]]]
#QUANTCTL the quantctl binary(or $QS_QUANTCTL; \
                              default <repo> / build / client / quantctl)
#NODE_MODULES a node_modules folder holding node - llama - cpp 3.22.1 and \
    @node - llama - cpp / linux - x64
#(or $QS_NODE_MODULES; \
  make one with `npm install -- omit = optional` in a copy of
#tests / llamacpp / package.json)
#SHARED_DATA the shared test data folder(or $QS_SHARED_DATA; \
                                         default <repo> /../ shared / data)
#
#For each of f16,                                                          \
    q8_0 and q4_0 : `quantctl convert` the llama - 29m - books checkpoint, \
    then
#tests / llamacpp / gguf_check.mjs loads it in llama.cpp, \
    compares the metadata llama.cpp sees with
#the checkpoint's config.json, generates 32 tokens greedily, checks the tokenizer against the
#reference token ids and measures perplexity on \
    heldout_stories.txt : all 40 windows for f16
#(must be within 1 % of the reference figure), \
  the first 8 windows for q8_0 and q4_0(compared
#with f16 on the same windows : q8_0 within 1 %, q4_0 at most 6 % worse).
#
#Exit status : 0 pass, 1 failure, \
    77 skipped(node, node - llama - cpp or the shared data missing).
#Budget : about 3 - 4 minutes on 2 cores.QS_KEEP_TMP = 1 keeps the work folder.

set - euo pipefail

          readonly kSkip = 77 readonly kPplWindowsQuick =
    8 readonly kF16Tolerance = 0.01 readonly kQ8Tolerance =
        0.01 readonly kQ4MaxIncrease = 0.06

    script_dir = "$(cd " $(dirname "${BASH_SOURCE[0]}") " && pwd)" repo_root =
        "$(cd " ${script_dir} /.." && pwd)" checker =
            "${script_dir}/llamacpp/gguf_check.mjs"

    quantctl =
        "${1:-${QS_QUANTCTL:-${repo_root}/build/client/"
        "quantctl}}" node_modules = "${2:-${QS_NODE_MODULES:-}}" shared_data =
            "${3:-${QS_SHARED_DATA:-${repo_root}/../shared/data}}"

                    skip(){echo "SKIP: $*" exit
                                "${kSkip}"} fail(){echo "FAIL: $*" > & 2 exit 1}
#-- - \
    prerequisites -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -
                    command -
                    v node >
                / dev / null 2 > & 1 ||
            skip
            "node is not installed (node >= 20 runs the llama.cpp "
            "checks)" node_major =
                "$(node -p 'process.versions.node.split(".")[0]')"(
                    (node_major >= 20)) ||
                skip
                "node $(node --version) is too old; node-llama-cpp 3.22.1 "
                "needs node >= 20"[[-n "${node_modules}"]] ||
                skip
                "QS_NODE_MODULES is not set (a node_modules folder holding "
                "node-llama-cpp 3.22.1; make it with"
                "'npm install --omit=optional' beside a copy of "
                "tests/llamacpp/package.json)"[
                    [-f "${node_modules}/node-llama-cpp/package.json"]] ||
                skip "no node-llama-cpp in QS_NODE_MODULES=${node_modules}"[
                    [-d "${node_modules}/@node-llama-cpp/linux-x64"]] ||
                skip
                "no @node-llama-cpp/linux-x64 (llama.cpp's prebuilt binaries) "
                "in QS_NODE_MODULES=${node_modules}" model_dir =
                    "${shared_data}/llama-29m-books" text =
                        "${shared_data}/text/heldout_stories.txt" ref_dir =
                            "${model_dir}/reference"[
                                [-f "${model_dir}/config.json"]] ||
                            skip
                            "shared test data not found (no "
                            "${model_dir}/config.json)"[[-f "${text}"]] ||
                            skip "shared test data not found (no ${text})"[
                                [-x "${quantctl}"]] ||
                            fail
                            "quantctl binary not found or not executable: "
                            "${quantctl}"[[-f "${checker}"]] ||
                            fail "missing ${checker}" export QS_NODE_MODULES =
                                "${node_modules}"

    work = "$(mktemp -d " ${TMPDIR : - / tmp} / llamacpp_conformance.XXXXXX
                                                ")" cleanup() {
  if
    [["${QS_KEEP_TMP:-0}" == "1"]];
  then echo "work folder kept: ${work}" else rm - rf "${work}" fi
}
trap cleanup EXIT

#The reference perplexity(README : 26.862, transformers fp32; \
                          llama.cpp on an F16 GGUF : 26.863)  \
    .
    ref_ppl = "$(node -e '
    const fs = require("fs");
const f = process.argv[1];
let v = 26.862;
if (fs.existsSync(f))
  v = JSON.parse(fs.readFileSync(f, "utf8")).ppl_stories_seq512_fp32 ? ? v;
console.log(v);
' "${ref_dir}/reference.json")"
#Expected metadata, from the checkpoint's config.json. $1: the GGUF type name.
    write_expect() {
  node - e ' const fs = require("fs");
  const[configPath, type, out] = process.argv.slice(1);
  const c = JSON.parse(fs.readFileSync(configPath, "utf8"));
  const theta = c.rope_theta ? ? c.rope_parameters ?.rope_theta;
  const fileType = {
    f16 : [ 1, "F16" ],
    q8_0 : [ 7, "Q8_0" ],
    q4_0 : [ 2, "Q4_0" ]
  }[type];
  const layers = c.num_hidden_layers;
  const expect = {
    "general.architecture" : "llama",
    "llama.block_count" : layers,
    "llama.context_length" : c.max_position_embeddings,
    "llama.embedding_length" : c.hidden_size,
    "llama.feed_forward_length" : c.intermediate_size,
    "llama.attention.head_count" : c.num_attention_heads,
    "llama.attention.head_count_kv" : c.num_key_value_heads,
    "llama.attention.layer_norm_rms_epsilon" : c.rms_norm_eps,
    "llama.rope.freq_base" : theta,
    "tokenizer.ggml.model" : "llama",
    "tokenizer.ggml.bos_token_id" : c.bos_token_id,
    "tokenizer.ggml.eos_token_id" : c.eos_token_id,
    "vocab_size" : c.vocab_size,
    "general.file_type" : fileType[0],
    "file_type" : fileType[1],
    // token_embd, output_norm, output (unless tied) + 9 per block (2 norms, q k
    // v o, gate up down)
    "tensor_count" : layers * 9 + (c.tie_word_embeddings ? 2 : 3),
  };
  fs.writeFileSync(out, JSON.stringify(expect, null, 1) + "\n");
  ' "${model_dir}/config.json" "$1" "${work}/expect_$1.json"
}

#Reads one field of a gguf_check result(a JS expression over `r`), \
    "-" when absent.
field() {
  node - e ' const r =
      JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const v = (() = > {
    try {
      return eval(process.argv[2]);
    } catch {
      return undefined;
    }
  })();
  console.log(v == = undefined || v == = null ? "-" : v);
  ' "$1" "$2"
}

#-- - convert + \
    check each type -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -
types = (f16 q8_0 q4_0)declare -
        A status convert_s size_mb checks ppl windows tps failures =
            0 start_all = $ {
  SECONDS
}

for
  t in "${types[@]}";
do
  gguf = "${work}/llama-29m-books-${t}.gguf" echo
         "=== ${t}: quantctl convert" start = ${SECONDS} rc =
             0 "${quantctl}" convert-- model "${model_dir}" --out
             "${gguf}" --type "${t}" ||
             rc = $
      ? convert_s[${t}] =
            $((SECONDS - start)) if ((rc != 0)) || [[!-s "${gguf}"]];
then echo
    "FAIL: quantctl convert --type ${t} exited with ${rc}" > &2 status[${t}] =
    "FAIL(convert)" failures = $((failures + 1)) continue fi size_mb[${t}] =
        "$(node -p "(require('fs').statSync(process.argv[1]).size / 1e6)
            .toFixed(1) " " $ {
  gguf
}
")" write_expect "${t}"

    args = (--model "${gguf}" --expect
            "${work}/expect_${t}.json" --generate 32 --ppl -
            text "${text}" --ppl - ctx 512 --out "${work}/result_${t}.json") if
        [[-f "${ref_dir}/ref_tokens_stories_first64.npy"]];
then args += (--ref - tokens "${ref_dir}/ref_tokens_stories_first64.npy")
    fi if[["${t}" != "f16"]];
then args += (--ppl - max - windows "${kPplWindowsQuick}") fi echo
    "=== ${t}: gguf_check.mjs" rc = 0 node
                                    "${checker}"
                                    "${args[@]}" ||
                                    rc = $
    ? result = "${work}/result_${t}.json" if[[!-f "${result}"]];
then echo "FAIL: gguf_check.mjs wrote no result for ${t} (exit ${rc})" >
    &2 status[${t}] = "FAIL(check)" failures =
    $((failures + 1)) continue fi checks[${t}] = "$(field " $ {
  result
}
" 'r.checks.filter(c => c.ok).length + " / " + r.checks.length')" ppl[${t}] =
    "$(field " $ {
  result
}
" 'r.perplexity.ppl.toFixed(4)')" windows[${t}] = "$(field " $ { result }
" 'r.perplexity.windows + " / " + r.perplexity.windows_available')" tps[${t}] =
    "$(field " $ {
  result
}
" 'r.perplexity.tokens_per_s.toFixed(0)')" status[${t}] = "PASS" if ((rc != 0));
then status[${t}] = "FAIL(check)" failures = $((failures + 1)) fi done
#-- - \
    perplexity figures -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -
#$1 result json, $2 JS condition over `ppl` (and `base`), $3 base value; \
    prints the verdict.
ppl_verdict() {
  node - e ' const r =
      JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const ppl = r.perplexity ?.ppl;
  const base = Number(process.argv[3]);
  if (typeof ppl != = "number") {
    console.log("missing");
    process.exit(0);
  }
  console.log(eval(process.argv[2]) ? "ok" : "bad");
  ' "$1" "$2" "$3"
}

f16_result = "${work}/result_f16.json" f16_quick =
    "-" if[[-f "${f16_result}" && "${ppl[f16]:--}" != "-"]];
then verdict = "$(ppl_verdict " $ { f16_result }
" " Math.abs(ppl / base - 1) <= $ { kF16Tolerance }
" " $ { ref_ppl }
")" if[["${verdict}" != "ok"]];
then echo "FAIL: f16 perplexity ${ppl[f16]} is not within $(node -p " ${
    kF16Tolerance} *
    100 ")% of the reference $(printf %.3f " $ {
  ref_ppl
}
")" > &2 status[f16] = "FAIL(ppl)" failures = $((failures + 1)) fi
#f16 on the same first windows as the quick runs, from its per - window NLL.
    f16_quick = "$(node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const k = Number(process.argv[2]);
const w = r.perplexity.window_nll.slice(0, k);
console.log(Math.exp(w.reduce((a, b) = > a + b, 0) /
                     (w.length * r.perplexity.ctx))
                .toFixed(4));
' "${f16_result}" "${kPplWindowsQuick}")" elif[["${status[f16]:-}" == "PASS"]]; then
  echo "FAIL: no f16 perplexity" >&2
  status[f16]="FAIL(ppl)"
  failures=$((failures + 1))
fi

for t in q8_0 q4_0;
do
  result = "${work}/result_${t}.json"[
               ["${status[${t}]:-}" == "PASS" && "${f16_quick}" != "-"]] ||
           continue if[["${t}" == "q8_0"]];
then cond = "Math.abs(ppl / base - 1) <= ${kQ8Tolerance}" what =
    "within $(node -p " ${kQ8Tolerance}* 100 ")% of" else cond =
        "ppl / base - 1 <= ${kQ4MaxIncrease}" what =
            "at most $(node -p " ${kQ4MaxIncrease}* 100 ")% above" fi verdict =
                "$(ppl_verdict " $ {
  result
}
" " $ { cond }
" " $ { f16_quick }
")" if[["${verdict}" != "ok"]];
then echo
    "FAIL: ${t} perplexity ${ppl[${t}]} on the first ${kPplWindowsQuick} "
    "windows is not ${what} f16's ${f16_quick}" > &2 status[${t}] =
    "FAIL(ppl)" failures = $((failures + 1)) fi done
#-- - \
    summary -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -- -
        echo echo
    "llama.cpp conformance (node-llama-cpp 3.22.1), reference ppl $(printf "
    "%.3f " $ {
  ref_ppl
}"), f16 on the first ${kPplWindowsQuick} windows ${f16_quick}"
printf '%-6s %9s %9s %8s %11s %9s %7s  %s\n' type "size MB" "convert s" checks ppl windows "tok/s" status
for t in "${types[@]}";
do
  printf '%-6s %9s %9s %8s %11s %9s %7s  %s\n' "${t}" "${size_mb[${t}]:--}" "${convert_s[${t}]:--}" \
    "${checks[${t}]:--}" "${ppl[${t}]:--}" "${windows[${t}]:--}" "${tps[${t}]:--}" "${status[${t}]:-FAIL}"
done
echo "total $((SECONDS - start_all)) s"

if ((failures > 0));
then echo "FAILED: ${failures} failure(s)" exit 1 fi echo "PASSED"
