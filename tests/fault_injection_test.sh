#!/usr/bin/env bash
# The faults clusters have, injected into the service's processes on
# loopback. Each scenario quantizes the same small model (GPTQ 4-bit, a
# Q4_K_M GGUF) and passes when the output is byte-identical to `quantctl
# run --local` with the same recipe and no task was committed twice (the
# coordinators' logs hold at most one "task N done" per task), or when the
# refusal it provokes is precise and the coordinator serves on:
#  1. a worker SIGSTOPped past its lease, then SIGCONTed: its late calls
#     are refused (fencing), the task's other run wins;
#  2. lost CompleteTask replies: the worker retries, the commit happens once;
#  3. the coordinator killed (-9) at random points and around the final
#     rename (failpoints between a task's renames and its store commit,
#     before and after the output's rename), several times;
#  4. a partition between a worker and the coordinator longer than the
#     lease (a proxy that holds every byte, then lets them through);
#  5. a bit flipped in uploaded chunks, and a worker that sends a wrong
#     digest: refused at upload, sent again;
#  6. the coordinator's disk full during commits (a tmpfs; needs root): the
#     job waits with a clear status, the store stays intact, and it goes on
#     when space returns;
#  7. an oversized message and thousands of concurrent watchers: refused /
#     served, while the coordinator answers and a worker finishes a job.
#
# usage: fault_injection_test.sh QUANTCTL COORDINATOR WORKER FAULT_CLIENT
set -euo pipefail

quantctl=$1
coordinator=$2
worker=$3
fault_client=$4
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proxy="$here/tools/partition_proxy.py"

work=$(mktemp -d)
pids=()
mounted=""
cleanup() {
  for pid in "${pids[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
    kill -9 "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [[ -n "$mounted" ]] && umount "$mounted" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
scenario=setup
fail() {
  echo "FAIL: $scenario: $*"
  for log in "$work"/"$scenario"*.log; do
    [[ -f "$log" ]] || continue
    echo "---- $log"
    tail -n 25 "$log"
  done
  exit 1
}
pass() { echo "PASS: $scenario: $*"; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The model, its calibration tokens, and the reference output.
"$quantctl" make-tiny-model --out "$work/model" --layers 8 --hidden 256 \
  >"$work/setup.log" 2>&1 || fail "make-tiny-model"
python3 -c 'import random; r = random.Random(7); print(" ".join(str(r.randrange(500)) for _ in range(4000)))' \
  >"$work/tokens.txt"
recipe=(--model "$work/model" --method gptq --bits 4 --group-size 64
  --calib-tokens "$work/tokens.txt" --calib-samples 8 --calib-seqlen 64
  --format gguf --type Q4_K_M)
"$quantctl" run --local --threads 1 --out "$work/ref.gguf" "${recipe[@]}" \
  >>"$work/setup.log" 2>&1 || fail "run --local"
mkdir -p "$work/out"

port=$(free_port)
qc() { "$quantctl" --coordinator "127.0.0.1:$port" --insecure "$@"; }
coordinator_runs=0
coordinator_pid=""
coordinator_flags=()
# start_coordinator [VAR=VALUE ...]: environment for this run (failpoints).
start_coordinator() {
  coordinator_runs=$((coordinator_runs + 1))
  env "$@" "$coordinator" --insecure --listen "127.0.0.1:$port" \
    --metrics_address "" --state_dir "$state" --model_roots "$work" \
    --output_roots "$work/out" --lease_ms 3000 --heartbeat_ms 300 \
    "${coordinator_flags[@]}" \
    >"$work/$scenario-coordinator-$coordinator_runs.log" 2>&1 &
  coordinator_pid=$!
  pids+=("$coordinator_pid")
  for _ in $(seq 1 100); do
    qc list >/dev/null 2>&1 && return 0
    kill -0 "$coordinator_pid" 2>/dev/null || return 0  # Died (failpoint).
    sleep 0.1
  done
  fail "the coordinator did not start"
}
# start_worker NAME [PORT [VAR=VALUE ...]]
declare -A worker_pids=()
start_worker() {
  local name=$1 target=${2:-$port}
  shift $(($# > 1 ? 2 : 1))
  env "$@" "$worker" --coordinator "127.0.0.1:$target" --insecure \
    --name "$name" --threads 1 --scratch_dir "$work/scratch-$name" \
    --lease_wait_ms 500 >"$work/$scenario-worker-$name.log" 2>&1 &
  worker_pids[$name]=$!
  pids+=("${worker_pids[$name]}")
}
stop_workers() {
  for name in "${!worker_pids[@]}"; do
    kill -CONT "${worker_pids[$name]}" 2>/dev/null || true
    kill -9 "${worker_pids[$name]}" 2>/dev/null || true
    wait "${worker_pids[$name]}" 2>/dev/null || true
  done
  worker_pids=()
}
stop_coordinator() {
  kill -9 "$coordinator_pid" 2>/dev/null || true
  wait "$coordinator_pid" 2>/dev/null || true
}
new_scenario() {
  scenario=$1
  state="$work/state-$scenario"
  coordinator_runs=0
}
submit() {  # OUTPUT_NAME -> job id
  qc submit --out "$work/out/$1" "${recipe[@]}" 2>>"$work/$scenario-submit.log"
}
state_of() { qc status "$1" 2>/dev/null | sed -nE '1s/^job [0-9]+ ([a-z]+):.*/\1/p'; }
wait_state() {  # JOB STATE SECONDS
  for _ in $(seq 1 $(($3 * 10))); do
    [[ "$(state_of "$1")" == "$2" ]] && return 0
    sleep 0.1
  done
  fail "job $1 is not $2 after $3 s: $(qc status "$1" 2>&1 | head -3)"
}
# A task of kind block leased, printed as its index.
leased_block() {
  qc status "$1" 2>/dev/null |
    awk '$2 == "block" && $4 == "leased" { print $1; exit }'
}
# Sets task to a block task of $job that a worker holds, waiting for one.
wait_for_leased_block() {
  task=""
  for _ in $(seq 1 200); do
    task=$(leased_block "$job")
    [[ -n "$task" ]] && return 0
    sleep 0.05
  done
  fail "no worker held a block task of job $job"
}
# Waits until worker NAME leased task TASK of JOB under a later epoch.
taken_over() {  # JOB TASK NAME
  for _ in $(seq 1 300); do
    grep -qE "leased [a-z]+ task $1/$2 \(epoch [2-9]" \
      "$work/$scenario-worker-$3.log" && return 0
    sleep 0.05
  done
  fail "worker $3 did not take task $2 over"
}
same_as_reference() {  # OUTPUT_NAME
  cmp -s "$work/out/$1" "$work/ref.gguf" ||
    fail "$1 differs from run --local's output"
}
committed_once() {
  local twice
  twice=$(cat "$work/$scenario"-coordinator-*.log |
    grep -oE "job [0-9]+: [a-z]+ task [0-9]+ done in" | sort | uniq -d)
  [[ -z "$twice" ]] || fail "committed twice: $twice"
  cat "$work/$scenario"-coordinator-*.log |
    grep -cE "job [0-9]+: [a-z]+ task [0-9]+ done in"
}

# 1. A worker paused past its lease.
new_scenario paused
start_coordinator
start_worker a
job=$(submit paused.gguf)
wait_for_leased_block
kill -STOP "${worker_pids[a]}"
sleep 4  # Past the 3 s lease.
start_worker b
taken_over "$job" "$task" b
kill -CONT "${worker_pids[a]}"
wait_state "$job" succeeded 120
grep -qE "lease lost|stale lease|lease expired|refused|is not active" \
  "$work/paused-worker-a.log" || fail "worker a's late calls were not refused"
same_as_reference paused.gguf
commits=$(committed_once)
grep -q "lease(s) expired" "$work/paused-coordinator-1.log" ||
  fail "no lease expired"
pass "worker a stopped holding task $task past its lease; its late calls were" \
  "refused ($(grep -m1 -oE "lease lost|stale lease|lease expired|refused|is not active" \
  "$work/paused-worker-a.log" | head -1)); output byte-identical; $commits commits, none twice"
stop_workers
stop_coordinator

# 2. Lost CompleteTask replies.
new_scenario reply
start_coordinator
start_worker a "$port" QS_FAILPOINTS=worker.complete_reply_lost:3
job=$(submit reply.gguf)
wait_state "$job" succeeded 120
lost=$(grep -c "the CompleteTask reply is lost" "$work/reply-worker-a.log" || true)
((lost == 3)) || fail "$lost replies lost, 3 expected"
same_as_reference reply.gguf
commits=$(committed_once)
pass "3 CompleteTask replies lost and retried; output byte-identical;" \
  "$commits commits, none twice"
stop_workers
stop_coordinator

# 3. The coordinator killed, at random and around its commits and renames.
new_scenario killed
start_worker a
start_worker b
start_coordinator QS_FAILPOINTS=coordinator.kill_before_task_commit
first=$(submit killed.gguf)
wait "$coordinator_pid" 2>/dev/null &&
  fail "the failpoint did not kill the coordinator" || true
kills="between a task's renames and its commit"
for i in 1 2 3; do
  start_coordinator
  sleep "$(python3 -c "import random; print(round(random.uniform(0.3, 1.2), 2))")"
  stop_coordinator
done
kills+=", 3 at random"
start_coordinator QS_FAILPOINTS=coordinator.kill_before_final_rename
second=""
for _ in $(seq 1 600); do
  kill -0 "$coordinator_pid" 2>/dev/null || break
  if [[ -z "$second" && "$(state_of "$first")" == succeeded ]]; then
    second=$(submit killed-2.gguf)  # The first finished: the next assembly.
  fi
  sleep 0.1
done
kill -0 "$coordinator_pid" 2>/dev/null && fail "no assembly reached the final rename"
wait "$coordinator_pid" 2>/dev/null || true
start_coordinator QS_FAILPOINTS=coordinator.kill_after_final_rename
for _ in $(seq 1 600); do
  kill -0 "$coordinator_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$coordinator_pid" 2>/dev/null && fail "the assembly did not run again"
wait "$coordinator_pid" 2>/dev/null || true
kills+=", before and after the final rename"
start_coordinator
wait_state "$first" succeeded 120
same_as_reference killed.gguf
if [[ -n "$second" ]]; then
  wait_state "$second" succeeded 120
  same_as_reference killed-2.gguf
fi
commits=$(committed_once)
pass "coordinator killed $((coordinator_runs - 1)) times ($kills);" \
  "output byte-identical; $commits commits, none twice"
stop_workers
stop_coordinator

# 4. A partition between a worker and the coordinator, longer than the lease.
new_scenario partition
start_coordinator
proxy_port=$(free_port)
python3 "$proxy" "$proxy_port" "$port" >"$work/partition-proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
for _ in $(seq 1 50); do
  grep -q listening "$work/partition-proxy.log" && break
  sleep 0.1
done
start_worker a "$proxy_port"
job=$(submit partition.gguf)
wait_for_leased_block
kill -USR1 "$proxy_pid"
sleep 4  # Past the 3 s lease.
start_worker b
taken_over "$job" "$task" b
kill -USR2 "$proxy_pid"
wait_state "$job" succeeded 120
sleep 1
grep -qE "lease lost|stale lease|lease expired|refused|is not active|registering again" \
  "$work/partition-worker-a.log" ||
  fail "worker a's calls after the partition were not refused"
same_as_reference partition.gguf
commits=$(committed_once)
pass "worker a cut off for 4+ s holding task $task; after the partition:" \
  "$(grep -m1 -oE "lease lost|stale lease|lease expired|refused|is not active|registering again" \
  "$work/partition-worker-a.log" | head -1); output byte-identical; $commits commits, none twice"
stop_workers
stop_coordinator

# 5. Corrupted uploads: a flipped bit in chunks, a wrong digest.
new_scenario corrupt
start_coordinator
start_worker a "$port" \
  QS_FAILPOINTS=worker.upload_flip_bit:2,worker.upload_wrong_sha:2
job=$(submit corrupt.gguf)
wait_state "$job" succeeded 120
crc=$(grep -ciE "crc" "$work/corrupt-worker-a.log" || true)
sha=$(grep -ciE "digest mismatch" "$work/corrupt-worker-a.log" || true)
((crc >= 2)) || fail "$crc CRC refusals, 2 expected"
((sha >= 2)) || fail "$sha digest refusals, 2 expected"
same_as_reference corrupt.gguf
commits=$(committed_once)
pass "2 chunks with a flipped bit and 2 tensors with a wrong digest refused" \
  "at upload and sent again; output byte-identical; $commits commits, none twice"
stop_workers
stop_coordinator

# 6. The coordinator's disk full during commits.
new_scenario diskfull
if [[ $(id -u) -ne 0 ]]; then
  echo "SKIP: $scenario: mounting a small tmpfs needs root"
else
  state="$work/disk"
  mkdir -p "$state"
  mount -t tmpfs -o size=24m tmpfs "$state"
  mounted=$state
  coordinator_flags=(--min_free_disk_mb 8)
  start_coordinator
  job=$(submit diskfull.gguf)
  start_worker a
  # The disk fills while a block task runs: its upload or commit meets it.
  wait_for_leased_block
  dd if=/dev/zero of="$state/filler" bs=1M count=64 status=none 2>/dev/null || true
  for _ in $(seq 1 300); do
    qc status "$job" | grep -q "waiting: .*disk" && break
    sleep 0.1
  done
  waiting=$(qc status "$job" | sed -nE 's/^  waiting: //p')
  [[ "$waiting" == *disk* ]] || fail "the job does not say it waits for disk: $(qc status "$job" | head -3)"
  [[ "$(state_of "$job")" == running || "$(state_of "$job")" == queued ]] ||
    fail "the job is $(state_of "$job") while the disk is full"
  integrity=$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA integrity_check").fetchone()[0])' "$state/jobs.db")
  [[ "$integrity" == ok ]] || fail "the store with the disk full: $integrity"
  rm -f "$state/filler"
  wait_state "$job" succeeded 120
  same_as_reference diskfull.gguf
  commits=$(committed_once)
  pass "the disk filled while task $task ran; the job waited (\"$waiting\")," \
    "the store checked ok; with space back it finished; output" \
    "byte-identical; $commits commits, none twice"
  stop_workers
  stop_coordinator
  umount "$state" && mounted=""
  coordinator_flags=()
fi

# 7. An oversized message, and thousands of watchers.
new_scenario crowd
coordinator_flags=(--max_watchers 1500)
start_coordinator
answer=$("$fault_client" oversized --coordinator "127.0.0.1:$port" \
  --bytes $((20 << 20)))
[[ "$answer" == "status 8:"* ]] ||
  fail "a 20 MiB message was not refused with RESOURCE_EXHAUSTED: $answer"
qc list >/dev/null || fail "the coordinator stopped answering"
job=$(submit crowd.gguf)
"$fault_client" watchers --coordinator "127.0.0.1:$port" --job "$job" \
  --count 2000 --seconds 8 >"$work/crowd-watchers.log" 2>&1 &
watchers_pid=$!
sleep 3
start=$(date +%s%N)
qc list >/dev/null || fail "the coordinator did not answer under 2000 watchers"
list_ms=$((($(date +%s%N) - start) / 1000000))
rss_mb=$(($(awk '/VmRSS/ { print $2 }' "/proc/$coordinator_pid/status") / 1024))
start_worker a
wait_state "$job" succeeded 120
wait "$watchers_pid" || fail "the watchers' client failed"
read -r _ count _ answered _ early < <(head -1 "$work/crowd-watchers.log")
refused=$(sed -nE 's/^ *([0-9]+) ended: 8 too many watchers.*/\1/p' \
  "$work/crowd-watchers.log")
((answered == 1500 && refused == 500)) ||
  fail "1500 watchers answered and 500 refused expected: $(cat "$work/crowd-watchers.log")"
same_as_reference crowd.gguf
pass "a 20 MiB message refused ($answer); of $count watchers, $answered" \
  "answered and $refused refused past --max_watchers 1500;" \
  "ListJobs took ${list_ms} ms among them, the coordinator held ${rss_mb} MiB;" \
  "a worker finished a job meanwhile, byte-identical"
stop_workers
stop_coordinator
