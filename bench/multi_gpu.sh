#!/bin/bash
# One job on 1, 2, 4, 8 GPUs of one host (issue 17): a Llama-3-70B-shaped
# model of LAYERS blocks (`quantctl make-tiny-model --preset llama3-70b`, or
# SHAPE=HIDDEN:INTERMEDIATE for a quick run), a coordinator and one GPU
# worker process whose task slots are the GPUs (`--devices 0,..,N-1`), a
# calibrated GPTQ 4-bit recipe of SAMPLES x SEQLEN tokens.
#
# Modes:
# - dp: sequential, the calibration set in SHARDS shards (passes of
#   SAMPLES / SHARDS sequences) kept inside each block task
#   (`--shards-in-task`), the worker's one slot spanning the N GPUs
#   (`--devices_per_task N`): each block's shards are captured on the GPUs
#   at once, merged in shard order, solved, and its forward split over them.
#   The recipe is the same for every N, so the outputs are byte-identical.
# - parallel: every block calibrated on the FP model's activations; N slots,
#   one per GPU, take the independent block tasks.
# - sequential: the plain whole-block task on one GPU (N = 1 only), the
#   reference the dp recipe's cost is measured against.
#
# Per run: the job's wall time; per block: the mean block task from lease
# to done (worker log), the job's wall time per block, the bytes the
# coordinator streamed and the workers read locally (/metrics); the mean
# GPU utilization of the N GPUs over the job (nvidia-smi, every 250 ms);
# scaling efficiency T(1) / (N T(N)) per mode. Counts above the GPUs
# present are skipped. Outputs are compared byte for byte within a mode.
#
# usage: bash bench/multi_gpu.sh BUILD_DIR [WORK_DIR] > table.md
# Env: LAYERS (2), GPUS ("1 2 4 8"), MODES ("dp parallel"), SAMPLES (128),
# SEQLEN (2048), SHARDS (8), FORMAT (gptq; or gguf: Q4_K_M), SHAPE.
set -euo pipefail
build=$(cd "$1" && pwd)
work=${2:-/tmp/multi_gpu_bench}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
layers=${LAYERS:-2}
modes=(${MODES:-dp parallel})
samples=${SAMPLES:-128}
seqlen=${SEQLEN:-2048}
shards=${SHARDS:-8}
format=${FORMAT:-gptq}
shape=${SHAPE:-}
quantctl=$build/client/quantctl
coordinator_bin=$build/coordinator/quant-coordinator
worker_bin=$build/worker/quant-worker-cuda
for bin in "$quantctl" "$coordinator_bin" "$worker_bin"; do
  [[ -x $bin ]] || { echo "missing $bin (build it with nvcc first)" >&2; exit 1; }
done
present=$(nvidia-smi -L | wc -l)
counts=()
for n in ${GPUS:-1 2 4 8}; do ((n <= present)) && counts+=("$n"); done
mkdir -p "$work/out"
work=$(cd "$work" && pwd)
data=$work
threads=$(nproc)
source "$here/service_lib.sh"

make_bench_model "$layers" "$shape" "$((samples * seqlen + 1))"
recipe=(--method gptq --bits 4 --group-size 128 --calib-tokens "$calib"
  --calib-samples "$samples" --calib-seqlen "$seqlen" --format "$format")
[[ $format == gguf ]] && recipe+=(--type Q4_K_M)
dp=(--mode sequential --calibration-shards "$shards" --shards-in-task
  --sequences-per-pass "$((samples / shards > 0 ? samples / shards : 1))")
mode_args() {
  case $1 in
    dp) echo "${dp[@]}" ;;
    *) echo "--mode $1" ;;
  esac
}
output_of() { [[ $format == gguf ]] && echo "$work/out/$1" || echo "$work/out/$1/model.safetensors"; }

echo "# One job on several GPUs of one host"
echo
echo "Command: \`bash bench/multi_gpu.sh $1${2:+ $2}\` (LAYERS=$layers GPUS=\"${counts[*]}\"" \
  "MODES=\"${modes[*]}\" SAMPLES=$samples SEQLEN=$seqlen SHARDS=$shards FORMAT=$format SHAPE=$shape);" \
  "$(date -u +%Y-%m-%d); commit $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')."
echo "Machine: $present x $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)," \
  "\`nproc\` = $(nproc), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo);" \
  "NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-unset}."
echo "Model: $(basename "$model"), $(cat "$model"/*.safetensors | wc -c |
  awk '{printf "%.2f GB", $1 / 1e9}') of BF16. Recipe: \`${recipe[*]/#$work\//}\`;" \
  "mode dp adds \`${dp[*]}\`."
echo
echo "| mode | GPUs | job (s) | block task, lease to done (s) | job per block (s) | coordinator -> workers (MB/block) | workers -> coordinator (MB/block) | read locally (MB/block) | GPU busy | largest worker peak MiB | efficiency |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
mb() { awk -v b="$1" -v l="$layers" 'BEGIN {printf "%.0f", b / 1e6 / l}'; }
ran=()
for mode in "${modes[@]}"; do
  first=""
  for n in "${counts[@]}"; do
    [[ $mode == sequential && $n != 1 ]] && continue
    tag=$mode-$n
    out=$work/out/$tag
    rm -rf "$out" "$out".report.*
    worker_args=(--shared_model_roots "$work" --backend cuda
      --devices "$(seq -s, 0 $((n - 1)))")
    [[ $mode == dp ]] && worker_args+=(--devices_per_task "$n")
    start_service "$tag" 1 "${worker_args[@]}"
    nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader,nounits \
      -lms 250 >"$work/gpu-$tag.csv" &
    sampler=$!
    run_measured outside "$work/job-$tag.log" --model "$model" --out "$out" \
      $(mode_args "$mode") "${recipe[@]}"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    to_workers=$(metric "$coordinator_metrics" 'quant_bytes_streamed_total{direction="to_worker"}')
    from_workers=$(metric "$coordinator_metrics" 'quant_bytes_streamed_total{direction="from_worker"}')
    local_bytes=$(metric "${worker_metrics[0]}" 'quant_worker_local_input_bytes_total')
    worker_peak=$(mib_of "$worker_pid")
    block=$(sed -nE 's/.*block task .*: done in ([0-9.]+) s.*/\1/p' \
      "$work/worker-$tag-1.log" | awk '{s += $1; n++} END {printf "%.1f", n ? s / n : 0}')
    busy=$(awk -F', *' -v n="$n" '$1 < n {s += $2; c++} END {printf "%.0f%%", c ? s / c : 0}' \
      "$work/gpu-$tag.csv")
    stop_service
    rm -rf "$work/state-$tag" "$work/scratch-$tag"-*
    [[ -z $first ]] && first=$seconds
    efficiency=$(awk -v a="$first" -v b="$seconds" -v n="$n" 'BEGIN {printf "%.2f", a / (n * b)}')
    echo "| $mode | $n | $(printf %.1f "$seconds") | $block |" \
      "$(awk -v s="$seconds" -v l="$layers" 'BEGIN {printf "%.1f", s / l}') |" \
      "$(mb "$to_workers") | $(mb "$from_workers") | $(mb "$local_bytes") | $busy |" \
      "$worker_peak | $efficiency |"
    ran+=("$tag")
  done
done
echo
same=yes
for mode in "${modes[@]}"; do
  for tag in "${ran[@]}"; do
    [[ $tag == "$mode"-* ]] || continue
    cmp -s "$(output_of "$tag")" "$(output_of "$mode-${counts[0]}")" || same=no
  done
done
echo "Within each mode the outputs of every GPU count are byte-identical (cmp): **$same**."
