#!/usr/bin/env bash
# Installs what the project builds and tests with on Debian 12. Idempotent and
# non-interactive; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config python3 python3-numpy
  python3-yaml prometheus
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libgtest-dev libgmock-dev nlohmann-json3-dev
  libsqlite3-dev libssl-dev libopenblas-dev liblapacke-dev libsentencepiece-dev
  bazel-bootstrap
  clang libclang-rt-14-dev libomp-14-dev
)
# Node.js may come from elsewhere (with its own npm); only fall back to
# Debian's packages when the commands are missing.
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"
fi

# llama.cpp through node-llama-cpp, the independent reader the conformance
# tests load our GGUF files with. Optional for users: QS_SKIP_NODE=1 skips it.
if [[ "${QS_SKIP_NODE:-0}" != 1 ]] &&
   [[ ! -d .cache/node/node_modules/node-llama-cpp ]]; then
  mkdir -p .cache/node
  cp tests/llamacpp/package.json .cache/node/package.json
  (cd .cache/node && npm install --omit=optional --no-audit --no-fund \
     --loglevel=error) || echo "warning: node-llama-cpp not installed;" \
       "the llama.cpp conformance test will be skipped"
fi

# The Kubernetes schemas deploy/k8s is validated against (offline, in the
# deploy_k8s test), installed again when tests/deploy/package.json changes.
# Optional like node-llama-cpp: QS_SKIP_NODE=1 skips it.
if [[ "${QS_SKIP_NODE:-0}" != 1 ]] &&
   ! cmp -s tests/deploy/package.json .cache/node-deploy/package.json; then
  mkdir -p .cache/node-deploy
  cp tests/deploy/package.json .cache/node-deploy/package.json
  (cd .cache/node-deploy && npm install --no-audit --no-fund \
     --loglevel=error) || { rm -f .cache/node-deploy/package.json;
       echo "warning: kubernetes-models not installed;" \
         "the deploy_k8s test will be skipped"; }
fi
