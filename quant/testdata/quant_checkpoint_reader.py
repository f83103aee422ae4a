#!/usr/bin/env python3
"""Independent numpy reader for GPTQ v1 and AWQ GEMM checkpoint tensors.

Usage: quant_checkpoint_reader.py FILE.safetensors
       quant_checkpoint_reader.py --checkpoint DIR FP_MODEL_DIR

Used by quant/packing_test.cc as a second opinion on quant/packing.cc: it
shares no code with it and decodes the tensors the way the published loaders
describe them, written from their layouts:

  GPTQ v1 (AutoGPTQ QuantLinear, qlinear_cuda_old.py / qlinear_cuda.py):
    qweight int32 [in // 32 * bits, out]: 2/4/8 bits: word k of column o
      holds input rows k * (32 // bits) + i at bits * i. 3 bits: 32 input rows
      in 3 words, read with AutoGPTQ's shift table (wf) and the two fix-ups
      for the values split across words (row 10: 2 + 1 bits, row 21: 1 + 2).
    qzeros int32 [groups, out // 32 * bits]: the same packing along the
      output dimension, holding zero - 1 (the loader adds 1).
    scales fp16 [groups, out]; g_idx int32 [in].
    weight[i, o] = scales[g_idx[i], o] * (intweight[i, o] - zeros[g_idx[i], o])
  AWQ GEMM (AutoAWQ WQLinear_GEMM, awq/utils/packing_utils.py):
    qweight int32 [in, out // 8], qzeros int32 [groups, out // 8]: 8 nibbles
      per word, unpacked LSB first and put back in order with
      AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]; zeros stored as is.
    scales fp16 [groups, out]; group of input row i: i // (in // groups).

The file's __metadata__ lists the linears ("linears": "a,b"), and for each
"<name>.format" (gptq_v1 or awq_gemm) and "<name>.bits". Next to the packed
tensors "<name>.{qweight,qzeros,scales[,g_idx]}" the writer stores what they
must decode to: "<name>.expect.q" I32 [out, in], "<name>.expect.zeros" I32
[groups, out], "<name>.expect.scales" F32 [groups, out] (before fp16
rounding) and "<name>.expect.weight" F32 [out, in].

With --checkpoint it reads a whole quantized model directory as a loader
does: config.json's quantization_config says which block linears stay in
floating point (AWQ: "modules_to_not_convert", matched as substrings of the
module name as AutoAWQ, transformers and vLLM match them; GPTQ: those
missing from "modules_in_block_to_quantize", each also matched by a
negative "-:" regex of "dynamic", as GPTQModel reads it). Each of those must
be a plain "<name>.weight" and every other linear packed. Every linear is
then compared with the FP model's weight W: quantized ones decode to
Q = scales * (levels - zeros) with, per input column c, Q[:, c] close to
a_c W[:, c] (a_c = 1 for GPTQ; AWQ scales columns and folds 1 / a_c into
the layer before): relative residual under 0.25 at 4 bits. Kept GPTQ linears
are W bit for bit; kept AWQ ones W with columns scaled.

Exit status: 0 when every linear matches ("N linears OK"), 1 when any does
not (one "MISMATCH <name>: ..." line each), 2 for an unreadable file.
"""
import glob
import os
import re
import json
import struct
import sys

import numpy as np

DTYPES = {"I32": "<i4", "F16": "<f2", "F32": "<f4", "BF16": "<u2"}

# AutoGPTQ's 3-bit shift table: row r of a 3-word block, value j of 12.
WF3 = np.array([
    [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0],
    [0, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31],
    [0, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0],
], dtype=np.uint32)

AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


class Unreadable(Exception):
    pass


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise Unreadable("file shorter than 8 bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise Unreadable("header runs past the end of the file")
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise Unreadable("%s: unexpected dtype %s" % (name, info["dtype"]))
        dtype = np.dtype(DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if end - begin != count * dtype.itemsize or base + end > len(data):
            raise Unreadable("%s: bad data_offsets" % name)
        tensor = np.frombuffer(data, dtype=dtype, count=count,
                               offset=base + begin).reshape(info["shape"])
        if info["dtype"] == "BF16":  # The top half of an fp32.
            tensor = (tensor.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = tensor
    return metadata, tensors


def unpack_gptq_rows(packed, bits):
    """int32 [words, n] packed down axis 0 -> uint32 [words * 32 // bits, n]."""
    words = packed.view(np.uint32)
    n = words.shape[1]
    if bits in (2, 4, 8):
        shifts = np.arange(0, 32, bits, dtype=np.uint32)
        values = (words[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
        return values.reshape(-1, n)
    if bits != 3:
        raise Unreadable("GPTQ bits %d" % bits)
    if words.shape[0] % 3:
        raise Unreadable("3-bit rows %d not a multiple of 3" % words.shape[0])
    blocks = words.reshape(-1, 3, 1, n)                     # [b, 3, 1, n]
    v = (blocks >> WF3[None, :, :, None]).astype(np.uint32)  # [b, 3, 12, n]
    # Values split across words: row 10 (2 low bits in word 0, 1 in word 1)
    # and row 21 (1 low bit in word 1, 2 in word 2).
    v[:, 0, 10] = (v[:, 0, 10] & 0x3) | ((v[:, 1, 0] << 2) & 0x4)
    v[:, 1, 11] = (v[:, 1, 11] & 0x1) | ((v[:, 2, 0] << 1) & 0x6)
    v &= 0x7
    rows = np.concatenate([v[:, 0, :11], v[:, 1, 1:12], v[:, 2, 1:11]], axis=1)
    return rows.reshape(-1, n)                              # 32 rows a block


def unpack_awq(packed, n_out):
    """int32 [m, n_out // 8] -> uint32 [m, n_out] in output-column order."""
    words = packed.view(np.uint32)
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    nibbles = (words[:, :, None] >> shifts[None, None, :]) & 0xF  # [m, p, 8]
    return nibbles[:, :, AWQ_REVERSE_ORDER].reshape(words.shape[0], n_out)


def expect_shape(problems, what, array, shape):
    if tuple(array.shape) != tuple(shape):
        problems.append("%s shape %s, expected %s" %
                        (what, list(array.shape), list(shape)))
        return False
    return True


def compare(problems, what, got, want):
    if got.shape != want.shape:
        problems.append("%s shape %s vs expected %s" %
                        (what, list(got.shape), list(want.shape)))
        return
    bad = np.argwhere(got != want)
    if len(bad):
        first = tuple(int(i) for i in bad[0])
        problems.append("%s differs at %d places, first %s: %s vs expected %s"
                        % (what, len(bad), list(first), got[first],
                           want[first]))


def check_linear(name, fmt, bits, t):
    problems = []
    q_expect = t[name + ".expect.q"]                  # [out, in]
    zeros_expect = t[name + ".expect.zeros"]          # [groups, out]
    scales_expect = t[name + ".expect.scales"]        # [groups, out]
    weight_expect = t[name + ".expect.weight"]        # [out, in]
    n_out, n_in = q_expect.shape
    groups = zeros_expect.shape[0]
    qweight, qzeros, scales = (t[name + ".qweight"], t[name + ".qzeros"],
                               t[name + ".scales"])
    if qweight.dtype != np.int32 or qzeros.dtype != np.int32:
        problems.append("qweight/qzeros are not int32")
    if scales.dtype != np.float16:
        problems.append("scales are not fp16")
    if problems:
        return problems

    if fmt == "gptq_v1":
        g_idx = t[name + ".g_idx"]
        ok = expect_shape(problems, "qweight", qweight,
                          (n_in // 32 * bits, n_out))
        ok &= expect_shape(problems, "qzeros", qzeros,
                           (groups, n_out // 32 * bits))
        ok &= expect_shape(problems, "g_idx", g_idx, (n_in,))
        if not ok:
            return problems
        intweight = unpack_gptq_rows(qweight, bits).astype(np.int64)  # [in, out]
        zeros = unpack_gptq_rows(np.ascontiguousarray(qzeros.T), bits).T
        zeros = zeros.astype(np.int64) + 1                       # v1: zero - 1
        group_of_input = g_idx.astype(np.int64)
        if group_of_input.min() < 0 or group_of_input.max() >= groups:
            problems.append("g_idx outside [0, %d)" % groups)
            return problems
    elif fmt == "awq_gemm":
        if bits != 4:
            problems.append("AWQ GEMM bits %d" % bits)
            return problems
        ok = expect_shape(problems, "qweight", qweight, (n_in, n_out // 8))
        ok &= expect_shape(problems, "qzeros", qzeros, (groups, n_out // 8))
        if not ok:
            return problems
        intweight = unpack_awq(qweight, n_out).astype(np.int64)    # [in, out]
        zeros = unpack_awq(qzeros, n_out).astype(np.int64)          # as is
        group_of_input = np.arange(n_in) // (n_in // groups)
    else:
        return ["unknown format %r" % fmt]
    if not expect_shape(problems, "scales", scales, (groups, n_out)):
        return problems

    compare(problems, "levels", intweight.T, q_expect.astype(np.int64))
    compare(problems, "zero points", zeros, zeros_expect.astype(np.int64))
    compare(problems, "fp16 scales", scales.view(np.uint16),
            scales_expect.astype(np.float16).view(np.uint16))
    # What a loader computes, in its [in, out] orientation.
    s = scales.astype(np.float32)[group_of_input]
    z = zeros[group_of_input]
    weight = s * (intweight - z).astype(np.float32)
    compare(problems, "dequantized weight", weight.T, weight_expect)
    return problems


LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def read_model(folder):
    tensors = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        tensors.update(read_safetensors(path)[1])
    if not tensors:
        raise Unreadable("no safetensors files in %s" % folder)
    return tensors


def kept_by_config(qc, module):
    """Whether a loader leaves `module` (a full module name) unquantized."""
    if qc["quant_method"] == "awq":
        return any(m in module for m in (qc.get("modules_to_not_convert") or []))
    stages = qc.get("modules_in_block_to_quantize")
    if stages is None:
        return False
    listed = [m for stage in stages for m in stage]
    kept = not any(module.endswith("." + m) for m in listed)
    negative = any(re.match(key[2:], module)
                   for key in (qc.get("dynamic") or {}) if key.startswith("-:"))
    if kept != negative:
        raise Unreadable("%s: modules_in_block_to_quantize and dynamic disagree"
                         % module)
    return kept


def column_fit_residual(q, w):
    """Relative residual of q [out, in] against w with each column scaled."""
    w = w.astype(np.float64)
    q = q.astype(np.float64)
    a = (q * w).sum(axis=0) / np.maximum((w * w).sum(axis=0), 1e-30)
    return np.linalg.norm(q - w * a) / np.linalg.norm(q), a


def check_checkpoint(folder, fp_folder):
    config = json.load(open(os.path.join(folder, "config.json")))
    qc = config["quantization_config"]
    method, bits = qc["quant_method"], int(qc["bits"])
    t = read_model(folder)
    fp = read_model(fp_folder)
    counts = {"quantized": 0, "kept": 0}
    failures = 0
    for layer in range(config["num_hidden_layers"]):
        for local in LINEARS:
            module = "model.layers.%d.%s" % (layer, local)
            w = fp[module + ".weight"]
            problems = []
            if kept_by_config(qc, module):
                counts["kept"] += 1
                if module + ".qweight" in t or module + ".weight" not in t:
                    problems.append("kept by the config, but not a plain weight")
                elif method == "gptq":
                    compare(problems, "kept weight", t[module + ".weight"], w)
                else:
                    residual, _ = column_fit_residual(t[module + ".weight"], w)
                    if residual > 1e-2:
                        problems.append("kept weight is not W with columns "
                                        "scaled (residual %.3g)" % residual)
            else:
                counts["quantized"] += 1
                if module + ".weight" in t:
                    problems.append("a plain weight the config says is packed")
                    print("MISMATCH %s: %s" % (module, problems[0]))
                    failures += 1
                    continue
                qweight, qzeros, scales = (t[module + ".qweight"],
                                           t[module + ".qzeros"],
                                           t[module + ".scales"])
                groups = scales.shape[0]
                if method == "gptq":
                    n_out = qweight.shape[1]
                    intweight = unpack_gptq_rows(qweight, bits).astype(np.int64)
                    zeros = unpack_gptq_rows(np.ascontiguousarray(qzeros.T),
                                             bits).T.astype(np.int64) + 1
                    group_of_input = t[module + ".g_idx"].astype(np.int64)
                else:
                    n_out = qweight.shape[1] * 8
                    intweight = unpack_awq(qweight, n_out).astype(np.int64)
                    zeros = unpack_awq(qzeros, n_out).astype(np.int64)
                    group_of_input = (np.arange(qweight.shape[0]) //
                                      (qweight.shape[0] // groups))
                if intweight.shape != w.T.shape:
                    problems.append("decodes to [in, out] %s, the model's is %s"
                                    % (list(intweight.shape), list(w.T.shape)))
                else:
                    s = scales.astype(np.float32)[group_of_input]
                    weight = (s * (intweight - zeros[group_of_input])
                              .astype(np.float32)).T
                    residual, a = column_fit_residual(weight, w)
                    limit = 0.25 * 2.0 ** (4 - bits)
                    if residual > limit:
                        problems.append("relative residual %.3g > %.3g"
                                        % (residual, limit))
                    if method == "gptq" and np.abs(a - 1).max() > 0.1:
                        problems.append("GPTQ columns scaled by up to %.3g"
                                        % np.abs(a - 1).max())
            if problems:
                failures += 1
                print("MISMATCH %s: %s" % (module, "; ".join(problems)))
    total = counts["quantized"] + counts["kept"]
    if failures:
        print("%d of %d linears do not match" % (failures, total))
        return 1
    print("%d linears OK (%d quantized, %d kept in floating point)"
          % (total, counts["quantized"], counts["kept"]))
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "--checkpoint":
        try:
            return check_checkpoint(argv[2], argv[3])
        except (Unreadable, KeyError, ValueError, OSError) as e:
            print("unreadable %s: %s" % (argv[2], e))
            return 2
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        metadata, tensors = read_safetensors(argv[1])
        names = [n for n in metadata.get("linears", "").split(",") if n]
        if not names:
            raise Unreadable("no linears listed in __metadata__")
        failed = 0
        for name in names:
            fmt = metadata[name + ".format"]
            bits = int(metadata[name + ".bits"])
            problems = check_linear(name, fmt, bits, tensors)
            if problems:
                failed += 1
                print("MISMATCH %s: %s" % (name, "; ".join(problems)))
            else:
                print("%s: ok (%s, %d bits)" % (name, fmt, bits))
    except (Unreadable, KeyError, ValueError, OSError) as e:
        print("unreadable %s: %s" % (argv[1], e))
        return 2
    if failed:
        print("%d of %d linears do not match" % (failed, len(names)))
        return 1
    print("%d linears OK" % len(names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
