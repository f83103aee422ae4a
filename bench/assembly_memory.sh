#!/bin/bash
# The coordinator's memory on a Llama-3-70B-shaped model (issue 16: "peak
# coordinator memory at assembly for a 70B-shaped block under 1 GB"): a
# coordinator and one worker process, a data-free RTN 4-bit job written as
# GGUF Q4_K_M and as a GPTQ checkpoint, on `quantctl make-tiny-model
# --preset llama3-70b --layers LAYERS` (hidden 8192, intermediate 28672,
# vocabulary 128256; one block is 1.7 GB of BF16, 856 M weights). For each:
# the coordinator's largest VmRSS sampled while the assembly's staging
# directory exists, its VmHWM over the whole job, the worker's VmHWM, the
# job's time and the output's size.
#
# usage: bash bench/assembly_memory.sh BUILD_DIR [WORK_DIR] > table.md
# Env: LAYERS (1; 5.9 GB of disk for the model, kept in WORK_DIR for the
# next run, plus the outputs).
set -euo pipefail
build=$(cd "$1" && pwd)
work=${2:-/tmp/assembly_memory}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layers=${LAYERS:-1}
quantctl=$build/client/quantctl
coordinator_bin=$build/coordinator/quant-coordinator
worker_bin=$build/worker/quant-worker
threads=$(nproc)
export OMP_NUM_THREADS=$threads
for bin in "$quantctl" "$coordinator_bin" "$worker_bin"; do
  [[ -x $bin ]] || { echo "missing $bin (build it first)" >&2; exit 1; }
done
mkdir -p "$work/out"
work=$(cd "$work" && pwd)
data=$work
source "$here/service_lib.sh"

model=$work/llama3-70b-l$layers
if [[ ! -f $model/config.json ]]; then
  rm -rf "$model"
  "$quantctl" make-tiny-model --preset llama3-70b --layers "$layers" \
    --out "$model" >/dev/null
fi

echo "# Coordinator memory on a Llama-3-70B-shaped model"
echo
echo "Command: \`bash bench/assembly_memory.sh $1${2:+ $2}\` (LAYERS=$layers);" \
  "$(date -u +%Y-%m-%d); commit $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "(uncommitted changes: $(git -C "$here/.." status --porcelain 2>/dev/null | wc -l) files)."
echo "Machine: \`nproc\` = $(nproc), $(lscpu | grep 'Model name' | sed 's/  */ /g')," \
  "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)."
echo "Model: \`quantctl make-tiny-model --preset llama3-70b --layers $layers\`," \
  "$(cat "$model"/*.safetensors | wc -c | awk '{printf "%.2f GB", $1 / 1e9}') of BF16" \
  "in $(ls "$model"/*.safetensors | wc -l) shards. Recipe: \`--method rtn --bits 4" \
  "--group-size 128 --calib-samples 0\`; one coordinator and one worker" \
  "process (--threads $threads) on loopback."
echo
echo "| output | job (s) | output GB | coordinator RSS during assembly, max MiB (sampled every 0.2 s) | coordinator VmHWM over the job MiB | worker VmHWM MiB |"
echo "| --- | --- | --- | --- | --- | --- |"
for format in gguf gptq; do
  args=(--format gptq)
  out=$work/out/model-$format
  if [[ $format == gguf ]]; then
    args=(--format gguf --type Q4_K_M)
    out=$out.gguf
  fi
  rm -rf "$out" "$out".report.*
  start_service "$format"
  run_measured during "$work/job-$format.log" --model "$model" --out "$out" \
    --method rtn --bits 4 --group-size 128 --calib-samples 0 "${args[@]}"
  stop_service
  size=$(du -sb "$out" | awk '{printf "%.2f", $1 / 1e9}')
  label="GGUF Q4_K_M"
  [[ $format == gptq ]] && label="GPTQ checkpoint (safetensors)"
  echo "| $label | $(printf %.0f "$seconds") | $size | $coordinator_sampled |" \
    "$coordinator_hwm | $worker_hwm |"
  rm -rf "$out" "$out".report.*
done
