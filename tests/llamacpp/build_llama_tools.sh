#!/usr/bin/env bash
# Builds llama.cpp's own llama-quantize and llama-perplexity from the source
# that the npm package node-llama-cpp carries (llama/gitRelease.bundle), for
# the tests and benchmarks that compare against them. Nothing of that source
# or its binaries is committed: it is built under OUT_DIR (for example the
# CMake build folder) and reused while the bundle is unchanged.
#
# usage: build_llama_tools.sh NODE_MODULES OUT_DIR
# Prints the folder holding llama-quantize and llama-perplexity as its last
# line. Exit status 77 when node-llama-cpp (or a C++ toolchain) is missing.
# About 6 minutes on 2 cores the first time.
set -euo pipefail

node_modules=$1
out_dir=$2
bundle=$node_modules/node-llama-cpp/llama/gitRelease.bundle
[[ -f $bundle ]] || { echo "SKIP: no llama.cpp source bundle at $bundle" >&2; exit 77; }
command -v cmake >/dev/null && command -v git >/dev/null ||
  { echo "SKIP: cmake and git are needed to build llama.cpp" >&2; exit 77; }

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
stamp=$(sha256sum "$bundle" | cut -c1-16)
bin_dir=$out_dir/llama-tools-$stamp/bin
if [[ -x $bin_dir/llama-quantize && -x $bin_dir/llama-perplexity ]]; then
  echo "$bin_dir"
  exit 0
fi

# Serialize concurrent builders (ctest -j) on the same folder.
exec 9>"$out_dir/llama-tools.lock"
flock 9
if [[ -x $bin_dir/llama-quantize && -x $bin_dir/llama-perplexity ]]; then
  echo "$bin_dir"
  exit 0
fi
work=$out_dir/llama-tools-$stamp
rm -rf "$work"
mkdir -p "$work"
git clone --quiet "$bundle" "$work/src" 2>/dev/null
# GGML_NATIVE=OFF + AVX2/FMA/F16C: the same instruction set our kernels use.
cmake -S "$work/src" -B "$work/build" -G "Unix Makefiles" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF >"$work/configure.log" 2>&1 ||
  { tail -20 "$work/configure.log" >&2; exit 1; }
cmake --build "$work/build" -j"$(nproc)" --target llama-quantize llama-perplexity \
  >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
mkdir -p "$bin_dir"
cp "$work/build/bin/llama-quantize" "$work/build/bin/llama-perplexity" "$bin_dir/"
rm -rf "$work/src" "$work/build"
echo "$bin_dir"
