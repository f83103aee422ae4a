#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/seed-*).

Run from anywhere: `python3 tests/fuzz/make_seeds.py`. The output is
committed; rerunning rewrites the same bytes (only seed-* files are touched,
so regression inputs, regress-*, stay). Each seed is small (a few KB at
most) and named for the shape it has. The GGUF seeds include the shapes of
llama.cpp's GGUF parser CVEs (Cisco Talos, TALOS-2024-1912..1916):
oversized key/value and tensor counts, string lengths near 2^64, arrays of
strings whose count overflows, tensor dimensions whose product overflows,
tensor offsets past the file or overflowing with their size; plus bad
alignments, types and versions. Needs protoc (the recipe seeds).
"""
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")
SEP = b"\n--8<--\n"  # fuzz_util.h: kPartSeparator
U64_MAX = 2**64 - 1


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def parts(*files):
    return SEP.join(f.encode() if isinstance(f, str) else f for f in files)


# ---- safetensors ----

ST_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "U8": 1, "I64": 8,
            "F64": 8, "BOOL": 1, "F8_E4M3": 1}


def safetensors(tensors, metadata=None, header=None, pad=True, data=None):
    """tensors: [(name, dtype, shape)] laid out in order."""
    hdr, off = {}, 0
    body = b""
    for name, dtype, shape in tensors:
        n = ST_SIZES[dtype]
        for d in shape:
            n *= d
        hdr[name] = {"dtype": dtype, "shape": shape,
                     "data_offsets": [off, off + n]}
        body += bytes((off + i) * 7 % 251 for i in range(n))
        off += n
    if metadata is not None:
        hdr["__metadata__"] = metadata
    text = (header if header is not None else json.dumps(hdr)).encode()
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + (body if data is None else data)


def safetensors_seeds():
    t = "safetensors"
    write(t, "two-tensors", safetensors(
        [("a", "F32", [2, 3]), ("b", "BF16", [4])], {"format": "pt"}))
    write(t, "dtypes", safetensors(
        [("f16", "F16", [3]), ("i32", "I32", [2]), ("u8", "U8", [5]),
         ("i64", "I64", [1]), ("f64", "F64", [2]), ("bool", "BOOL", [2]),
         ("f8", "F8_E4M3", [4])]))
    write(t, "scalar-and-empty", safetensors(
        [("s", "F32", []), ("e", "F32", [0, 4])]))
    write(t, "empty-header", safetensors([], header="{}"))
    write(t, "header-length-huge", struct.pack("<Q", U64_MAX) + b"{}")
    write(t, "header-length-past-file", struct.pack("<Q", 4096) + b"{}")
    write(t, "offsets-past-file", safetensors([], header=json.dumps(
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}),
        data=b"\0" * 8))
    write(t, "offsets-reversed", safetensors([], header=json.dumps(
        {"a": {"dtype": "U8", "shape": [0], "data_offsets": [8, 0]}}),
        data=b"\0" * 8))
    write(t, "offsets-overlap", safetensors([], header=json.dumps(
        {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
         "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}),
        data=b"\0" * 12))
    write(t, "offset-u64-max", safetensors([], header=json.dumps(
        {"a": {"dtype": "U8", "shape": [1],
               "data_offsets": [U64_MAX, 0]}}), data=b"\0"))
    write(t, "shape-product-overflows", safetensors([], header=json.dumps(
        {"a": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}})))
    write(t, "shape-negative", safetensors([], header=json.dumps(
        {"a": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}),
        data=b"\0" * 16))
    write(t, "size-disagrees", safetensors([], header=json.dumps(
        {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}),
        data=b"\0" * 8))
    write(t, "bad-dtype", safetensors([], header=json.dumps(
        {"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}),
        data=b"\0"))
    write(t, "not-utf8-name", safetensors([], header=
        '{"a\xff": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
        data=b"\0"))
    write(t, "duplicate-names", safetensors([], header=
        '{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},'
        ' "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}',
        data=b"\0\0"))
    write(t, "deep-json", safetensors([], header="[" * 2000 + "]" * 2000))
    write(t, "metadata-not-strings", safetensors(
        [("a", "U8", [1])], {"k": 1, "n": None}))


def index_seeds():
    t = "safetensors_index"
    s1 = safetensors([("model.embed.weight", "F32", [2, 2]),
                      ("model.norm.weight", "BF16", [2])])
    s2 = safetensors([("lm_head.weight", "F16", [2, 2])])
    wm = {"model.embed.weight": "model-1.safetensors",
          "model.norm.weight": "model-1.safetensors",
          "lm_head.weight": "model-2.safetensors"}
    idx = json.dumps({"metadata": {"total_size": 28}, "weight_map": wm})
    write(t, "two-shards", parts(idx, s1, s2))
    write(t, "one-shard", parts(json.dumps(
        {"weight_map": {"a": "model-1.safetensors"}}),
        safetensors([("a", "F32", [3])])))
    write(t, "missing-shard", parts(json.dumps(
        {"weight_map": {"a": "model-3.safetensors"}}),
        safetensors([("a", "F32", [3])])))
    write(t, "tensor-not-in-index", parts(json.dumps(
        {"weight_map": {"a": "model-1.safetensors"}}),
        safetensors([("a", "F32", [3]), ("b", "F32", [1])])))
    write(t, "tensor-in-two-shards", parts(json.dumps(
        {"weight_map": {"a": "model-1.safetensors"}}),
        safetensors([("a", "F32", [3])]), safetensors([("a", "F32", [3])])))
    write(t, "path-escapes", parts(json.dumps(
        {"weight_map": {"a": "../model-1.safetensors", "b": "/etc/passwd",
                        "c": "", "d": "."}})))
    write(t, "weight-map-wrong-types", parts(json.dumps(
        {"metadata": [], "weight_map": {"a": 1, "b": None, "c": ["x"]}})))
    write(t, "no-weight-map", parts('{"metadata": {"total_size": -1}}'))
    write(t, "not-json", parts("{\"weight_map\": {\"a\": \"model-1.safe"))


# ---- GGUF ----

T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, \
    T_U64, T_I64, T_F64 = range(13)
SCALAR = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I",
          T_I32: "<i", T_F32: "<f", T_BOOL: "<B", T_U64: "<Q", T_I64: "<q",
          T_F64: "<d"}
GGML = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18),
        "Q8_0": (8, 32, 34), "Q4_K": (12, 256, 144), "Q6_K": (14, 256, 210),
        "BF16": (30, 1, 2), "I32": (26, 1, 4)}


def gstr(s, length=None):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b) if length is None else length) + b


def gval(vtype, v):
    if vtype == T_STR:
        return gstr(v)
    if vtype == T_ARR:
        etype, items = v
        out = struct.pack("<IQ", etype, len(items))
        return out + b"".join(gval(etype, i) for i in items)
    return struct.pack(SCALAR[vtype], v)


def gkv(key, vtype, v):
    return gstr(key) + struct.pack("<I", vtype) + gval(vtype, v)


def gguf(kvs=(), tensors=(), alignment=32, version=3, n_kv=None,
         n_tensors=None, raw_kv=b"", raw_tensors=b"", data=None):
    """tensors: [(name, type, dims)]; offsets assigned, data patterned."""
    infos, body, off = b"", b"", 0
    for name, ty, dims in tensors:
        tid, block, bsize = GGML[ty]
        nbytes = dims[0] // block * bsize
        for d in dims[1:]:
            nbytes *= d
        infos += gstr(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", tid, off)
        chunk = bytes((off + i) % 253 for i in range(nbytes))
        chunk += b"\0" * (-nbytes % alignment)
        body += chunk
        off += len(chunk)
    kv = b"".join(gkv(*k) for k in kvs) + raw_kv
    n_kv = len(kvs) + (1 if raw_kv else 0) if n_kv is None else n_kv
    nt = len(tensors) + (1 if raw_tensors else 0)
    nt = nt if n_tensors is None else n_tensors
    head = b"GGUF" + struct.pack("<IQQ", version, nt, n_kv) + kv + infos
    head += raw_tensors
    head += b"\0" * (-len(head) % alignment)
    return head + (body if data is None else data)


def tinfo(name, dims, tid, offset, n_dims=None):
    return (gstr(name) + struct.pack("<I", len(dims) if n_dims is None
                                     else n_dims)
            + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<IQ", tid, offset))


def gguf_seeds():
    t = "gguf"
    meta = [("general.architecture", T_STR, "llama"),
            ("general.alignment", T_U32, 32),
            ("llama.block_count", T_U32, 2),
            ("llama.rope.freq_base", T_F32, 10000.0),
            ("u8", T_U8, 255), ("i8", T_I8, -1), ("u16", T_U16, 65535),
            ("i16", T_I16, -2), ("i32", T_I32, -3), ("b", T_BOOL, 1),
            ("u64", T_U64, U64_MAX), ("i64", T_I64, -2**63),
            ("f64", T_F64, 1e300),
            ("tokenizer.ggml.tokens", T_ARR, (T_STR, ["<s>", "</s>", "a"])),
            ("tokenizer.ggml.scores", T_ARR, (T_F32, [0.0, -1.0, -2.5])),
            ("nested", T_ARR, (T_ARR, [(T_I32, [1, 2]), (T_STR, ["x"])]))]
    tensors = [("token_embd.weight", "F32", [4, 2]),
               ("blk.0.attn_q.weight", "Q4_0", [32, 2]),
               ("blk.0.ffn_down.weight", "Q4_K", [256, 1]),
               ("output_norm.weight", "BF16", [4])]
    write(t, "valid", gguf(meta, tensors))
    write(t, "valid-v2", gguf(meta[:3], tensors[:1], version=2))
    write(t, "no-tensors", gguf(meta[:1]))
    write(t, "alignment-64", gguf([("general.alignment", T_U32, 64)],
                                  tensors[:2], alignment=64))
    # CVE shapes (each names the llama.cpp advisory whose input it mimics).
    write(t, "cve-2024-21825-n-kv-huge", gguf(meta[:1], n_kv=U64_MAX))
    write(t, "cve-2024-21825-n-kv-2pow61", gguf(meta[:1], n_kv=2**61))
    write(t, "cve-2024-23605-n-tensors-huge", gguf(meta[:1], tensors[:1],
                                                   n_tensors=U64_MAX))
    write(t, "cve-2024-23605-n-tensors-2pow58", gguf(meta[:1], tensors[:1],
                                                     n_tensors=2**58))
    write(t, "cve-2024-23496-key-length-u64-max",
          gguf(raw_kv=gstr("general.name", U64_MAX) +
               struct.pack("<I", T_U8) + b"\1"))
    write(t, "cve-2024-23496-value-length-u64-max",
          gguf(raw_kv=gstr("general.name") + struct.pack("<I", T_STR) +
               gstr("abc", U64_MAX)))
    write(t, "cve-2024-23496-value-length-2pow63",
          gguf(raw_kv=gstr("general.name") + struct.pack("<I", T_STR) +
               gstr("abc", 2**63)))
    write(t, "cve-2024-23496-tensor-name-length-huge",
          gguf(raw_tensors=gstr("w", U64_MAX - 7) + struct.pack("<I", 1)))
    write(t, "cve-2024-21836-string-array-count-overflow",
          gguf(raw_kv=gstr("tokenizer.ggml.tokens") +
               struct.pack("<IIQ", T_ARR, T_STR, 2**61) + gstr("a") +
               gstr("b")))
    write(t, "cve-2024-21836-array-count-u64-max",
          gguf(raw_kv=gstr("tokenizer.ggml.scores") +
               struct.pack("<IIQ", T_ARR, T_F32, U64_MAX) + b"\0" * 8))
    write(t, "array-of-arrays-count-huge",
          gguf(raw_kv=gstr("nested") +
               struct.pack("<IIQIQ", T_ARR, T_ARR, 2, T_ARR, 2**62)))
    deep = struct.pack("<IIQ", T_ARR, T_ARR, 1)
    for _ in range(8):
        deep += struct.pack("<IQ", T_ARR, 1)
    deep += struct.pack("<IQ", T_U8, 1) + b"\1"
    write(t, "array-nesting-too-deep", gguf(raw_kv=gstr("deep") + deep))
    write(t, "cve-2024-21802-n-dims-5",
          gguf(raw_tensors=tinfo("w", [1, 1, 1, 1, 1], 0, 0)))
    write(t, "cve-2024-21802-n-dims-u32-max",
          gguf(raw_tensors=tinfo("w", [1, 1], 0, 0, n_dims=2**32 - 1)))
    write(t, "cve-2024-21802-dims-product-overflows",
          gguf(raw_tensors=tinfo("w", [2**32, 2**32, 2], 0, 0)))
    write(t, "dims-product-overflows-bytes",
          gguf(raw_tensors=tinfo("w", [2**62, 2], 0, 0)))
    write(t, "dims-int64-max", gguf(raw_tensors=tinfo("w", [2**63 - 1], 0, 0)))
    write(t, "dim-zero", gguf(raw_tensors=tinfo("w", [0, 4], 0, 0)))
    write(t, "offset-past-file",
          gguf(raw_tensors=tinfo("w", [4], 0, 4096), data=b"\0" * 16))
    write(t, "offset-plus-size-overflows",
          gguf(raw_tensors=tinfo("w", [4], 0, U64_MAX - 7), data=b"\0" * 16))
    write(t, "offset-misaligned",
          gguf(raw_tensors=tinfo("w", [4], 0, 4), data=b"\0" * 64))
    write(t, "tensors-overlap",
          gguf(raw_tensors=tinfo("a", [8], 0, 0) + tinfo("b", [8], 0, 0),
               n_tensors=2, data=b"\0" * 64))
    write(t, "duplicate-tensor-names",
          gguf(raw_tensors=tinfo("a", [8], 0, 0) + tinfo("a", [8], 0, 32),
               n_tensors=2, data=b"\0" * 64))
    write(t, "duplicate-keys", gguf([("k", T_U8, 1), ("k", T_U8, 2)]))
    write(t, "block-size-mismatch",
          gguf(raw_tensors=tinfo("w", [31], 2, 0), data=b"\0" * 32))
    for name, tid in (("removed-4", 4), ("past-end-39", 39),
                      ("u32-max", 2**32 - 1)):
        write(t, "ggml-type-" + name,
              gguf(raw_tensors=tinfo("w", [32], tid, 0), data=b"\0" * 256))
    write(t, "alignment-zero", gguf([("general.alignment", T_U32, 0)],
                                    tensors[:1]))
    write(t, "alignment-not-power-of-two",
          gguf([("general.alignment", T_U32, 48)], tensors[:1]))
    write(t, "alignment-wrong-type",
          gguf([("general.alignment", T_STR, "32")], tensors[:1]))
    write(t, "alignment-u32-max",
          gguf([("general.alignment", T_U32, 2**32 - 1)], tensors[:1]))
    for v in (0, 1, 4, 2**32 - 1):
        write(t, "version-%d" % v, gguf(meta[:1], version=v))
    write(t, "value-type-13", gguf(raw_kv=gstr("k") + struct.pack("<I", 13)))
    write(t, "value-type-u32-max",
          gguf(raw_kv=gstr("k") + struct.pack("<I", 2**32 - 1)))
    write(t, "key-not-utf8", gguf([(b"k\xc3", T_U8, 1)]))
    write(t, "truncated-header", b"GGUF\3\0\0\0\1\0")
    full = gguf(meta, tensors)
    write(t, "truncated-in-tensor-data", full[:len(full) - 40])


# ---- config.json ----

# ../shared/data/llama-29m-books/config.json
LLAMA_29M_CONFIG = {
    "architectures": [
        "LlamaForCausalLM"
    ],
    "attention_bias": False,
    "attention_dropout": 0.1,
    "bos_token_id": 1,
    "dtype": "bfloat16",
    "eos_token_id": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 512,
    "initializer_range": 0.02,
    "intermediate_size": 1536,
    "max_position_embeddings": 1024,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 8,
    "num_hidden_layers": 8,
    "num_key_value_heads": 4,
    "pad_token_id": None,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {
        "rope_theta": 10000.0,
        "rope_type": "default"
    },
    "tie_word_embeddings": False,
    "transformers_version": "5.17.0",
    "use_cache": True,
    "vocab_size": 4096
}


def config_seeds():
    t = "model_config"
    base = dict(LLAMA_29M_CONFIG)
    write(t, "llama-29m", json.dumps(base, indent=1))
    def variant(name, **changes):
        c = dict(base)
        for k, v in changes.items():
            if v is None and k.startswith("del_"):
                c.pop(k[4:], None)
            else:
                c[k] = v
        write(t, name, json.dumps(c))
    variant("mistral", architectures=["MistralForCausalLM"],
            model_type="mistral", sliding_window=4096, rope_theta=1e6,
            del_rope_parameters=None)
    variant("qwen2", architectures=["Qwen2ForCausalLM"], model_type="qwen2",
            use_sliding_window=False, sliding_window=32768,
            tie_word_embeddings=True, eos_token_id=[2, 3],
            torch_dtype="bfloat16", del_dtype=None)
    variant("llama3-rope", rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        del_rope_parameters=None)
    variant("linear-rope", rope_scaling={"type": "linear", "factor": 2.0})
    variant("yarn-rope", rope_scaling={"type": "yarn", "factor": 4.0})
    variant("attention-bias", attention_bias=True, del_head_dim=None)
    variant("mlp-bias", mlp_bias=True)
    variant("tied-eos-list", tie_word_embeddings=True,
            eos_token_id=[2, 128001, 128009], pad_token_id=0)
    variant("layers-huge", num_hidden_layers=2**62)
    variant("dims-huge", hidden_size=2**40, intermediate_size=2**63 - 1,
            vocab_size=2**31)
    variant("heads-not-dividing", num_attention_heads=7,
            num_key_value_heads=3, del_head_dim=None)
    variant("negative", hidden_size=-512, num_key_value_heads=0,
            rms_norm_eps=-1)
    variant("floats-for-ints", hidden_size=512.5, num_hidden_layers=8.0,
            vocab_size="4096")
    variant("gemma", architectures=["GemmaForCausalLM"], model_type="gemma")
    variant("head-dim-huge", head_dim=2**24, num_attention_heads=1,
            num_key_value_heads=1)
    write(t, "not-object", "[1, 2, 3]")
    write(t, "truncated", json.dumps(base)[:150])
    write(t, "deep", "{\"a\":" * 3000 + "1" + "}" * 3000)


# ---- tokenizers ----

def tokenizer_json_seeds():
    t = "tokenizer_json"
    bytes_to_unicode = {}
    n = 0
    for b in range(256):
        if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
            bytes_to_unicode[b] = chr(b)
        else:
            bytes_to_unicode[b] = chr(256 + n)
            n += 1
    vocab = {bytes_to_unicode[b]: i for i, b in enumerate(range(32, 127))}
    for m in ("he", "ll", "hell", "o\u0120"):
        vocab[m] = len(vocab)
    merges = ["h e", "l l", "he ll", "o \u0120"]
    added = [{"id": len(vocab), "content": "<|begin_of_text|>",
              "special": True},
             {"id": len(vocab) + 1, "content": "<|end_of_text|>",
              "special": True}]
    llama3_regex = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?"
                    "\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    tok = {"version": "1.0", "added_tokens": added,
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
               {"type": "Split", "pattern": {"Regex": llama3_regex},
                "behavior": "Isolated", "invert": False},
               {"type": "ByteLevel", "add_prefix_space": False}]},
           "post_processor": {"type": "TemplateProcessing", "single": [
               {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
               {"Sequence": {"id": "A", "type_id": 0}}]},
           "decoder": {"type": "ByteLevel"},
           "model": {"type": "BPE", "vocab": vocab, "merges": merges}}
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
           "add_bos_token": True, "add_eos_token": False,
           "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
           "added_tokens_decoder": {str(a["id"]): {"content": a["content"],
                                                   "special": True}
                                    for a in added}}
    model_cfg = {"bos_token_id": added[0]["id"], "eos_token_id":
                 [added[1]["id"]], "pad_token_id": None}
    write(t, "llama3-bpe", parts(json.dumps(tok), json.dumps(cfg),
                                 json.dumps(model_cfg)))
    write(t, "bpe-only", parts(json.dumps(tok)))
    tok2 = json.loads(json.dumps(tok))
    tok2["model"]["merges"] = [m.split(" ") for m in merges]
    tok2["pre_tokenizer"] = {"type": "ByteLevel"}
    write(t, "merges-as-pairs", parts(json.dumps(tok2)))
    cfg2 = dict(cfg)
    cfg2["chat_template"] = [{"name": "default", "template": "{{ x }}"},
                             {"name": "tool_use", "template": "{{ y }}"}]
    cfg2["bos_token"] = {"content": "<|begin_of_text|>", "lstrip": False}
    write(t, "template-list", parts(json.dumps(tok), json.dumps(cfg2)))
    cfg3 = {"add_bos_token": False}
    write(t, "template-jinja", parts(json.dumps(tok), json.dumps(cfg3),
                                     "{}", "{{ bos_token }}{{ messages }}"))
    tok3 = json.loads(json.dumps(tok))
    tok3["model"]["byte_fallback"] = True
    write(t, "byte-fallback", parts(json.dumps(tok3)))
    tok4 = json.loads(json.dumps(tok))
    tok4["model"] = {"type": "Unigram", "vocab": [["a", -1.0]]}
    write(t, "unigram", parts(json.dumps(tok4)))
    tok5 = json.loads(json.dumps(tok))
    tok5["added_tokens"].append({"id": 2**40, "content": "x",
                                 "special": True})
    write(t, "id-huge", parts(json.dumps(tok5)))
    tok6 = json.loads(json.dumps(tok))
    tok6["model"]["vocab"]["dup"] = 0
    write(t, "id-shared", parts(json.dumps(tok6)))
    write(t, "special-id-out-of-range", parts(json.dumps(tok), "{}",
          json.dumps({"bos_token_id": 10**9, "eos_token_id": -1})))
    write(t, "wrong-types", parts(json.dumps(
        {"model": {"type": "BPE", "vocab": {"a": "0", "b": -1},
                   "merges": [1, ["a"], "a b c"]},
         "added_tokens": {"id": 0}})))


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        return key + varint(len(payload)) + payload
    if wire == 5:
        return key + struct.pack("<f", payload)
    raise ValueError(wire)


def spm_model(pieces, model_type=2, byte_fallback=False, unk=0, bos=1,
              eos=2, pad=-1):
    """A SentencePiece ModelProto: pieces = [(piece, score, type)]."""
    out = b""
    for piece, score, ptype in pieces:
        sp = (pb_field(1, 2, piece.encode()) + pb_field(2, 5, score) +
              pb_field(3, 0, ptype))
        out += pb_field(1, 2, sp)
    neg = lambda v: v if v >= 0 else v + 2**64
    trainer = (pb_field(3, 0, model_type) + pb_field(4, 0, len(pieces)) +
               pb_field(35, 0, 1 if byte_fallback else 0) +
               pb_field(40, 0, neg(unk)) + pb_field(41, 0, neg(bos)) +
               pb_field(42, 0, neg(eos)) + pb_field(43, 0, neg(pad)))
    normalizer = (pb_field(1, 2, b"identity") + pb_field(3, 0, 1) +
                  pb_field(4, 0, 0) + pb_field(5, 0, 1))
    return out + pb_field(2, 2, trainer) + pb_field(3, 2, normalizer)


def tokenizer_model_seeds():
    t = "tokenizer_model"
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    for i, p in enumerate(["\u2581", "\u2581t", "he", "\u2581the", "a", "b",
                           "e", "h", "t"]):
        pieces.append((p, -float(i), 1))
    # SentencePiece wants all 256 byte pieces with byte_fallback, and none
    # without it.
    with_bytes = pieces[:3] + [("<0x%02X>" % b, 0.0, 6) for b in range(256)]
    with_bytes += pieces[3:]
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "add_bos_token": True, "add_eos_token": False}
    model_cfg = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
    write(t, "bpe-byte-fallback", parts(spm_model(with_bytes, byte_fallback=True),
                                        json.dumps(cfg),
                                        json.dumps(model_cfg)))
    write(t, "bpe-only", parts(spm_model(pieces)))
    write(t, "unigram", parts(spm_model(pieces, model_type=1)))
    write(t, "user-defined-and-unused", parts(spm_model(
        pieces + [("<pad>", 0.0, 4), ("<unused0>", 0.0, 5)], pad=16)))
    write(t, "no-bos-eos", parts(spm_model(pieces, bos=-1, eos=-1),
                                 json.dumps({"add_bos_token": False})))
    write(t, "special-ids-out-of-range", parts(spm_model(pieces), "{}",
          json.dumps({"bos_token_id": 99, "eos_token_id": 2**40})))
    write(t, "config-token-not-in-vocab", parts(spm_model(pieces),
          json.dumps({"bos_token": "<bos>", "eos_token": {"content": 1}})))
    write(t, "no-pieces", parts(spm_model([])))
    write(t, "truncated", parts(spm_model(pieces)[:40]))
    write(t, "not-protobuf", parts("this is not a protobuf\n"))


# ---- recipes ----

def recipe_seeds():
    t = "recipe"
    protos = os.path.join(ROOT, "proto")
    def enc(name, message, text):
        out = subprocess.run(
            ["protoc", "--proto_path=" + ROOT,
             "--encode=quant.v1." + message,
             "proto/quant/v1/quantization_service.proto"],
            input=text.encode(), stdout=subprocess.PIPE, check=True).stdout
        write(t, name, out)
    enc("empty", "Recipe", "")
    enc("gptq-4bit", "Recipe", """method: METHOD_GPTQ bits: 4 group_size: 128
        sym: true gptq { desc_act: true damp_percent: 0.01 block_size: 128
        true_sequential: true mse: true static_groups: true }
        calibration { text_path: "calib.txt" samples: 128 seq_len: 512
        seed: 7 } mode: MODE_PARALLEL output_format: OUTPUT_FORMAT_GPTQ
        sequences_per_pass: 16""")
    enc("awq", "Recipe", """method: METHOD_AWQ bits: 4 group_size: 64
        awq { n_grid: 20 duo_scaling: true clip: true clip_grid: 20
        max_shrink: 0.5 clip_sample_tokens: 512 search_sequences: 16
        fp_inputs: true } output_format: OUTPUT_FORMAT_AWQ
        calibration { tokens_path: "calib.npy" samples: 16 seq_len: 64 }""")
    enc("rtn-gguf", "Recipe", """method: METHOD_RTN output_format:
        OUTPUT_FORMAT_GGUF gguf_type: "Q4_K_M" gguf_grid: false
        eval_texts: "held-out.txt" eval_max_windows: 4
        calibration { samples: 0 }""")
    enc("gptq-gguf-q2k", "Recipe", """method: METHOD_GPTQ output_format:
        OUTPUT_FORMAT_GGUF gguf_type: "Q2_K" calibration { samples: 0 }""")
    enc("group-per-row", "Recipe",
        'bits: 8 group_size: -1 calibration { text_path: "c.txt" }')
    enc("bad-bits", "Recipe", "bits: 5 group_size: 0")
    enc("bad-ranges", "Recipe", """group_size: -2147483648
        sequences_per_pass: -1 gptq { damp_percent: -1 block_size: 0 }
        awq { n_grid: 0 max_shrink: 2 } calibration { samples: -5
        seq_len: 9223372036854775807 } eval_max_windows: -1""")
    enc("bad-gguf-type", "Recipe",
        'output_format: OUTPUT_FORMAT_GGUF gguf_type: "Q4_K_X" '
        'calibration { text_path: "c.txt" }')
    enc("enums-out-of-range", "Recipe", "method: 99 mode: 7 output_format: 12")
    enc("job", "JobSpec", """model_dir: "/models/llama" output: "/out/q4.gguf"
        name: "job" recipe { method: METHOD_GPTQ bits: 4
        output_format: OUTPUT_FORMAT_GGUF gguf_type: "Q4_K_M"
        calibration { text_path: "calib.txt" } }""")
    # Field 99 is in no schema: CheckNoUnknownFields must name it.
    write(t, "unknown-field", pb_field(99, 0, 1) + pb_field(2, 0, 4))
    write(t, "unknown-nested-field", pb_field(5, 2, pb_field(77, 2, b"x")))
    write(t, "truncated", pb_field(10, 2, b"Q4_K_M")[:-3])


def main():
    safetensors_seeds()
    index_seeds()
    gguf_seeds()
    config_seeds()
    tokenizer_json_seeds()
    tokenizer_model_seeds()
    recipe_seeds()
    total = 0
    for target in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, target))
        size = sum(os.path.getsize(os.path.join(CORPUS, target, f))
                   for f in files)
        total += size
        print("%-18s %3d inputs %7d bytes" % (target, len(files), size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
