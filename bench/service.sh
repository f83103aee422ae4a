#!/bin/bash
# The service's own costs, all on loopback:
#  1. streaming throughput coordinator -> worker (FetchInputs) and worker ->
#     coordinator (UploadResult) through a real Coordinator and real gRPC
#     channels, against a CRC-32C + SHA-256 pass over the same bytes
#     (bench/service_stream.cc);
#  2. service overhead vs the engine: one GPTQ 4-bit GGUF Q4_K_M recipe on
#     llama-29m-books run three ways, interleaved, each REPS times (median
#     wall time): `quantctl quantize` (the engine in one process),
#     `quantctl run --local --workers 1` (in-process coordinator and worker)
#     and a coordinator + 1 worker process over loopback (`quantctl submit
#     --watch`, the two processes already up); the three GGUF files must be
#     byte-identical;
#  3. peak RSS (VmHWM from /proc/PID/status once the job is done) of a
#     coordinator and a worker process, fresh for each model, on a data-free
#     RTN job (GPTQ format) over models of growing size.
# Every engine runs with 2 OpenMP threads (OMP_NUM_THREADS=2, --threads 2).
#
# usage: bash bench/service.sh BUILD_DIR [WORK_DIR] > table.md
# Needs BUILD_DIR/bench/service_stream (cmake --build BUILD_DIR --target
# bench_service_stream). Env: QS_SHARED_DATA (default ../shared/data),
# REPS (3), STREAM_REPS (7), RSS_MODELS ("1024:8 2048:4 2048:8",
# hidden:layers of the synthetic models besides llama-29m-books; 1.4 GB of
# disk in WORK_DIR/models, kept for the next run).
set -euo pipefail
build=$(cd "$1" && pwd)
work=${2:-/tmp/service_bench}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data=${QS_SHARED_DATA:-$(cd "$here/../../shared/data" && pwd)}
reps=${REPS:-3}
stream_reps=${STREAM_REPS:-7}
rss_models=(${RSS_MODELS:-1024:8 2048:4 2048:8})
quantctl=$build/client/quantctl
coordinator_bin=$build/coordinator/quant-coordinator
worker_bin=$build/worker/quant-worker
stream=$build/bench/service_stream
model=$data/llama-29m-books
calib=$data/text/calibration.txt
threads=2
export OMP_NUM_THREADS=$threads
for bin in "$quantctl" "$coordinator_bin" "$worker_bin" "$stream"; do
  [[ -x $bin ]] || { echo "missing $bin (build it first)" >&2; exit 1; }
done
mkdir -p "$work"
work=$(cd "$work" && pwd)

source "$here/service_lib.sh"

echo "# Service benchmark"
echo
echo "Command: \`bash bench/service.sh $1${2:+ $2}\`; $(date -u +%Y-%m-%d);" \
  "commit $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "(uncommitted changes: $(git -C "$here/.." status --porcelain 2>/dev/null | wc -l) files)."
echo "Machine: \`nproc\` = $(nproc), $(lscpu | grep 'Model name' | sed 's/  */ /g')," \
  "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo);" \
  "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "OMP_NUM_THREADS=$threads for every process; workers --threads $threads."
echo

# ---- 1. Streaming throughput.
echo "## 1. Streaming throughput on loopback"
echo
echo "\`$1/bench/service_stream --reps=$stream_reps --chunks=1,4\` (a random-weight Llama, hidden"
echo "2048, 2 layers; block 0 of a data-free RTN 8-bit job; MB = 1e6 bytes)."
echo
"$stream" --reps="$stream_reps" --chunks=1,4 --tmp="$work/stream" 2>"$work/stream.log"
rm -rf "$work/stream"
echo

# ---- 2. Service overhead vs the engine.
recipe=(--method gptq --bits 4 --group-size 128 --calib "$calib"
  --calib-samples 16 --calib-seqlen 256 --format gguf --type Q4_K_M)
echo "## 2. Service overhead vs the engine"
echo
echo "llama-29m-books, \`${recipe[*]/#$data\//}\`, each way $reps times," \
  "interleaved; wall time of the command (for the service: \`quantctl submit" \
  "--watch\` with the coordinator and worker processes already up)."
echo
mkdir -p "$work/out"
start_service overhead
declare -A times=()
for rep in $(seq 1 "$reps"); do
  for way in engine local service; do
    out=$work/out/$way-$rep.gguf
    rm -rf "$out" "$out.work"
    start=$(now)
    case $way in
      engine)
        "$quantctl" quantize --model "$model" --out "$out" "${recipe[@]}" \
          >"$work/$way-$rep.log" 2>&1 ;;
      local)
        "$quantctl" run --local --workers 1 --threads "$threads" \
          --model "$model" --out "$out" "${recipe[@]}" >"$work/$way-$rep.log" 2>&1 ;;
      service)
        "$quantctl" --coordinator "127.0.0.1:$port" --insecure submit --watch \
          --model "$model" --out "$out" "${recipe[@]}" >"$work/$way-$rep.log" 2>&1 ;;
    esac
    times[$way]+="$(since "$start") "
    rm -rf "$out.work"
  done
done
stop_service
engine_median=$(echo "${times[engine]}" | tr ' ' '\n' | grep . | median)
echo "| way | runs (s) | median (s) | vs engine |"
echo "| --- | --- | --- | --- |"
for way in engine local service; do
  label=$way
  [[ $way == engine ]] && label="quantctl quantize (engine, one process)"
  [[ $way == local ]] && label="quantctl run --local --workers 1"
  [[ $way == service ]] && label="coordinator + 1 worker process (submit --watch)"
  m=$(echo "${times[$way]}" | tr ' ' '\n' | grep . | median)
  runs=$(for t in ${times[$way]}; do printf "%.1f " "$t"; done)
  echo "| $label | ${runs% } | $(printf %.1f "$m") |" \
    "$(awk -v m="$m" -v e="$engine_median" 'BEGIN {printf "%+.1f%%", 100 * (m - e) / e}') |"
done
echo
identical=yes
for rep in $(seq 1 "$reps"); do
  for way in engine local service; do
    cmp -s "$work/out/$way-$rep.gguf" "$work/out/engine-1.gguf" || identical=no
  done
done
echo "All $((3 * reps)) GGUF files byte-identical (cmp): **$identical**" \
  "($(stat -c %s "$work/out/engine-1.gguf") bytes)."
rm -f "$work"/out/*.gguf
echo

# ---- 3. Peak RSS vs model size.
echo "## 3. Peak RSS of the coordinator and the worker vs model size"
echo
echo "Data-free RTN, GPTQ format (\`--method rtn --bits 4 --calib-samples 0" \
  "--format gptq\`); a fresh coordinator and worker process per model;" \
  "VmHWM read from /proc once \`submit --watch\` returned. The synthetic" \
  "models are \`quantctl make-tiny-model --hidden H --layers N\`."
echo
echo "| model | checkpoint MB | one block MB | job (s) | coordinator peak RSS MiB | coordinator peak RSS before assembly MiB (sampled) | worker peak RSS MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
models=("$model")
for spec in "${rss_models[@]}"; do
  dir=$work/models/tiny-h${spec%%:*}-l${spec##*:}
  if [[ ! -f $dir/config.json ]]; then
    rm -rf "$dir"
    "$quantctl" make-tiny-model --out "$dir" --hidden "${spec%%:*}" \
      --layers "${spec##*:}" >/dev/null
  fi
  models+=("$dir")
done
for m in "${models[@]}"; do
  name=$(basename "$m")
  bytes=$(cat "$m"/*.safetensors | wc -c)
  block=$(python3 - "$m" <<'PY'
import json, os, struct, sys, re, collections
sizes = collections.Counter()
for f in os.listdir(sys.argv[1]):
    if f.endswith(".safetensors"):
        with open(os.path.join(sys.argv[1], f), "rb") as h:
            n = struct.unpack("<Q", h.read(8))[0]
            header = json.loads(h.read(n))
        for k, v in header.items():
            r = re.match(r"model\.layers\.(\d+)\.", k)
            if r:
                sizes[int(r.group(1))] += v["data_offsets"][1] - v["data_offsets"][0]
print(f"{max(sizes.values()) / 1e6:.1f}")
PY
)
  start_service "rss-$name"
  out=$work/out/rss-$name
  rm -rf "$out"
  run_measured outside "$work/rss-$name.log" --model "$m" --out "$out" \
    --method rtn --bits 4 --group-size 128 --calib-samples 0 --format gptq
  stop_service
  rm -rf "$out"
  echo "| $name | $(awk -v b="$bytes" 'BEGIN {printf "%.0f", b / 1e6}') | $block |" \
    "$(printf %.1f "$seconds") | $coordinator_hwm | $coordinator_sampled |" \
    "$worker_hwm |"
done
