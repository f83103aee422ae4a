#!/usr/bin/env python3
"""Fails when the CMake and Bazel builds disagree about the sources.

Every C++ source or header in the tree must belong to a target in both
builds, and a target (CMake `<folder>_<name>`, Bazel `//<folder>:<name>`)
must list the same files in both. BUILD.bazel files are evaluated as Python
with the rule functions stubbed out; CMakeLists.txt calls of the project's
qs_cc_* functions are parsed.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_SUFFIXES = (".cc", ".h", ".cu", ".cuh")
SKIP_DIRS = {"build", "third_party", ".git", ".cache", "node_modules"}


def skipped(d):
    # Build folders: build/, build-fuzz/ (tests/fuzz) and the like.
    return (d in SKIP_DIRS or d.startswith(("bazel-", "build-")) or
            d.startswith("."))


def source_files():
    found = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = os.path.relpath(dirpath, ROOT)
        dirnames[:] = [d for d in dirnames if not skipped(d)]
        for name in filenames:
            if name.endswith(SOURCE_SUFFIXES):
                found.add(os.path.normpath(os.path.join(rel, name)))
    return found


def bazel_targets():
    targets = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not skipped(d)]
        if "BUILD.bazel" not in filenames:
            continue
        package = os.path.relpath(dirpath, ROOT)
        if package == ".":
            package = ""

        def rule(**attrs):
            files = set()
            for key in ("srcs", "hdrs"):
                for src in attrs.get(key, []):
                    if src.startswith((":", "//", "@")):
                        continue  # Generated files and labels.
                    files.add(os.path.normpath(os.path.join(package, src)))
            targets["//%s:%s" % (package, attrs["name"])] = files

        env = {name: rule for name in (
            "cc_library", "cc_test", "cc_binary", "sh_test",
            "cuda_library", "cuda_binary")}
        env.update({
            "load": lambda *args, **kwargs: None,
            "package": lambda **kwargs: None,
            "exports_files": lambda *args, **kwargs: None,
            "glob": lambda *args, **kwargs: [],
            "select": lambda *args, **kwargs: [],
            "filegroup": lambda **kwargs: None,
            "test_suite": lambda **kwargs: None,
            "config_setting": lambda **kwargs: None,
            # protoc runs; its outputs belong to the cc_library of the
            # same name without "_gen" (CMake: qs_proto_library).
            "genrule": lambda **kwargs: None,
            "True": True, "False": False,
        })
        with open(os.path.join(dirpath, "BUILD.bazel")) as f:
            exec(compile(f.read(), os.path.join(dirpath, "BUILD.bazel"),
                         "exec"), env)
    return targets


CMAKE_CALL = re.compile(r"\bqs_(?:cc_library|cc_test|cc_binary|cuda_library|"
                        r"cuda_test|cuda_binary|proto_library)\s*\(([^)]*)\)",
                        re.S)
KEYWORDS = {"SRCS", "HDRS", "DEPS", "OUTPUT_NAME", "PROTOS"}


def cmake_targets():
    targets = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not skipped(d)]
        if "CMakeLists.txt" not in filenames:
            continue
        folder = os.path.relpath(dirpath, ROOT)
        with open(os.path.join(dirpath, "CMakeLists.txt")) as f:
            text = re.sub(r"#.*", "", f.read())
        for call in CMAKE_CALL.finditer(text):
            words = call.group(1).split()
            name, files, section = words[0], set(), None
            for word in words[1:]:
                if word in KEYWORDS:
                    section = word
                elif section in ("SRCS", "HDRS"):
                    files.add(os.path.normpath(os.path.join(folder, word)))
            prefix = folder.replace("/", "_") + "_"
            if not name.startswith(prefix):
                raise SystemExit("CMake target %s in %s/ must start with %s" %
                                 (name, folder, prefix))
            targets["//%s:%s" % (folder, name[len(prefix):])] = files
    return targets


def main():
    problems = []
    bazel = bazel_targets()
    cmake = cmake_targets()
    for label in sorted(set(bazel) | set(cmake)):
        b, c = bazel.get(label), cmake.get(label)
        if b is None:
            problems.append("%s is in CMake but not in Bazel" % label)
        elif c is None:
            problems.append("%s is in Bazel but not in CMake" % label)
        elif b != c:
            problems.append("%s lists different files: only Bazel %s, only "
                            "CMake %s" % (label, sorted(b - c), sorted(c - b)))
    in_bazel = set().union(*bazel.values()) if bazel else set()
    in_cmake = set().union(*cmake.values()) if cmake else set()
    for path in sorted(source_files()):
        if path not in in_bazel:
            problems.append("%s belongs to no Bazel target" % path)
        if path not in in_cmake:
            problems.append("%s belongs to no CMake target" % path)
    for problem in problems:
        print("build sync: " + problem)
    print("build sync: %d targets, %d source files checked, %d problems" %
          (len(bazel), len(source_files()), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
