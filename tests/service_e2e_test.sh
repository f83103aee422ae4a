#!/usr/bin/env bash
# The service end to end, as separate processes over loopback: a
# coordinator and two workers quantize ../shared/data/llama-29m-books with
# GPTQ 4-bit into a GGUF file and a GPTQ safetensors directory; both are
# byte-identical to `quantctl run --local` with the same recipe on the same
# kernel class (one OpenBLAS thread everywhere), and llama.cpp loads the
# GGUF. The workers see the model root (--shared_model_roots): they read
# the weights there, verified against the digests the coordinator
# recorded, and each block goes to the worker that made its input
# activations (affinity), which reads the copy it holds. A third job
# calibrates each block data-parallel over the two workers (two shards),
# byte-identical to run --local with that recipe. Activations are committed
# by their digest and uploaded after the commit (the next block waits for
# the worker that holds them). Then the faults:
#  - a worker killed holding activations it committed that way, before
#    their upload: once it is gone their maker runs again elsewhere, and
#    the output is byte-identical;
#  - kill -9 a worker in the middle of a task (with the activations it
#    holds and those it was computing): its lease expires, the other worker
#    takes the task, fetching what the dead one held from the coordinator,
#    and the output is byte-identical;
#  - kill -9 the coordinator in the middle of a job and start it again: the
#    job continues from its committed tasks (none is done twice) and the
#    output is byte-identical;
#  - a job that failed on a task fault (a model shard gone) resumes with
#    `quantctl resume` once the shard is back.
#
# usage: service_e2e_test.sh QUANTCTL COORDINATOR WORKER NODE_MODULES SHARED_DATA
# Exit status: 0 pass, 1 failure, 77 skipped (no shared data).
set -euo pipefail

quantctl=$1
coordinator=$2
worker=$3
node_modules=$4
shared=$5
checker="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/llamacpp/gguf_check.mjs"

data=$shared/llama-29m-books
if [[ ! -d $data ]]; then
  echo "SKIP: $data is missing"
  exit 77
fi

work=$(mktemp -d)
coordinator_pid=""
declare -A worker_pids=()
cleanup() {
  for pid in "${worker_pids[@]}" $coordinator_pid; do
    kill -9 "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  for log in "$work"/*.log; do
    echo "---- $log"
    tail -n 30 "$log"
  done
  exit 1
}

# The model through symlinks, so that a shard can go missing and come back.
mkdir -p "$work/model" "$work/out" "$work/ref"
ln -s "$data"/* "$work/model/"
cp "$shared/text/calibration.txt" "$work/calib.txt"
recipe=(--method gptq --bits 4 --group-size 128 --calib "$work/calib.txt"
  --calib-samples 16 --calib-seqlen 256)
gguf=(--format gguf --type Q4_K_M)

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
metrics_port=$(free_port)
qc() { "$quantctl" --coordinator "127.0.0.1:$port" --insecure "$@"; }

coordinator_runs=0
start_coordinator() {
  coordinator_runs=$((coordinator_runs + 1))
  "$coordinator" --insecure --listen "127.0.0.1:$port" \
    --metrics_address "127.0.0.1:$metrics_port" --state_dir "$work/state" \
    --model_roots "$work" --output_roots "$work/out" --lease_ms 4000 \
    --heartbeat_ms 500 --worker_timeout_ms 3000 \
    >"$work/coordinator-$coordinator_runs.log" 2>&1 &
  coordinator_pid=$!
  for _ in $(seq 1 100); do
    qc list >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "the coordinator did not start"
}

start_worker() {  # NAME [FAILPOINTS]
  QS_FAILPOINTS="${2:-}" "$worker" --coordinator "127.0.0.1:$port" --insecure --name "$1" --threads 1 \
    --scratch_dir "$work/scratch-$1" --lease_wait_ms 1000 \
    --shared_model_roots "$work" \
    >"$work/worker-$1.log" 2>&1 &
  worker_pids[$1]=$!
}

# "job 3 running: 5/10 tasks done, ..." -> 5
tasks_done() { qc status "$1" | sed -nE '1s/.*: ([0-9]+)\/.*/\1/p'; }

same() {  # FILE REFERENCE WHAT
  cmp -s "$1" "$2" || fail "$3: $1 differs from $2"
  echo "PASS: $3 byte-identical to run --local ($(stat -c %s "$1") bytes)"
}

# 1. The references, in one process, on the workers' kernel class (one
# OpenBLAS thread: another count may round differently).
"$quantctl" run --local --threads 1 --model "$work/model" \
  --out "$work/ref/gptq" "${recipe[@]}" --format gptq >"$work/ref-gptq.log" \
  2>&1 || fail "run --local (gptq)"
"$quantctl" run --local --threads 1 --model "$work/model" \
  --out "$work/ref/model.gguf" "${recipe[@]}" "${gguf[@]}" \
  >"$work/ref-gguf.log" 2>&1 || fail "run --local (gguf)"
# Data-parallel calibration: 4 passes of 4 sequences in 2 shards.
dp=(--sequences-per-pass 4 --calibration-shards 2)
"$quantctl" run --local --threads 1 --model "$work/model" \
  --out "$work/ref/dp" "${recipe[@]}" "${dp[@]}" --format gptq \
  >"$work/ref-dp.log" 2>&1 || fail "run --local (data-parallel)"

# 2. A coordinator and two worker processes.
start_coordinator
start_worker w1
start_worker w2
id=$(qc submit --model "$work/model" --out "$work/out/model.gguf" \
  "${recipe[@]}" "${gguf[@]}")
qc watch "$id" >"$work/watch-gguf.log" 2>&1 || fail "GGUF job $id"
same "$work/out/model.gguf" "$work/ref/model.gguf" "GGUF through the service"
id=$(qc submit --model "$work/model" --out "$work/out/gptq" "${recipe[@]}" \
  --format gptq)
qc watch "$id" >"$work/watch-gptq.log" 2>&1 || fail "GPTQ job $id"
same "$work/out/gptq/model.safetensors" "$work/ref/gptq/model.safetensors" \
  "GPTQ through the service"
cmp -s "$work/out/gptq/config.json" "$work/ref/gptq/config.json" ||
  fail "GPTQ config.json differs"
id=$(qc submit --model "$work/model" --out "$work/out/dp" "${recipe[@]}" \
  "${dp[@]}" --format gptq)
qc watch "$id" >"$work/watch-dp.log" 2>&1 || fail "data-parallel job $id"
same "$work/out/dp/model.safetensors" "$work/ref/dp/model.safetensors" \
  "GPTQ with data-parallel calibration over two workers"
for name in w1 w2; do
  grep -q "capture task .*: done" "$work/worker-$name.log" ||
    fail "worker $name ran no capture task of the data-parallel job"
done
echo "PASS: the data-parallel job's captures ran on both workers"
qc workers | grep -q "w1" || fail "quantctl workers does not list w1"
direct=$(cat "$work"/worker-w*.log | grep -c "digest verified" || true)
held=$(cat "$work"/worker-w*.log | grep -c "reads the activations it holds" || true)
in_memory=$(cat "$work"/worker-w*.log | grep -c "reads the activations it holds in memory" || true)
[[ $direct -ge 1 ]] || fail "no worker read the weights from the shared model root"
[[ $held -ge 1 ]] || fail "no worker read activations it held"
[[ $in_memory -ge 1 ]] || fail "no worker read activations it held in memory"
echo "PASS: $direct tasks read their weights from the shared root (digest verified), $held the activations their worker held ($in_memory in memory), outputs as run --local's"

if command -v node >/dev/null && [[ -d $node_modules/node-llama-cpp ]]; then
  QS_NODE_MODULES=$node_modules node "$checker" --model "$work/out/model.gguf" \
    --generate 8 >"$work/llamacpp.log" 2>&1 || fail "llama.cpp rejected the GGUF"
  echo "PASS: llama.cpp loads the service's GGUF: $(tail -n 1 "$work/llamacpp.log")"
else
  echo "SKIP (part): node-llama-cpp is missing; the GGUF was not loaded"
fi

python3 - "$metrics_port" <<'PY' || fail "metrics"
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
for family in ["quant_jobs{", "quant_tasks_completed_total{", "quant_workers_active{",
               "quant_task_duration_seconds_bucket{", "quant_bytes_streamed_total{",
               "quant_queue_depth"]:
    assert family in text, family
assert 'quant_jobs{state="succeeded"} 3' in text, "three jobs succeeded"
PY
echo "PASS: /metrics"
deferred=$(cat "$work"/worker-w*.log | grep -c "committed by digest, uploaded after" || true)
[[ $deferred -ge 1 ]] || fail "no activations were committed by their digest alone"
echo "PASS: $deferred activations committed by their digest and uploaded after the commit"

# 3. A worker killed holding activations it committed by digest, before
# their upload: the only worker, it takes the first task and dies.
for name in w1 w2; do
  kill -TERM "${worker_pids[$name]}"
  wait "${worker_pids[$name]}" || fail "worker $name exited $? on SIGTERM"
  unset "worker_pids[$name]"
done
start_worker wk worker.kill_before_deferred_upload
id=$(qc submit --model "$work/model" --out "$work/out/unuploaded.gguf" \
  "${recipe[@]}" "${gguf[@]}")
for _ in $(seq 1 300); do
  kill -0 "${worker_pids[wk]}" 2>/dev/null || break
  sleep 0.1
done
kill -0 "${worker_pids[wk]}" 2>/dev/null && fail "worker wk did not die"
{ wait "${worker_pids[wk]}"; } 2>/dev/null || true  # 137: killed, as meant.
unset "worker_pids[wk]"
grep -q "failpoint: killed before uploading activations" "$work/worker-wk.log" ||
  fail "worker wk died otherwise: $(tail -n 3 "$work/worker-wk.log")"
start_worker w1
start_worker w2
qc watch "$id" >"$work/watch-unuploaded.log" 2>&1 ||
  fail "job $id after its holder of activations died"
same "$work/out/unuploaded.gguf" "$work/ref/model.gguf" \
  "GGUF after a worker died holding activations not uploaded"
grep -q "job $id: a worker left holding activations not uploaded" \
  "$work/coordinator-$coordinator_runs.log" ||
  fail "the coordinator did not compute the lost activations again"
echo "PASS: the dead worker's unuploaded activations were computed again"

# 4. kill -9 a worker holding a block task.
id=$(qc submit --model "$work/model" --out "$work/out/killed.gguf" \
  "${recipe[@]}" "${gguf[@]}")
victim=""
for _ in $(seq 1 300); do
  # "w-...  w1  cpu  1  ...  3/4  0": the name of a worker holding task >= 2.
  victim=$(qc workers | awk -v job="$id" '$6 ~ "^"job"/" {split($6, t, "/"); if (t[2] >= 2) {print $2; exit}}')
  [[ -n $victim ]] && break
  sleep 0.1
done
[[ -n $victim ]] || fail "no worker took a block task"
sleep 0.5
kill -9 "${worker_pids[$victim]}"
unset "worker_pids[$victim]"
echo "killed worker $victim in the middle of a task of job $id"
qc watch "$id" >"$work/watch-killed.log" 2>&1 || fail "job $id after kill -9"
same "$work/out/killed.gguf" "$work/ref/model.gguf" "GGUF after a worker died"
qc status "$id" >"$work/status-killed.txt"
# Columns: task kind layer state worker faults lost seconds.
awk 'NR > 3 && $7 >= 1 {found = 1} END {exit !found}' "$work/status-killed.txt" ||
  fail "no task records the lost worker: $(cat "$work/status-killed.txt")"
echo "PASS: the dead worker's task was re-leased and the job finished"
start_worker "${victim}b"

# 5. kill -9 the coordinator in the middle of a job.
id=$(qc submit --model "$work/model" --out "$work/out/restarted" \
  "${recipe[@]}" --format gptq)
for _ in $(seq 1 600); do
  [[ $(tasks_done "$id") -ge 3 ]] && break
  sleep 0.1
done
kill -9 "$coordinator_pid"
wait "$coordinator_pid" 2>/dev/null || true  # 137: killed, as meant.
first_log=$work/coordinator-$coordinator_runs.log
start_coordinator
second_log=$work/coordinator-$coordinator_runs.log
# The store decides what was committed: a commit can land between the last
# log line and the kill, so the restarted coordinator's count is the truth.
done_before=$(sed -nE "s/.*job $id: continuing .*, ([0-9]+) of [0-9]+ tasks committed.*/\1/p" "$second_log")
[[ -n $done_before ]] || fail "the restarted coordinator did not report job $id's committed tasks"
echo "killed the coordinator with $done_before tasks of job $id committed"
qc watch "$id" >"$work/watch-restarted.log" 2>&1 ||
  fail "job $id after the coordinator restarted"
same "$work/out/restarted/model.safetensors" "$work/ref/gptq/model.safetensors" \
  "GPTQ after a coordinator restart"
for task in $(sed -nE "s/.*job $id: .* task ([0-9]+) done.*/\1/p" "$first_log"); do
  if grep -qE "job $id: .* task $task done" "$second_log"; then
    fail "task $task was committed before the restart and done again"
  fi
done
total=$(qc status "$id" | sed -nE '1s/.*\/([0-9]+) tasks.*/\1/p')
done_after=$(grep -cE "job $id: .* task [0-9]+ done" "$second_log" || true)
[[ $((done_before + done_after)) -eq $total ]] ||
  fail "$done_before + $done_after tasks done for $total"
echo "PASS: after the restart only the $done_after uncommitted of $total tasks ran"

# 6. A task fault (a shard gone), then `quantctl resume` once it is back.
shard=$(cd "$work/model" && ls model-*.safetensors | tail -n 1)
id=$(qc submit --model "$work/model" --out "$work/out/resumed" \
  "${recipe[@]}" --format gptq)
mv "$work/model/$shard" "$work/$shard.away"
if qc watch "$id" >"$work/watch-failed.log" 2>&1; then
  fail "job $id succeeded without $shard"
fi
grep -q "failed 3 times" "$work/watch-failed.log" ||
  fail "job $id did not fail on its task budget: $(tail -n 2 "$work/watch-failed.log")"
mv "$work/$shard.away" "$work/model/$shard"
qc resume "$id" >/dev/null
qc watch "$id" >"$work/watch-resumed.log" 2>&1 || fail "resumed job $id"
same "$work/out/resumed/model.safetensors" "$work/ref/gptq/model.safetensors" \
  "GPTQ after quantctl resume"

# 7. SIGTERM drains: idle workers and the coordinator exit 0.
for name in "${!worker_pids[@]}"; do
  kill -TERM "${worker_pids[$name]}"
  wait "${worker_pids[$name]}" || fail "worker $name exited $? on SIGTERM"
  unset "worker_pids[$name]"
done
kill -TERM "$coordinator_pid"
wait "$coordinator_pid" || fail "the coordinator exited $? on SIGTERM"
coordinator_pid=""
echo "PASS: SIGTERM drains the workers and the coordinator"
echo "PASS: service end to end"
