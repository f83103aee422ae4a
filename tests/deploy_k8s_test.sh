#!/bin/bash
# deploy/k8s checked with the real tools: every overlay renders with
# `kubectl kustomize`, and every object it renders validates against the
# Kubernetes API schemas offline (npm's kubernetes-models and
# @kubernetes-models/prometheus-operator, tests/deploy/validate_manifests.mjs),
# and holds no field those schemas lack (tests/deploy/check_fields.mjs, the
# TypeScript compiler on the same packages' types).
# The validator is shown to fail on a bad value before it is trusted.
#
# usage: deploy_k8s_test.sh NODE_MODULES   (scripts/install_deps.sh puts the
# packages of tests/deploy/package.json in .cache/node-deploy/node_modules)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
modules=${1:-$root/.cache/node-deploy/node_modules}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

command -v kubectl >/dev/null || { echo "SKIP: no kubectl"; exit 77; }
[[ -d $modules/kubernetes-models && -d $modules/typescript ]] ||
  { echo "SKIP: no kubernetes-models in $modules (scripts/install_deps.sh)"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

to_json() {  # YAML stream -> JSON array of its objects
  python3 -c 'import json, sys, yaml
json.dump([o for o in yaml.safe_load_all(sys.stdin) if o], sys.stdout)'
}

overlays=$(cd "$root/deploy/k8s/overlays" && ls)
for overlay in $overlays; do
  kubectl kustomize "$root/deploy/k8s/overlays/$overlay" >"$work/$overlay.yaml" ||
    fail "kubectl kustomize deploy/k8s/overlays/$overlay"
  to_json <"$work/$overlay.yaml" >"$work/$overlay.json"
  node "$here/deploy/validate_manifests.mjs" "$work/$overlay.json" "$modules" \
    >"$work/$overlay.log" || { cat "$work/$overlay.log"; fail "overlay $overlay"; }
  node "$here/deploy/check_fields.mjs" "$work/$overlay.json" "$modules" \
    >"$work/$overlay.fields.log" || { cat "$work/$overlay.fields.log"; fail "overlay $overlay"; }
  echo "PASS: overlay $overlay: $(tail -n 1 "$work/$overlay.log"), $(tail -n 1 "$work/$overlay.fields.log")"
done

# What every overlay must hold.
for overlay in $overlays; do
  python3 - "$work/$overlay.json" "$overlay" "$root" <<'PY' || fail "overlay $overlay lacks a required piece"
import json, sys, yaml
objects = json.load(open(sys.argv[1]))
kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
need = {("StatefulSet", "quant-coordinator"), ("Service", "quant-coordinator"),
        ("PodDisruptionBudget", "quant-coordinator"),
        ("Deployment", "quant-worker-cpu"),
        ("PersistentVolumeClaim", "quant-models"),
        ("PersistentVolumeClaim", "quant-outputs"),
        ("Secret", "quant-credentials")}
missing = need - kinds
assert not missing, missing
service = next(o for o in objects if o["kind"] == "Service")
assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}
coordinator = next(o for o in objects if o["kind"] == "StatefulSet")
container = coordinator["spec"]["template"]["spec"]["containers"][0]
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    assert container[probe]["httpGet"]["port"] == "metrics", probe
# Secure by default: mutual TLS and tokens from the mounted credentials.
flags = next(o for o in objects if o["kind"] == "ConfigMap" and
             o["metadata"]["name"].startswith("quant-flags"))["data"]
for name, needed in (("coordinator.flags", ("--tls_cert=", "--tls_key=",
                                            "--tls_client_ca=", "--principals=")),
                     ("worker.flags", ("--tls_ca=", "--tls_cert=", "--tls_key=",
                                       "--token_file="))):
    lines = flags[name].split()
    assert "--insecure" not in lines, name
    for flag in needed:
        assert any(l.startswith(flag + "/etc/quant/credentials/") for l in lines), (name, flag)
models = next(o for o in objects if o["metadata"]["name"] == "quant-models")
assert models["spec"]["accessModes"] == ["ReadOnlyMany"]
for o in objects:
    if o["kind"] in ("Deployment", "StatefulSet"):
        spec = o["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"], o["metadata"]["name"]
        assert o["metadata"].get("namespace") == "quant", o["metadata"]["name"]
# Monitoring: the alerts are deploy/prometheus's, the dashboard is
# deploy/grafana's, and what they point at exists.
root = sys.argv[3]
rule = next(o for o in objects if o["kind"] == "PrometheusRule")
assert rule["spec"] == yaml.safe_load(
    open(root + "/deploy/prometheus/alerts.yaml")), "PrometheusRule != alerts.yaml"
board = next(o for o in objects if o["metadata"]["name"] == "quant-dashboard")
assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
assert json.loads(board["data"]["quant-service.json"]) == json.load(
    open(root + "/deploy/grafana/quant-service.json"))
monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
assert monitor["spec"]["endpoints"][0]["port"] in {
    p["name"] for p in service["spec"]["ports"]}
hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
assert ("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) in kinds
if sys.argv[2] == "gpu":
    gpu = next(o for o in objects if o["metadata"]["name"] == "quant-worker-gpu")
    spec = gpu["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert "--backend=cuda" in spec["containers"][0]["command"]
PY
  echo "PASS: overlay $overlay holds the coordinator, workers, volumes, probes, monitoring"
done

# The validator fails on a wrong value (a test that cannot fail is no test).
python3 - "$work/cpu.json" "$work/broken.json" <<'PY'
import json, sys
objects = json.load(open(sys.argv[1]))
for o in objects:
    if o["kind"] == "StatefulSet":
        o["spec"]["replicas"] = "one"
json.dump(objects, open(sys.argv[2], "w"))
PY
if node "$here/deploy/validate_manifests.mjs" "$work/broken.json" "$modules" \
  >"$work/broken.log"; then
  fail "a StatefulSet with replicas: \"one\" validated"
fi
grep -q "replicas must be integer" "$work/broken.log" ||
  fail "the broken StatefulSet failed for another reason: $(grep FAIL "$work/broken.log")"
echo "PASS: a wrong value fails validation"

# An unknown field fails too (the API server would drop it silently).
python3 - "$work/gpu.json" "$work/misspelled.json" <<'PY'
import json, sys
objects = json.load(open(sys.argv[1]))
for o in objects:
    if o["kind"] == "StatefulSet":
        container = o["spec"]["template"]["spec"]["containers"][0]
        container["livenessProb"] = container.pop("livenessProbe")
json.dump(objects, open(sys.argv[2], "w"))
PY
if node "$here/deploy/check_fields.mjs" "$work/misspelled.json" "$modules" \
  >"$work/misspelled.log"; then
  fail "a container with livenessProb validated"
fi
grep -q "StatefulSet quant/quant-coordinator: .*'\"livenessProb\"' does not exist in type 'IContainer'" \
  "$work/misspelled.log" ||
  fail "the misspelled field failed for another reason: $(grep FAIL "$work/misspelled.log")"
echo "PASS: an unknown field fails validation"
