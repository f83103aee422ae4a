#!/usr/bin/env bash
# The container images (deploy/docker) checked without a Docker engine: each
# Dockerfile is multi-stage, runs as a non-root user, installs the programs
# the manifests (deploy/k8s) start, and its runtime stage installs exactly
# the Debian and CUDA packages that hold the libraries those programs load
# (ldd on the programs this build made, dpkg -S on each library), so that a
# missing library fails here instead of at a pod's start, and nothing else
# rides along.
#
# usage: deploy_images_test.sh QUANT_COORDINATOR QUANT_WORKER QUANTCTL
#          [QUANT_WORKER_CUDA QUANTCTL_CUDA]
# The CUDA image's libraries are checked where the CUDA programs were built.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fail() { echo "FAIL: $*"; exit 1; }
command -v dpkg >/dev/null || { echo "SKIP: no dpkg"; exit 77; }

# The package holding a library: dpkg's record (under /lib or /usr/lib, with
# Debian's merged /usr), or for CUDA's libraries NVIDIA's package of it.
# `owner` maps paths to packages (needed_packages fills it).
declare -A owner=()
candidates_of() {  # The names dpkg may record a library under.
  local path=$1 resolved
  resolved=$(readlink -f "$path")
  echo "$path"
  echo "$resolved"
  echo "${path/#\/lib\//\/usr\/lib\/}"
  echo "${resolved/#\/usr\/lib\//\/lib\/}"
}
package_of() {
  local name path=$1 candidate
  name=$(basename "$path")
  case $name in
    libcudart.so.*) echo cuda-cudart-13-0; return ;;
    libcublas.so.* | libcublasLt.so.*) echo libcublas-13-0; return ;;
    libcusolver.so.*) echo libcusolver-13-0; return ;;
    libcusparse.so.*) echo libcusparse-13-0; return ;;
    libnvJitLink.so.*) echo libnvjitlink-13-0; return ;;
  esac
  while read -r candidate; do
    [[ -n ${owner[$candidate]:-} ]] && { echo "${owner[$candidate]}"; return; }
  done < <(candidates_of "$path")
  echo "UNKNOWN($path)"
}

# Packages the programs need: every library ldd resolves, and SentencePiece,
# which the programs open at run time. glibc is in every base image. One
# dpkg query for all of them (one a library took minutes on a busy
# machine).
needed_packages() {
  local libs=() lib line
  mapfile -t libs < <(ldd "$@" | awk '/=> \//{print $3}' | sort -u)
  libs+=("$(ldconfig -p | awk '/libsentencepiece\.so\.0 /{print $NF; exit}')")
  while IFS= read -r line; do
    [[ $line == diversion* ]] && continue
    owner[${line##*: }]=${line%%:*}
  done < <(for lib in "${libs[@]}"; do candidates_of "$lib"; done |
             sort -u | xargs dpkg -S 2>/dev/null)
  for lib in "${libs[@]}"; do package_of "$lib"; done | grep -vx 'libc6' |
    sort -u
}

# check DOCKERFILE IMAGE_NAME PROGRAM...
check() {
  local dockerfile=$root/deploy/docker/$1 image=$2
  shift 2
  python3 - "$dockerfile" "$image" "$root" "$@" <<'PY' || fail "$dockerfile"
import glob, re, sys, yaml
path, image, root, programs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
text = re.sub(r"\\\n", " ", open(path).read())
lines = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
stages = [i for i, l in enumerate(lines) if l.startswith("FROM ")]
assert len(stages) >= 2, "not multi-stage"
final = lines[stages[-1]:]
assert final[0].split()[1] == "debian:12-slim", final[0]
users = [l.split()[1] for l in final if l.startswith("USER ")]
assert users and users[-1].split(":")[0] not in ("0", "root"), f"runs as {users}"
assert all("--from=build" in l for l in final if l.startswith("COPY ")
           and "keyring" not in l), "the runtime stage copies from elsewhere"
# The programs the build stage installs into /out, and the CMake targets
# that make them.
install = next(l for l in lines if "install -D -s -t /out" in l)
outs = sorted(w.rsplit("/", 1)[1] for w in install.split("-t /out", 1)[1].split())
assert outs == sorted(p.rsplit("/", 1)[1] for p in programs), (outs, programs)
targets = re.search(r"--target (.*?)(&&|$)", next(l for l in lines if "--target" in l)).group(1).split()
defined = set()
for cmake in glob.glob(root + "/*/CMakeLists.txt"):
    defined |= set(re.findall(r"qs_cc_binary\((\w+)", open(cmake).read()))
assert set(targets) <= defined, f"unknown CMake targets {set(targets) - defined}"
# What the manifests start from this image is in it.
for manifest in glob.glob(root + "/deploy/k8s/**/*.yaml", recursive=True):
    for doc in yaml.safe_load_all(open(manifest)):
        spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            if c.get("image") == image:
                assert c["command"][0] in outs, f"{manifest}: {c['command'][0]} not in {image}"
run = next(l for l in final if "apt-get install" in l)
packages = run.split("--no-install-recommends", 1)[1].split("&&")[0].split()
print("\n".join(sorted(packages)))
PY
}

cpu_programs=("$1" "$2" "$3")
listed=$(check Dockerfile quant-service "${cpu_programs[@]}")
needed=$(needed_packages "${cpu_programs[@]}")
diff <(echo "$needed") <(echo "$listed") >/dev/null ||
  fail "deploy/docker/Dockerfile's runtime packages differ from what the programs load (< needed, > listed):
$(diff <(echo "$needed") <(echo "$listed") | grep '^[<>]')"
echo "PASS: Dockerfile: multi-stage, non-root, $(echo "$listed" | wc -l) runtime packages, each one a library the programs load"

if (($# >= 5)); then
  cuda_programs=("$4" "$5")
  listed=$(check Dockerfile.cuda quant-service-cuda "${cuda_programs[@]}")
  needed=$(needed_packages "${cuda_programs[@]}")
  diff <(echo "$needed") <(echo "$listed") >/dev/null ||
    fail "deploy/docker/Dockerfile.cuda's runtime packages differ from what the programs load (< needed, > listed):
$(diff <(echo "$needed") <(echo "$listed") | grep '^[<>]')"
  echo "PASS: Dockerfile.cuda: multi-stage, non-root, $(echo "$listed" | wc -l) runtime packages, each one a library the programs load"
else
  echo "SKIP: the CUDA programs were not built; Dockerfile.cuda's libraries not checked"
fi
