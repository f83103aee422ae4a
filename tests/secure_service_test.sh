#!/usr/bin/env bash
# The service's programs with mutual TLS and bearer tokens, over loopback,
# with credentials from scripts/make_credentials.sh:
#  - a coordinator started without credentials and without --insecure
#    refuses to start; with --insecure beyond loopback it warns loudly;
#  - a worker (worker certificate and token) and quantctl (alice's) run a
#    job to the end;
#  - quantctl with no credentials, with the worker's token, or with a
#    certificate of another CA is refused, each with its reason;
#  - bob cannot cancel alice's job, an admin can.
#
# usage: secure_service_test.sh QUANTCTL COORDINATOR WORKER
set -euo pipefail

quantctl=$1
coordinator=$2
worker=$3
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

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
  for log in "$work"/*.log; do
    echo "---- $log"
    tail -n 20 "$log"
  done
  exit 1
}

creds=$work/creds
bash "$root/scripts/make_credentials.sh" "$creds" localhost alice bob \
  ops:admin >/dev/null
bash "$root/scripts/make_credentials.sh" "$work/other" localhost alice \
  >/dev/null
"$quantctl" make-tiny-model --out "$work/model" --layers 2 --hidden 128 \
  >"$work/make.log" 2>&1 || fail "make-tiny-model"
mkdir -p "$work/out"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
serve=(--state_dir "$work/state" --model_roots "$work" --output_roots
  "$work/out" --metrics_address "")

# 1. No credentials and no --insecure: refused, saying what to give.
if "$coordinator" --listen "127.0.0.1:$port" "${serve[@]}" \
  >"$work/bare.log" 2>&1; then
  fail "a coordinator without credentials started"
fi
grep -q -- "--insecure" "$work/bare.log" || fail "no hint in: $(cat "$work/bare.log")"
echo "PASS: no credentials and no --insecure: the coordinator refuses to start"

# 2. --insecure beyond loopback: a loud warning, then serving.
"$coordinator" --insecure --listen "0.0.0.0:$port" "${serve[@]}" \
  >"$work/insecure.log" 2>&1 &
insecure_pid=$!
pids+=("$insecure_pid")
for _ in $(seq 1 100); do
  grep -q "serving on port" "$work/insecure.log" && break
  sleep 0.1
done
grep -q "WARNING: INSECURE: serving 0.0.0.0:$port" "$work/insecure.log" ||
  fail "no warning for an insecure coordinator on 0.0.0.0"
kill -TERM "$insecure_pid"
wait "$insecure_pid" || true
echo "PASS: --insecure on 0.0.0.0 is reported: $(grep -m1 WARNING "$work/insecure.log" | cut -c1-100)..."

# 3. The secure coordinator, a worker and quantctl.
"$coordinator" --listen "127.0.0.1:$port" "${serve[@]}" \
  --tls_cert "$creds/coordinator.crt" --tls_key "$creds/coordinator.key" \
  --tls_client_ca "$creds/ca.crt" --principals "$creds/principals.json" \
  >"$work/coordinator.log" 2>&1 &
pids+=($!)
as() {  # PRINCIPAL [CA_DIR] quantctl-args...
  local who=$1 dir=$creds
  shift
  if [[ "$1" == --ca-dir=* ]]; then dir=${1#--ca-dir=}; shift; fi
  "$quantctl" --coordinator "localhost:$port" --tls_ca "$dir/ca.crt" \
    --tls_cert "$dir/$who.crt" --tls_key "$dir/$who.key" \
    --token_file "$dir/$who.token" "$@"
}
for _ in $(seq 1 100); do
  as alice list >/dev/null 2>&1 && break
  sleep 0.1
done
as alice list >/dev/null || fail "alice cannot list jobs"
grep -q "mutual TLS and bearer tokens" "$work/coordinator.log" ||
  fail "the coordinator does not say it is secure"

"$worker" --coordinator "localhost:$port" --tls_ca "$creds/ca.crt" \
  --tls_cert "$creds/worker.crt" --tls_key "$creds/worker.key" \
  --token_file "$creds/worker.token" --name w1 --threads 1 \
  --scratch_dir "$work/scratch" --lease_wait_ms 500 >"$work/worker.log" 2>&1 &
worker_pid=$!
pids+=("$worker_pid")
recipe=(--model "$work/model" --method rtn --bits 4 --group-size 64
  --format gptq)
as alice submit --watch --out "$work/out/done" "${recipe[@]}" \
  >"$work/submit.log" 2>&1 || fail "alice's job did not finish"
[[ -f "$work/out/done/model.safetensors" ]] || fail "no output"
echo "PASS: a worker and quantctl over mutual TLS ran a job to the end"
kill -TERM "$worker_pid"
wait "$worker_pid" || fail "the worker exited $? on SIGTERM"

# 4. Refusals, each with its reason.
expect_refused() {  # WHAT PATTERN command...
  local what=$1 pattern=$2
  shift 2
  if "$@" >"$work/refused.log" 2>&1; then fail "$what: allowed"; fi
  grep -q -- "$pattern" "$work/refused.log" ||
    fail "$what: refused for another reason: $(cat "$work/refused.log")"
  echo "PASS: $what: refused ($(grep -m1 -o -- "$pattern" "$work/refused.log" | head -1))"
}
expect_refused "quantctl without credentials" "--insecure" \
  "$quantctl" --coordinator "localhost:$port" list
expect_refused "quantctl with the worker's certificate and token" \
  "PERMISSION_DENIED\|not for clients" as worker list
expect_refused "quantctl with another CA's certificate" \
  "UNAVAILABLE\|unavailable\|handshake\|failed to connect" \
  as alice --ca-dir="$work/other" list

# No worker now: the job stays queued.
job=$(as alice submit --out "$work/out/owned" "${recipe[@]}")
expect_refused "bob cancelling alice's job" "belongs to alice" as bob cancel "$job"
as ops cancel "$job" >/dev/null || fail "an admin could not cancel alice's job"
echo "PASS: an admin cancelled alice's job"
