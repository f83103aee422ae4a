# Helpers of the service benchmarks (sourced): processes started here are
# killed on exit. The caller sets quantctl, coordinator_bin, worker_bin,
# work, data (model roots besides $work) and threads.
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
now() { date +%s.%N; }
# Seconds since $1 (a `now`); awk, as bc is not everywhere.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }
mib_of() { awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
# Largest VmRSS (KiB) of process $1, sampled every 0.2 s while no assembly
# staging directory exists under $2 (with $4 = during: while one exists),
# into file $3.
sample_rss() {
  local max=0 v staging
  echo 0 >"$3"
  while kill -0 "$1" 2>/dev/null; do
    staging=no
    compgen -G "$2/.*staging" >/dev/null && staging=yes
    if [[ ${4:-} == during && $staging == yes ||
          ${4:-} != during && $staging == no ]]; then
      v=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
      if ((${v:-0} > max)); then max=$v; echo "$max" >"$3"; fi
    fi
    sleep 0.2
  done
}

# Starts a coordinator and $2 (1) worker processes, each with a metrics
# endpoint; the workers get the rest of the arguments too. Sets port,
# coordinator_pid, coordinator_metrics, worker_pids, worker_metrics (ports)
# and worker_pid (the first worker). $1: a tag for the state, scratch and
# log files. Worker binary: $worker_bin; threads each: $threads.
start_service() {
  local tag=$1 count=${2:-1} i
  shift $(($# < 2 ? $# : 2))
  port=$(free_port)
  coordinator_metrics=$(free_port)
  rm -rf "$work/state-$tag" "$work/scratch-$tag"-*
  "$coordinator_bin" --insecure --listen "127.0.0.1:$port" --state_dir "$work/state-$tag" \
    --model_roots "$work,$data" --output_roots "$work/out" \
    --metrics_address "127.0.0.1:$coordinator_metrics" ${COORDINATOR_FLAGS:-} \
    >"$work/coordinator-$tag.log" 2>&1 &
  coordinator_pid=$!
  pids+=("$coordinator_pid")
  for _ in $(seq 1 200); do
    "$quantctl" --coordinator "127.0.0.1:$port" --insecure list >/dev/null 2>&1 && break
    sleep 0.1
  done
  worker_pids=()
  worker_metrics=()
  for i in $(seq 1 "$count"); do
    worker_metrics+=("$(free_port)")
    "$worker_bin" --coordinator "127.0.0.1:$port" --insecure --name "w$i-$tag" \
      --threads "$threads" --scratch_dir "$work/scratch-$tag-$i" \
      --metrics_address "127.0.0.1:${worker_metrics[-1]}" "$@" \
      >"$work/worker-$tag-$i.log" 2>&1 &
    worker_pids+=("$!")
    pids+=("$!")
  done
  worker_pid=${worker_pids[0]}
}
stop_service() {
  local pid
  for pid in "${worker_pids[@]}"; do
    kill -TERM "$pid" && wait "$pid" || true
  done
  kill -TERM "$coordinator_pid" && wait "$coordinator_pid" || true
}
# The sum of the samples of metric $2 (a name, optionally with labels:
# 'quant_bytes_streamed_total{direction="to_worker"}') on 127.0.0.1:$1.
metric() {
  python3 - "$1" "$2" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
want = sys.argv[2]
total = 0.0
for line in text.splitlines():
    if line.startswith("#"):
        continue
    name, _, value = line.rpartition(" ")
    if name == want or (("{" not in want) and name.split("{")[0] == want):
        total += float(value)
print(f"{total:.0f}")
PY
}

# Runs `quantctl submit --watch ARGS...` on the service started last, its
# output in $2, sampling the coordinator's RSS ($1: during the assembly, or
# outside it); sets seconds, coordinator_hwm, worker_hwm (VmHWM, MiB) and
# coordinator_sampled (the largest sample, MiB).
run_measured() {
  local when=$1 log=$2 sampler start
  shift 2
  sample_rss "$coordinator_pid" "$work/out" "$log.sampled" "$when" &
  sampler=$!
  start=$(now)
  "$quantctl" --coordinator "127.0.0.1:$port" --insecure submit --watch "$@" \
    >"$log" 2>&1
  seconds=$(since "$start")
  coordinator_hwm=$(mib_of "$coordinator_pid")
  worker_hwm=$(mib_of "$worker_pid")
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  coordinator_sampled=$(awk '{printf "%.0f", $1 / 1024}' "$log.sampled")
}
# The benchmark model under $work, made once: Llama-3-70B-shaped with $1
# blocks, or with $2 = HIDDEN:INTERMEDIATE a smaller one; sets model. And
# beside it calib, $3 random token ids of its vocabulary (its weights are
# random too).
make_bench_model() {
  local layers=$1 shape=$2 tokens=$3
  model=$work/model-${shape:-llama3-70b}-l$layers
  if [[ ! -f $model/config.json ]]; then
    rm -rf "$model"
    if [[ -z $shape ]]; then
      "$quantctl" make-tiny-model --preset llama3-70b --layers "$layers" \
        --out "$model" >/dev/null
    else
      "$quantctl" make-tiny-model --hidden "${shape%%:*}" \
        --intermediate "${shape##*:}" --layers "$layers" --out "$model" >/dev/null
    fi
  fi
  calib=$work/calib-tokens.txt
  python3 - "$model/config.json" "$tokens" >"$calib" <<'PY'
import json, random, sys
vocab = json.load(open(sys.argv[1]))["vocab_size"]
random.seed(1)
print(" ".join(str(random.randrange(vocab)) for _ in range(int(sys.argv[2]))))
PY
}
