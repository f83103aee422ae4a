"""CUDA for Bazel 4 without rules_cuda: nvcc compiles each .cu file in a
genrule, and a cc_library links the objects with the CUDA runtime, cuBLAS
and cuSOLVER. Every target is tagged manual, so `bazel build //...` never
needs nvcc; name them where nvcc is installed (//worker:main_cuda and
//client:quantctl_main_cuda are the programs with the GPU backend)."""

NVCC = "/usr/local/cuda/bin/nvcc"

# sm_90 machine code plus PTX, as the CMake build.
NVCC_FLAGS = " ".join([
    "-std=c++17",
    "-O3",
    "-lineinfo",
    "-Xcompiler -fPIC",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
])

def _nvcc_objects(srcs, hdrs, cu_includes):
    objects = []
    for src in srcs:
        if not src.endswith(".cu"):
            continue
        stem = src[:-len(".cu")].replace("/", "_")
        native.genrule(
            name = stem + "_nvcc",
            srcs = [src] + hdrs + cu_includes,
            outs = [stem + "_cu.o"],
            cmd = "TMPDIR=$(@D) %s %s -I. -c $(location %s) -o $@" % (NVCC, NVCC_FLAGS, src),
            tags = ["manual"],
        )
        objects.append(stem + "_cu.o")
    return objects

def cuda_library(name, srcs, hdrs = [], deps = [], cu_includes = [], **kwargs):
    """A cc_library whose .cu sources nvcc compiles.

    cu_includes: the repository headers the .cu files include (directly or
    not) beyond `hdrs`; the sandbox makes a missing one a build error.
    """
    objects = _nvcc_objects(srcs, hdrs, cu_includes)
    native.cc_library(
        name = name,
        srcs = [s for s in srcs if not s.endswith(".cu")] + objects,
        hdrs = hdrs,
        deps = deps + ["@system//:cuda"],
        tags = ["manual"],
        **kwargs
    )

def cuda_binary(name, srcs, deps = [], cu_includes = [], **kwargs):
    """A cc_binary whose .cu sources nvcc compiles (cu_includes as above)."""
    native.cc_binary(
        name = name,
        srcs = [s for s in srcs if not s.endswith(".cu")] +
               _nvcc_objects(srcs, [], cu_includes),
        deps = deps + ["@system//:cuda"],
        tags = ["manual"],
        **kwargs
    )
