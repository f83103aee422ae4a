#!/usr/bin/env bash
# Our metrics as a real Prometheus sees them: Debian's prometheus scrapes a
# live coordinator and two workers (one second apart) while a GPTQ job runs
# on ../shared/data/llama-29m-books; then every query of every panel of the
# Grafana dashboard (deploy/grafana/quant-service.json) is evaluated through
# Prometheus's HTTP API over the job's run and must return data, the job
# progress panel must reach 100% when the job ends, and the alert rules
# (deploy/prometheus/alerts.yaml) must load and stay quiet.
#
# usage: prometheus_scrape_test.sh QUANTCTL COORDINATOR WORKER SHARED_DATA
#          [SECOND_WORKER [FLAG...]]
# SECOND_WORKER (default WORKER) runs the second worker, with FLAGs: the
# build passes quant-worker-cuda where it has one, whose metrics server once
# could not start beside the CUDA libraries' thread-local storage
# (common/thread_stack); on the GPU machine, with --backend=cuda, the GPU
# panels (quant_gpu_*, from NVML) must return data too. Without a GPU
# worker in the run they are evaluated and said to be skipped.
# Exit status: 0 pass, 1 failure, 77 skipped (no prometheus, no data).
set -euo pipefail
quantctl=$1
coordinator=$2
shared=$4
workers=("$3" "${5:-$3}")
second_worker_flags=("${@:6}")
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# QS_SCRAPE_MODEL and QS_SCRAPE_TOKENS: another model directory and its
# calibration token ids (the GPU machine's run makes a small model with
# `quantctl make-tiny-model`, to keep what it carries small).
data=${QS_SCRAPE_MODEL:-$shared/llama-29m-books}
calibration=(--calib "$shared/text/calibration.txt")
[[ -n ${QS_SCRAPE_TOKENS:-} ]] && calibration=(--calib-tokens "$QS_SCRAPE_TOKENS")
prometheus=$(command -v prometheus || true)
[[ -x /usr/bin/prometheus ]] && prometheus=/usr/bin/prometheus
[[ -n $prometheus ]] || { echo "SKIP: no prometheus (Debian's package)"; exit 77; }
[[ -d $data ]] || { echo "SKIP: $data is missing"; exit 77; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for log in "$work"/*.log; do echo "---- $log"; tail -n 20 "$log"; done
  exit 1
}
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
coordinator_metrics=$(free_port)
worker_metrics=($(free_port) $(free_port))
prometheus_port=$(free_port)
qc() { "$quantctl" --coordinator "127.0.0.1:$port" --insecure "$@"; }

mkdir -p "$work/out"
"$coordinator" --insecure --listen "127.0.0.1:$port" \
  --metrics_address "127.0.0.1:$coordinator_metrics" --state_dir "$work/state" \
  --model_roots "$shared,$(dirname "$data")" --output_roots "$work/out" --heartbeat_ms 500 \
  >"$work/coordinator.log" 2>&1 &
pids+=($!)
for i in 0 1; do
  flags=()
  ((i == 1)) && flags=("${second_worker_flags[@]}")
  "${workers[$i]}" --coordinator "127.0.0.1:$port" --insecure --name "w$i" --threads 1 \
    --scratch_dir "$work/scratch-$i" --lease_wait_ms 1000 \
    --metrics_address "127.0.0.1:${worker_metrics[$i]}" "${flags[@]}" \
    >"$work/worker-$i.log" 2>&1 &
  pids+=($!)
done

# Prometheus with the rules the deployment uses, scraping every second under
# the job names the alerts and dashboard expect.
cp "$root/deploy/prometheus/alerts.yaml" "$work/alerts.yaml"
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yaml]
scrape_configs:
  - job_name: quant-coordinator
    static_configs: [{targets: ["127.0.0.1:$coordinator_metrics"]}]
  - job_name: quant-worker
    static_configs:
      - targets: ["127.0.0.1:${worker_metrics[0]}", "127.0.0.1:${worker_metrics[1]}"]
YAML
"$prometheus" --config.file="$work/prometheus.yml" \
  --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prometheus_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
api="http://127.0.0.1:$prometheus_port/api/v1"
http_ok() {
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1])' \
    "$1" 2>/dev/null
}
for _ in $(seq 1 150); do
  http_ok "$api/query?query=up" && qc list >/dev/null 2>&1 && break
  sleep 0.2
done
http_ok "$api/query?query=up" || fail "prometheus did not start"

start=$(date +%s)
sleep 3  # A few scrapes before the job.
id=$(qc submit --model "$data" --out "$work/out/model.gguf" --method gptq \
  --bits 4 --group-size 128 "${calibration[@]}" \
  --calib-samples 16 --calib-seqlen 256 --format gguf --type Q4_K_M)
qc watch "$id" >"$work/watch.log" 2>&1 || fail "job $id"
sleep 5  # The last scrapes after the job ended.
end=$(date +%s)
echo "job $id ran while Prometheus scraped ($((end - start)) s)"

python3 - "$api" "$start" "$end" "$root/deploy/grafana/quant-service.json" "$id" <<'PY' ||
import json, sys, urllib.parse, urllib.request
api, start, end, dashboard, job = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

def query_range(expr):
    url = api + "/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": 1})
    reply = json.load(urllib.request.urlopen(url))
    assert reply["status"] == "success", reply
    return reply["data"]["result"]

failed = 0
# The GPU panels have data where a GPU worker ran (its gauges come from
# NVML, on GPU machines only).
gpu_workers = query_range('max(quant_workers_active{backend="cuda"})')
gpu_run = any(float(v) > 0 for s in gpu_workers for _, v in s["values"])
for panel in json.load(open(dashboard))["panels"]:
    for target in panel["targets"]:
        series = query_range(target["expr"])
        points = sum(len(s["values"]) for s in series)
        ok = points > 0
        if not ok and "quant_gpu_" in target["expr"] and not gpu_run:
            print(f"SKIP: panel \"{panel['title']}\": no GPU worker in this "
                  f"run: {target['expr']}")
            continue
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}: panel \"{panel['title']}\": "
              f"{len(series)} series, {points} points: {target['expr']}")
# Every process served its metrics (the coordinator and both workers).
up = {s["metric"]["instance"]: s["values"][-1][1] for s in query_range("up")}
ok = len(up) == 3 and all(v == "1" for v in up.values())
print(f"{'PASS' if ok else 'FAIL'}: scrape targets up at the end: {up}")
failed += not ok
progress = query_range(f'max(quant_job_progress_ratio{{job_id="{job}"}})')
top = max(float(v) for s in progress for _, v in s["values"]) if progress else 0
print(f"{'PASS' if top == 1 else 'FAIL'}: job {job}'s progress reached {top:.0%}")
failed += top != 1
alerts = json.load(urllib.request.urlopen(api + "/rules"))["data"]["groups"]
rules = [r for g in alerts for r in g["rules"]]
firing = [r["name"] for r in rules if r.get("state") == "firing"]
print(f"{'PASS' if len(rules) >= 5 and not firing else 'FAIL'}: "
      f"{len(rules)} alert rules loaded, firing: {firing or 'none'}")
failed += len(rules) < 5 or bool(firing)
sys.exit(1 if failed else 0)
PY
  fail "a dashboard query returned nothing, or the alerts misbehaved"
