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

# Starts a coordinator and one worker process: sets port, coordinator_pid,
# worker_pid. $1: a tag for the state, scratch and log files.
start_service() {
  local tag=$1
  port=$(free_port)
  rm -rf "$work/state-$tag" "$work/scratch-$tag"
  "$coordinator_bin" --insecure --listen "127.0.0.1:$port" --state_dir "$work/state-$tag" \
    --model_roots "$work,$data" --output_roots "$work/out" \
    >"$work/coordinator-$tag.log" 2>&1 &
  coordinator_pid=$!
  pids+=("$coordinator_pid")
  for _ in $(seq 1 200); do
    "$quantctl" --coordinator "127.0.0.1:$port" --insecure list >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$worker_bin" --coordinator "127.0.0.1:$port" --insecure --name "w-$tag" \
    --threads "$threads" --scratch_dir "$work/scratch-$tag" \
    >"$work/worker-$tag.log" 2>&1 &
  worker_pid=$!
  pids+=("$worker_pid")
}
stop_service() {
  kill -TERM "$worker_pid" && wait "$worker_pid" || true
  kill -TERM "$coordinator_pid" && wait "$coordinator_pid" || true
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
  seconds=$(echo "$(now) - $start" | bc)
  coordinator_hwm=$(mib_of "$coordinator_pid")
  worker_hwm=$(mib_of "$worker_pid")
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  coordinator_sampled=$(awk '{printf "%.0f", $1 / 1024}' "$log.sampled")
}
