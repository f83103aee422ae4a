#!/bin/bash
# One job over 1, 2, 4, ... workers (issue 16): a Llama-3-70B-shaped model of
# LAYERS blocks (`quantctl make-tiny-model --preset llama3-70b`; or, with
# SHAPE=HIDDEN:INTERMEDIATE, a smaller one for a quick run) through a
# coordinator and K worker processes that see the model root
# (--shared_model_roots) and keep the activations they make, in each MODE,
# with a calibrated GPTQ 4-bit recipe of SAMPLES x SEQLEN tokens written as
# FORMAT (gguf: Q4_K_M, solved on the k-quant grids; gptq: the GPTQ
# checkpoint, int4 group 128).
# Per run: the job's wall time; per block (the job's figures divided by
# LAYERS): the block tasks' compute time, the bytes the coordinator streamed
# to and from workers and the bytes workers read without fetching (held
# activations, the model root), all from the programs' /metrics and logs;
# the coordinator's and the largest worker's peak RSS; the scaling
# efficiency T(1) / (K T(K)) per mode. Mode "dp" is sequential with
# data-parallel calibration: the calibration set in as many shards as the
# largest worker count (passes of SAMPLES / that many sequences), the same
# recipe for every worker count. Within a mode the outputs of every
# worker count are compared byte for byte (equal where one kernel class ran
# them: CPU workers of one --threads).
#
# usage: bash bench/scale.sh BUILD_DIR [WORK_DIR] > table.md
# Env: LAYERS (2), WORKERS ("1 2 4"), MODES ("sequential parallel dp"),
# SAMPLES (16), SEQLEN (512), FORMAT (gguf), SHAPE (empty: Llama-3-70B), THREADS (CPU
# threads per worker; default nproc / K), BACKEND (cpu, or cuda: workers
# are quant-worker-cuda --backend cuda --devices 0, sharing GPU 0),
# COORDINATOR_FLAGS (more quant-coordinator flags, e.g.
# --defer_activations=false), WORKER_FLAGS (more quant-worker flags, e.g.
# --upload_streams=1).
set -euo pipefail
build=$(cd "$1" && pwd)
work=${2:-/tmp/scale_bench}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layers=${LAYERS:-2}
counts=(${WORKERS:-1 2 4})
modes=(${MODES:-sequential parallel dp})
samples=${SAMPLES:-16}
seqlen=${SEQLEN:-512}
shape=${SHAPE:-}
backend=${BACKEND:-cpu}
format=${FORMAT:-gguf}
quantctl=$build/client/quantctl
coordinator_bin=$build/coordinator/quant-coordinator
worker_bin=$build/worker/quant-worker
worker_args=()
if [[ $backend == cuda ]]; then
  worker_bin=$build/worker/quant-worker-cuda
  worker_args=(--backend cuda --devices 0)
fi
worker_args+=(${WORKER_FLAGS:-})
for bin in "$quantctl" "$coordinator_bin" "$worker_bin"; do
  [[ -x $bin ]] || { echo "missing $bin (build it first)" >&2; exit 1; }
done
mkdir -p "$work/out"
work=$(cd "$work" && pwd)
data=$work
source "$here/service_lib.sh"

make_bench_model "$layers" "$shape" "$((samples * seqlen + 1))"
recipe=(--method gptq --bits 4 --group-size 128 --calib-tokens "$calib"
  --calib-samples "$samples" --calib-seqlen "$seqlen" --format "$format")
[[ $format == gguf ]] && recipe+=(--type Q4_K_M)
# Data-parallel calibration: one shard per worker of the largest count.
shards=$(printf '%s\n' "${counts[@]}" | sort -n | tail -1)
dp=(--mode sequential --calibration-shards "$shards"
  --sequences-per-pass "$((samples / shards > 0 ? samples / shards : 1))")
mode_args() { [[ $1 == dp ]] && echo "${dp[@]}" || echo "--mode $1"; }
# The file compared across runs: the GGUF, or the checkpoint's tensors.
output_of() { [[ $format == gguf ]] && echo "$work/out/$1" || echo "$work/out/$1/model.safetensors"; }

echo "# One job over several workers"
echo
echo "Command: \`bash bench/scale.sh $1${2:+ $2}\` (LAYERS=$layers WORKERS=\"${counts[*]}\"" \
  "MODES=\"${modes[*]}\" SAMPLES=$samples SEQLEN=$seqlen FORMAT=$format SHAPE=$shape BACKEND=$backend" \
  "COORDINATOR_FLAGS=\"${COORDINATOR_FLAGS:-}\" WORKER_FLAGS=\"${WORKER_FLAGS:-}\");" \
  "$(date -u +%Y-%m-%d); commit $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "(uncommitted changes: $(git -C "$here/.." status --porcelain 2>/dev/null | wc -l) files)."
echo "Machine: \`nproc\` = $(nproc), $(lscpu | grep 'Model name' | sed 's/  */ /g')," \
  "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)$(
    command -v nvidia-smi >/dev/null && echo ", $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)")."
echo "Model: $(basename "$model"), $(cat "$model"/*.safetensors | wc -c |
  awk '{printf "%.2f GB", $1 / 1e9}') of BF16. Recipe: \`${recipe[*]/#$work\//}\`;" \
  "mode dp: \`${dp[*]}\`."
echo
echo "| mode | workers | job (s) | block compute (s/block) | coordinator -> workers (MB/block) | workers -> coordinator (MB/block) | held on workers (MB/block) | read from the model root (MB/block) | coordinator peak MiB | largest worker peak MiB | efficiency |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
mb() { awk -v b="$1" -v l="$layers" 'BEGIN {printf "%.0f", b / 1e6 / l}'; }
for mode in "${modes[@]}"; do
  first=""
  for k in "${counts[@]}"; do
    threads=${THREADS:-$(($(nproc) / k > 0 ? $(nproc) / k : 1))}
    tag=$mode-$k
    out=$work/out/$tag
    rm -rf "$out" "$out".report.*
    start_service "$tag" "$k" --shared_model_roots "$work" "${worker_args[@]}"
    run_measured outside "$work/job-$tag.log" --model "$model" --out "$out" \
      $(mode_args "$mode") "${recipe[@]}"
    to_workers=$(metric "$coordinator_metrics" 'quant_bytes_streamed_total{direction="to_worker"}')
    from_workers=$(metric "$coordinator_metrics" 'quant_bytes_streamed_total{direction="from_worker"}')
    held=0 direct=0 worker_peak=0
    for i in "${!worker_pids[@]}"; do
      held=$((held + $(metric "${worker_metrics[$i]}" 'quant_worker_local_input_bytes_total{source="held"}')))
      direct=$((direct + $(metric "${worker_metrics[$i]}" 'quant_worker_local_input_bytes_total{source="model_root"}')))
      peak=$(mib_of "${worker_pids[$i]}")
      ((peak > worker_peak)) && worker_peak=$peak
    done
    # A block's compute: its block task, or (dp) its captures, solves and
    # the forwards of its shards.
    kinds=block
    [[ $mode == dp ]] && kinds="capture|solve|forward"
    compute=$(sed -nE "s/.*: ($kinds) task [0-9]+ done in ([0-9.]+) s.*/\2/p" \
      "$work/coordinator-$tag.log" | awk -v l="$layers" '{s += $1} END {printf "%.1f", s / l}')
    stop_service
    # A 70B job's state and scratch are tens of GB; the output stays for cmp.
    rm -rf "$work/state-$tag" "$work/scratch-$tag"-*
    [[ -z $first ]] && first=$seconds
    efficiency=$(awk -v a="$first" -v b="$seconds" -v k="$k" 'BEGIN {printf "%.2f", a / (k * b)}')
    echo "| $mode | $k | $(printf %.1f "$seconds") | $compute | $(mb "$to_workers") |" \
      "$(mb "$from_workers") | $(mb "$held") | $(mb "$direct") | $coordinator_hwm |" \
      "$worker_peak | $efficiency |"
  done
done
echo
same=yes
for mode in "${modes[@]}"; do
  for k in "${counts[@]}"; do
    cmp -s "$(output_of "$mode-$k")" "$(output_of "$mode-${counts[0]}")" || same=no
  done
done
echo "Within each mode the outputs of every worker count are byte-identical" \
  "(cmp): **$same**$([[ $backend == cuda ]] && echo " (GPU workers: the" \
  "contract is a tolerance, not bytes, where blocks ran on different backends)")."
