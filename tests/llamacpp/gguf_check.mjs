#!/usr/bin/env node
// Conformance check of a GGUF file against llama.cpp itself, through node-llama-cpp 3.22.1.
//
//   node gguf_check.mjs --model FILE.gguf [--expect expect.json] [--generate N] [--prompt TEXT]
//       [--ppl-text FILE.txt [--ppl-ctx 512] [--ppl-max-windows K]]
//       [--ref-tokens tokens.npy] [--ref-logits logits.npy [--ref-logits-tol X]]
//       [--threads N] [--out result.json] [--verbose]
//
// What it checks:
//  1. llama.cpp loads the file; the metadata llama.cpp reports (its load log and the native model
//     getters) agrees with the GGUF header (node-llama-cpp's GGUF parser) and with --expect.
//  2. Greedy generation of N tokens gives a non-empty text, and the generated tokens are the argmax
//     of the logits of one batched evaluation of prompt + generated text (KV-cache path == batch path).
//  3. Perplexity by the method of ../shared/data/README.md: paragraphs split on "\n\n", token
//     stream = concat([BOS] + tokenize(paragraph)), windows of --ppl-ctx tokens at s = 0, ctx, 2ctx,
//     ... while s + ctx < len, each one fresh sequence from position 0, NLL from the full logits of
//     every position (log-softmax in float64 here).
//  4. Optionally: the start of that token stream equals --ref-tokens (sentencepiece's ids), and the
//     logits of the reference tokens match --ref-logits.
//
// The module is found through $QS_NODE_MODULES (a node_modules folder), then $NODE_PATH, then a
// node_modules folder beside this script, then the ordinary resolution. ES modules ignore NODE_PATH,
// so the entry point is resolved by hand and imported by absolute path.
//
// Exit status: 0 all checks passed, 1 a check failed (or llama.cpp failed), 2 bad usage.

import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import {fileURLToPath, pathToFileURL} from "node:url";

const kPinnedVersion = "3.22.1";
const kDefaultPrompt = "Once upon a time";

class UsageError extends Error {}

function parseArgs(argv) {
  const spec = {
    "--model": "string", "--expect": "string", "--generate": "int", "--prompt": "string",
    "--ppl-text": "string", "--ppl-ctx": "int", "--ppl-max-windows": "int",
    "--ref-tokens": "string", "--ref-logits": "string", "--ref-logits-tol": "float",
    "--threads": "int", "--out": "string", "--verbose": "flag", "--help": "flag",
  };
  const opts = {
    model: null, expect: null, generate: 0, prompt: kDefaultPrompt, pplText: null, pplCtx: 512,
    pplMaxWindows: 0, refTokens: null, refLogits: null, refLogitsTol: 0.01, threads: 0, out: null,
    verbose: false, help: false,
  };
  const camel = (flag) => flag.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
  for (let i = 0; i < argv.length; i++) {
    let flag = argv[i];
    let value = null;
    const eq = flag.indexOf("=");
    if (flag.startsWith("--") && eq > 0) {
      value = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    }
    const kind = spec[flag];
    if (kind == null) throw new UsageError(`unknown argument: ${argv[i]}`);
    if (kind === "flag") {
      opts[camel(flag)] = true;
      continue;
    }
    if (value == null) {
      if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
      value = argv[++i];
    }
    if (kind === "int") {
      if (!/^\d+$/.test(value)) throw new UsageError(`${flag} needs a non-negative integer, got "${value}"`);
      opts[camel(flag)] = Number(value);
    } else if (kind === "float") {
      const x = Number(value);
      if (!Number.isFinite(x) || x < 0) throw new UsageError(`${flag} needs a non-negative number, got "${value}"`);
      opts[camel(flag)] = x;
    } else {
      opts[camel(flag)] = value;
    }
  }
  if (opts.help) return opts;
  if (opts.model == null) throw new UsageError("--model FILE.gguf is required");
  if (opts.pplCtx < 2) throw new UsageError("--ppl-ctx must be at least 2");
  if (opts.refLogits != null && opts.refTokens == null)
    throw new UsageError("--ref-logits needs --ref-tokens (the token ids the logits belong to)");
  return opts;
}

const kUsage = `usage: node gguf_check.mjs --model FILE.gguf [--expect expect.json] [--generate N]
    [--prompt TEXT] [--ppl-text FILE.txt [--ppl-ctx 512] [--ppl-max-windows K]]
    [--ref-tokens tokens.npy] [--ref-logits logits.npy [--ref-logits-tol 0.01]]
    [--threads N] [--out result.json] [--verbose]
env: QS_NODE_MODULES=/path/to/node_modules (holding node-llama-cpp ${kPinnedVersion}) or NODE_PATH`;

// ---------------------------------------------------------------------------------------------
// Locating node-llama-cpp.

function packageEntry(nodeModulesDir) {
  const pkgDir = path.join(nodeModulesDir, "node-llama-cpp");
  const pkgJsonPath = path.join(pkgDir, "package.json");
  if (!fs.existsSync(pkgJsonPath)) return null;
  const pkg = JSON.parse(fs.readFileSync(pkgJsonPath, "utf8"));
  let entry = null;
  const dot = pkg.exports?.["."];
  if (typeof dot === "string") entry = dot;
  else if (dot != null) entry = dot.import ?? dot.node ?? dot.default ?? null;
  entry ??= pkg.main ?? "index.js";
  return {file: path.resolve(pkgDir, entry), version: pkg.version, dir: pkgDir};
}

async function loadNodeLlamaCpp() {
  const tried = [];
  const candidates = [];
  if (process.env.QS_NODE_MODULES) candidates.push(["QS_NODE_MODULES", process.env.QS_NODE_MODULES]);
  for (const dir of (process.env.NODE_PATH ?? "").split(path.delimiter).filter((d) => d !== ""))
    candidates.push(["NODE_PATH", dir]);
  const here = path.dirname(fileURLToPath(import.meta.url));
  candidates.push(["script folder", path.join(here, "node_modules")]);
  for (const [source, dir] of candidates) {
    const found = packageEntry(path.resolve(dir));
    tried.push(`${source}: ${dir}`);
    if (found == null) {
      if (source === "QS_NODE_MODULES")
        throw new Error(`QS_NODE_MODULES=${dir} holds no node-llama-cpp/package.json`);
      continue;
    }
    const module = await import(pathToFileURL(found.file).href);
    return {module, version: found.version, dir: found.dir};
  }
  try {
    const module = await import("node-llama-cpp");
    return {module, version: null, dir: null};
  } catch (e) {
    throw new Error(`cannot find node-llama-cpp (tried ${tried.join("; ")}; then a bare import: ` +
                    `${e.message}). Set QS_NODE_MODULES to a node_modules folder holding it.`);
  }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 10 || buf.toString("latin1", 0, 6) !== "\x93NUMPY")
    throw new Error(`${file}: not a .npy file (bad magic)`);
  const major = buf[6];
  let headerLen;
  let offset;
  if (major === 1) {
    headerLen = buf.readUInt16LE(8);
    offset = 10;
  } else if (major === 2 || major === 3) {
    headerLen = buf.readUInt32LE(8);
    offset = 12;
  } else {
    throw new Error(`${file}: unsupported .npy version ${major}`);
  }
  if (offset + headerLen > buf.length) throw new Error(`${file}: truncated .npy header`);
  const header = buf.toString("latin1", offset, offset + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr == null || fortran == null || shapeText == null)
    throw new Error(`${file}: cannot parse .npy header ${JSON.stringify(header)}`);
  if (fortran === "True") throw new Error(`${file}: fortran_order arrays are not supported`);
  const shape = shapeText.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const kinds = {"<i4": [Int32Array, 4], "<f4": [Float32Array, 4], "<i8": [BigInt64Array, 8],
                 "<f8": [Float64Array, 8], "<u4": [Uint32Array, 4]};
  const kind = kinds[descr];
  if (kind == null) throw new Error(`${file}: unsupported dtype ${descr}`);
  const dataStart = offset + headerLen;
  if (buf.length - dataStart !== count * kind[1])
    throw new Error(`${file}: expected ${count * kind[1]} data bytes for shape [${shape}], ` +
                    `found ${buf.length - dataStart}`);
  const copy = new Uint8Array(buf.subarray(dataStart));  // aligned copy
  const data = Array.from(new kind[0](copy.buffer), (x) => Number(x));
  return {shape, data};
}

function toPlain(value) {
  if (typeof value === "bigint") return Number(value);
  return value;
}

// Flattens node-llama-cpp's nested GGUF metadata back into "a.b.c" keys.
function flattenMetadata(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix === "" ? k : `${prefix}.${k}`;
    if (v != null && typeof v === "object" && !Array.isArray(v)) flattenMetadata(v, key, out);
    else out[key] = Array.isArray(v) ? v.map(toPlain) : toPlain(v);
  }
  return out;
}

function summarizeValue(v) {
  if (Array.isArray(v) && v.length > 16) return {array_length: v.length, first: v.slice(0, 4)};
  return v;
}

function parseLoggedNumber(text) {
  const t = text.trim();
  if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t)) return Number(t);
  return t;
}

function valuesMatch(actual, expected, relTol) {
  if (actual === undefined || actual === null) return false;
  if (typeof expected === "number") {
    const a = typeof actual === "string" ? Number(actual) : actual;
    if (typeof a !== "number" || !Number.isFinite(a)) return false;
    if (Number.isInteger(expected) && Number.isInteger(a)) return a === expected;
    const scale = Math.max(Math.abs(expected), Math.abs(a));
    return Math.abs(a - expected) <= relTol * scale || Math.abs(a - expected) === 0;
  }
  if (typeof expected === "string" || typeof expected === "boolean") return actual === expected;
  return JSON.stringify(actual) === JSON.stringify(expected);
}

function fmt(v) {
  if (v === undefined) return "(absent)";
  if (typeof v === "number" && !Number.isInteger(v)) return String(Number(v.toPrecision(7)));
  return typeof v === "string" ? v : JSON.stringify(summarizeValue(v));
}

function logitArgmax(values) {
  let best = -1;
  let bestValue = -Infinity;
  for (const [token, value] of values) {
    if (value > bestValue) {
      bestValue = value;
      best = token;
    }
  }
  return [best, bestValue];
}

// -log softmax(logits)[target], in float64. `logits` is a Map<token, logit> over the whole vocabulary.
function negLogLikelihood(logits, target) {
  let max = -Infinity;
  for (const v of logits.values()) if (v > max) max = v;
  let sum = 0;
  for (const v of logits.values()) sum += Math.exp(v - max);
  const t = logits.get(target);
  if (t === undefined) throw new Error(`target token ${target} is missing from the logits`);
  return Math.log(sum) + max - t;
}

// ---------------------------------------------------------------------------------------------
// The checker.

class Checker {
  constructor(opts) {
    this.opts = opts;
    this.checks = [];
    this.result = {model: path.resolve(opts.model), ok: false, checks: this.checks};
    this.logLines = [];
  }

  check(name, ok, detail) {
    this.checks.push({name, ok: !!ok, detail});
    const line = `${ok ? "PASS" : "FAIL"}  ${name}${detail ? `: ${detail}` : ""}`;
    (ok ? console.log : console.error)(line);
    return ok;
  }

  logger(level, message) {
    for (const line of String(message).split("\n")) if (line.trim() !== "") this.logLines.push(line);
    if (this.opts.verbose || level === "error" || level === "fatal")
      process.stderr.write(`[llama.cpp ${level}] ${message}${message.endsWith("\n") ? "" : "\n"}`);
  }

  // What llama.cpp printed while loading the model (the last load wins).
  parseLoadLog() {
    const info = {};
    let kvCount;
    let tensorCount;
    const tensorTypes = {};
    for (const line of this.logLines) {
      let m = /loaded meta data with (\d+) key-value pairs and (\d+) tensors/.exec(line);
      if (m) {
        kvCount = Number(m[1]);
        tensorCount = Number(m[2]);
        for (const k of Object.keys(tensorTypes)) delete tensorTypes[k];
        continue;
      }
      m = /llama_model_loader: - type\s+(\S+):\s+(\d+) tensors/.exec(line);
      if (m) {
        tensorTypes[m[1]] = Number(m[2]);
        continue;
      }
      m = /print_info: (.+?)\s+=\s+(.*)$/.exec(line);
      if (m) info[m[1].trim()] = parseLoggedNumber(m[2]);
    }
    return {print_info: info, kv_count: kvCount, tensor_count: tensorCount, tensor_types: tensorTypes};
  }

  async run() {
    const opts = this.opts;
    const {module: nlc, version, dir} = await loadNodeLlamaCpp();
    this.result.node_llama_cpp = {version, dir};
    if (version != null && version !== kPinnedVersion)
      console.error(`warning: node-llama-cpp ${version} found; this harness is written for ${kPinnedVersion}`);

    const llama = await nlc.getLlama({
      gpu: false, build: "never", logLevel: nlc.LlamaLogLevel.info,
      logger: (level, message) => this.logger(level, message),
    });
    this.llama = llama;
    const threads = opts.threads > 0 ? opts.threads : Math.max(1, llama.cpuMathCores);
    this.result.runtime = {
      gpu: llama.gpu, build_type: llama.buildType, llama_cpp_release: llama.llamaCppRelease,
      cpu_math_cores: llama.cpuMathCores, threads,
    };
    console.log(`node-llama-cpp ${version ?? "?"}, llama.cpp ${JSON.stringify(llama.llamaCppRelease)}, ` +
                `gpu=${llama.gpu}, threads=${threads}`);

    if (!fs.existsSync(opts.model)) {
      this.check("load", false, `no such file: ${opts.model}`);
      return;
    }
    this.result.file_size = fs.statSync(opts.model).size;
    let model;
    const t0 = performance.now();
    try {
      model = await llama.loadModel({modelPath: opts.model, gpuLayers: 0});
    } catch (e) {
      const tail = this.logLines.slice(-8).join("\n  ");
      this.check("load", false, `llama.cpp could not load ${opts.model}: ${e.message}\n  ${tail}`);
      return;
    }
    this.model = model;
    this.check("load", true, `${model.typeDescription}, ${(this.result.file_size / 1e6).toFixed(1)} MB, ` +
               `${((performance.now() - t0) / 1000).toFixed(2)} s`);
    this.threads = threads;

    // llama.cpp's log reaches JS asynchronously: let it drain before parsing.
    await new Promise((resolve) => setTimeout(resolve, 200));
    this.checkMetadata();
    if (opts.generate > 0) await this.checkGeneration();
    if (opts.pplText != null || opts.refTokens != null) await this.checkPerplexityAndReference();
  }

  checkMetadata() {
    const opts = this.opts;
    const model = this.model;
    const fileInfo = model.fileInfo;
    const gguf = flattenMetadata(fileInfo.metadata ?? {});
    const log = this.parseLoadLog();
    const pi = log.print_info;
    const arch = gguf["general.architecture"];

    // llama.cpp's own view: its load log plus the native getters of the loaded model.
    const llamaView = {
      architecture: pi["arch"],
      context_length: model.trainContextSize,
      embedding_length: pi["n_embd"] ?? model.embeddingVectorSize,
      feed_forward_length: pi["n_ff"],
      block_count: pi["n_layer"],
      head_count: pi["n_head"],
      head_count_kv: pi["n_head_kv"],
      rope_dimension_count: pi["n_rot"],
      rope_freq_base: pi["freq_base_train"],
      rms_eps: pi["f_norm_rms_eps"],
      vocab_size: pi["n_vocab"],
      vocab_type: model.vocabularyType,
      bos_token_id: model.tokens.bos ?? undefined,
      eos_token_id: model.tokens.eos ?? undefined,
      file_type: typeof pi["file type"] === "string" ? pi["file type"] : undefined,
      model_description: model.typeDescription,
      tensor_count: log.tensor_count,
      kv_count: log.kv_count,
      tensor_types: log.tensor_types,
      model_params: pi["model params"],
    };
    // The same facts as written in the GGUF header (node-llama-cpp's JS parser).
    const ggufView = {
      architecture: arch,
      context_length: gguf[`${arch}.context_length`],
      embedding_length: gguf[`${arch}.embedding_length`],
      feed_forward_length: gguf[`${arch}.feed_forward_length`],
      block_count: gguf[`${arch}.block_count`],
      head_count: gguf[`${arch}.attention.head_count`],
      head_count_kv: gguf[`${arch}.attention.head_count_kv`] ?? gguf[`${arch}.attention.head_count`],
      rope_dimension_count: gguf[`${arch}.rope.dimension_count`],
      rope_freq_base: gguf[`${arch}.rope.freq_base`],
      rms_eps: gguf[`${arch}.attention.layer_norm_rms_epsilon`],
      vocab_size: Array.isArray(gguf["tokenizer.ggml.tokens"]) ? gguf["tokenizer.ggml.tokens"].length
                                                               : gguf[`${arch}.vocab_size`],
      bos_token_id: gguf["tokenizer.ggml.bos_token_id"],
      eos_token_id: gguf["tokenizer.ggml.eos_token_id"],
      file_type_id: gguf["general.file_type"],
      tensor_count: toPlain(fileInfo.tensorCount),
      gguf_version: fileInfo.version,
      kv_count: Object.keys(gguf).length,
    };
    this.result.metadata = llamaView;
    this.result.gguf_metadata = ggufView;
    this.result.gguf_kv = Object.fromEntries(Object.entries(gguf).map(([k, v]) => [k, summarizeValue(v)]));
    this.result.llama_cpp_print_info = pi;

    console.log("\nmetadata                 llama.cpp                gguf header");
    const keys = ["architecture", "context_length", "embedding_length", "feed_forward_length",
                  "block_count", "head_count", "head_count_kv", "rope_dimension_count",
                  "rope_freq_base", "rms_eps", "vocab_size", "bos_token_id", "eos_token_id",
                  "file_type", "file_type_id", "tensor_count", "kv_count"];
    for (const k of keys)
      console.log(`  ${k.padEnd(22)} ${fmt(llamaView[k]).padEnd(24)} ${fmt(ggufView[k])}`);
    console.log(`  vocab type ${llamaView.vocab_type}; tensor types ${JSON.stringify(log.tensor_types)}; ` +
                `${llamaView.model_description}\n`);

    // llama.cpp must see what the header says. Floats are printed by llama.cpp with few digits.
    const mismatches = [];
    let compared = 0;
    for (const k of ["architecture", "context_length", "embedding_length", "feed_forward_length",
                     "block_count", "head_count", "head_count_kv", "rope_dimension_count",
                     "rope_freq_base", "rms_eps", "vocab_size", "bos_token_id", "eos_token_id",
                     "tensor_count"]) {
      const a = llamaView[k];
      const g = ggufView[k];
      if (a === undefined || g === undefined) continue;
      compared++;
      if (!valuesMatch(a, g, 1e-3)) mismatches.push(`${k}: llama.cpp ${fmt(a)} vs header ${fmt(g)}`);
    }
    if (llamaView.tensor_count === undefined || llamaView.block_count === undefined)
      mismatches.push("could not read llama.cpp's load log (print_info / llama_model_loader lines)");
    this.check("metadata: llama.cpp agrees with the GGUF header", mismatches.length === 0,
               mismatches.length === 0 ? `${compared} fields` : mismatches.join("; "));
    const tensorInfoCount = fileInfo.tensorInfo?.length;
    if (tensorInfoCount !== undefined)
      this.check("metadata: tensor infos", tensorInfoCount === ggufView.tensor_count,
                 `${tensorInfoCount} tensor infos, header count ${ggufView.tensor_count}`);

    if (opts.expect != null) {
      let expect;
      try {
        expect = JSON.parse(fs.readFileSync(opts.expect, "utf8"));
      } catch (e) {
        this.check("expect", false, `cannot read ${opts.expect}: ${e.message}`);
        return;
      }
      const bad = [];
      for (const [key, want] of Object.entries(expect)) {
        // Plain names (vocab_size, tensor_count, file_type, ...) are llama.cpp's view; dotted names
        // are GGUF keys (also looked up as written, e.g. "general.file_type").
        let got;
        let source;
        if (key in llamaView && llamaView[key] !== undefined) {
          got = llamaView[key];
          source = "llama.cpp";
        } else if (key in ggufView && ggufView[key] !== undefined) {
          got = ggufView[key];
          source = "header";
        } else {
          got = gguf[key];
          source = "gguf";
        }
        if (!valuesMatch(got, want, 1e-6)) bad.push(`${key}: expected ${fmt(want)}, ${source} has ${fmt(got)}`);
      }
      this.result.expect = expect;
      this.check("metadata: --expect", bad.length === 0,
                 bad.length === 0 ? `${Object.keys(expect).length} keys match` : bad.join("; "));
    }
  }

  async newSequence(contextSize) {
    const size = Math.ceil((contextSize + 1) / 256) * 256;
    const ctx = await this.model.createContext({
      contextSize: size, batchSize: Math.min(512, size), sequences: 1, threads: this.threads,
    });
    // node-llama-cpp keeps one cell free: a sequence holds at most contextSize - 1 tokens without a
    // context shift, and a shift would silently change what is evaluated.
    if (ctx.contextSize - 1 < contextSize) {
      await ctx.dispose();
      throw new Error(`context of ${ctx.contextSize} is too small for ${contextSize} tokens`);
    }
    return {ctx, seq: ctx.getSequence()};
  }

  // Evaluates `tokens` as one fresh sequence from position 0 and returns the full logits (a
  // Map<token, logit> over the whole vocabulary) for every position in `positions`.
  async evalLogits(seq, tokens, positions) {
    await seq.clearHistory();
    if (seq.nextTokenIndex !== 0) throw new Error("sequence not empty after clearHistory()");
    const want = new Set(positions);
    const input = tokens.map((t, i) => want.has(i)
      ? [t, {generateNext: {logits: true, options: {temperature: 0}}}]
      : t);
    const out = await seq.controlledEvaluate(input);
    if (seq.nextTokenIndex !== tokens.length)
      throw new Error(`sequence holds ${seq.nextTokenIndex} tokens after evaluating ${tokens.length}` +
                      " (a context shift happened?)");
    return positions.map((i) => {
      const logits = out[i]?.next?.logits;
      if (logits == null) throw new Error(`no logits returned for position ${i}`);
      return logits;
    });
  }

  promptTokens() {
    const model = this.model;
    const tokens = model.tokenize(this.opts.prompt, false);
    if (model.tokens.bos != null) tokens.unshift(model.tokens.bos);
    return tokens;
  }

  async checkGeneration() {
    const opts = this.opts;
    const model = this.model;
    const prompt = this.promptTokens();
    const {ctx, seq} = await this.newSequence(prompt.length + opts.generate + 1);
    try {
      const generated = [];
      let stoppedAtEog = false;
      const t0 = performance.now();
      for await (const token of seq.evaluate(prompt, {temperature: 0, yieldEogToken: true})) {
        if (model.isEogToken(token)) {
          stoppedAtEog = true;
          break;
        }
        generated.push(token);
        if (generated.length >= opts.generate) break;
      }
      const seconds = (performance.now() - t0) / 1000;
      const text = model.detokenize(generated);
      this.result.generation = {
        prompt: opts.prompt, prompt_tokens: prompt, tokens: generated, text, stopped_at_eog: stoppedAtEog,
        seconds, tokens_per_s: generated.length / seconds,
      };
      console.log(`\ngreedy generation (${generated.length} tokens, ${seconds.toFixed(2)} s):\n` +
                  `  ${JSON.stringify(opts.prompt + text)}\n`);
      this.check("generation: non-empty", generated.length > 0 && text.trim() !== "",
                 `${generated.length} tokens, ${text.length} chars${stoppedAtEog ? ", stopped at EOG" : ""}`);
      if (generated.length === 0) return;

      // The tokens chosen one at a time through the KV cache must be the argmax of one batched
      // evaluation of the same text (small numeric differences between the two paths may swap
      // near-ties, hence the tolerance on the logit gap).
      const all = prompt.concat(generated.slice(0, -1));
      const positions = [];
      for (let i = prompt.length - 1; i < all.length; i++) positions.push(i);
      const logits = await this.evalLogits(seq, all, positions);
      this.nVocabFromLogits = logits[0].size;
      let disagreements = 0;
      let maxGap = 0;
      logits.forEach((l, j) => {
        const [best, bestValue] = logitArgmax(l);
        const gap = bestValue - l.get(generated[j]);
        if (best !== generated[j]) disagreements++;
        maxGap = Math.max(maxGap, gap);
      });
      this.result.generation.batch_argmax_disagreements = disagreements;
      this.result.generation.batch_max_logit_gap = maxGap;
      this.check("generation: greedy tokens == argmax of batched logits", maxGap <= 0.1,
                 `${disagreements}/${generated.length} differ, largest logit gap ${maxGap.toExponential(2)}`);
      // llama.cpp's real n_vocab is the width of its logits; the load log
      // (delivered asynchronously) is not reliable enough to count on here.
      const headerVocab = this.result.gguf_metadata.vocab_size;
      this.check("vocab: logits cover the vocabulary", this.nVocabFromLogits === headerVocab,
                 `${this.nVocabFromLogits} logits per position, ${headerVocab} tokens in the header`);
      this.result.metadata.n_vocab_logits = this.nVocabFromLogits;
    } finally {
      await ctx.dispose();
    }
  }

  tokenStream(text) {
    const model = this.model;
    const bos = model.tokens.bos;
    if (bos == null) throw new Error("the model has no BOS token");
    const tokens = [];
    let paragraphs = 0;
    for (const paragraph of text.split("\n\n")) {
      if (paragraph === "") continue;
      paragraphs++;
      tokens.push(bos);
      for (const t of model.tokenize(paragraph, false)) tokens.push(t);
    }
    return {tokens, paragraphs};
  }

  async checkPerplexityAndReference() {
    const opts = this.opts;
    const n = opts.pplCtx;
    let stream = null;
    if (opts.pplText != null) {
      const text = fs.readFileSync(opts.pplText, "utf8");
      const t0 = performance.now();
      stream = this.tokenStream(text);
      console.log(`tokenized ${opts.pplText}: ${stream.paragraphs} paragraphs, ${stream.tokens.length} ` +
                  `tokens (${((performance.now() - t0) / 1000).toFixed(2)} s)`);
    }
    let refTokens = null;
    if (opts.refTokens != null) {
      refTokens = readNpy(opts.refTokens).data;
      if (stream != null) {
        const ours = stream.tokens.slice(0, refTokens.length);
        const first = ours.findIndex((t, i) => t !== refTokens[i]);
        this.check("tokenizer: stream starts with --ref-tokens", first < 0 && ours.length === refTokens.length,
                   first < 0 ? `${refTokens.length} tokens equal`
                             : `first difference at ${first}: ${ours.slice(first, first + 4)} vs ` +
                               `${refTokens.slice(first, first + 4)}`);
      }
    }

    const ctxTokens = Math.max(n, refTokens?.length ?? 0);
    const {ctx, seq} = await this.newSequence(ctxTokens);
    try {
      if (opts.refLogits != null) await this.checkReferenceLogits(seq, refTokens);
      if (stream != null) await this.perplexity(seq, stream.tokens);
    } finally {
      await ctx.dispose();
    }
  }

  async checkReferenceLogits(seq, refTokens) {
    const ref = readNpy(this.opts.refLogits);
    if (ref.shape.length !== 2 || ref.shape[0] !== refTokens.length)
      throw new Error(`${this.opts.refLogits}: shape [${ref.shape}] does not fit ${refTokens.length} tokens`);
    const vocab = ref.shape[1];
    const positions = refTokens.map((_, i) => i);
    const logits = await this.evalLogits(seq, refTokens, positions);
    let maxAbs = 0;
    let refMaxAbs = 0;
    let argmaxAgree = 0;
    let maxLogProbDiff = 0;
    for (let i = 0; i < positions.length; i++) {
      const l = logits[i];
      if (l.size !== vocab) throw new Error(`reference has ${vocab} logits per position, llama.cpp ${l.size}`);
      const row = ref.data.slice(i * vocab, (i + 1) * vocab);
      let refBest = 0;
      let refMax = -Infinity;
      let refSum = 0;
      for (let v = 0; v < vocab; v++) if (row[v] > refMax) { refMax = row[v]; refBest = v; }
      for (let v = 0; v < vocab; v++) refSum += Math.exp(row[v] - refMax);
      let ourMax = -Infinity;
      for (const x of l.values()) if (x > ourMax) ourMax = x;
      let ourSum = 0;
      for (const x of l.values()) ourSum += Math.exp(x - ourMax);
      for (let v = 0; v < vocab; v++) {
        const ours = l.get(v);
        maxAbs = Math.max(maxAbs, Math.abs(ours - row[v]));
        refMaxAbs = Math.max(refMaxAbs, Math.abs(row[v]));
        const lpOurs = ours - ourMax - Math.log(ourSum);
        const lpRef = row[v] - refMax - Math.log(refSum);
        // Only the probable tokens matter for log-probabilities (far tails are noise).
        if (lpRef > -10) maxLogProbDiff = Math.max(maxLogProbDiff, Math.abs(lpOurs - lpRef));
      }
      if (logitArgmax(l)[0] === refBest) argmaxAgree++;
    }
    const rel = maxAbs / refMaxAbs;
    this.result.reference_logits = {
      positions: positions.length, max_abs_diff: maxAbs, ref_max_abs: refMaxAbs, max_rel_diff: rel,
      max_logprob_diff: maxLogProbDiff, argmax_agree: argmaxAgree, tolerance: this.opts.refLogitsTol,
    };
    this.check("reference logits", rel <= this.opts.refLogitsTol,
               `${positions.length} positions: max |diff| ${maxAbs.toExponential(3)} = ` +
               `${rel.toExponential(3)} of max |logit| (tol ${this.opts.refLogitsTol}), ` +
               `max log-prob diff ${maxLogProbDiff.toExponential(3)}, argmax agrees ${argmaxAgree}/${positions.length}`);
  }

  async perplexity(seq, tokens) {
    const opts = this.opts;
    const n = opts.pplCtx;
    const starts = [];
    for (let s = 0; s + n < tokens.length; s += n) starts.push(s);
    const totalWindows = starts.length;
    if (opts.pplMaxWindows > 0) starts.splice(opts.pplMaxWindows);
    if (starts.length === 0) {
      this.check("perplexity", false, `text has ${tokens.length} tokens: not enough for one window of ${n}`);
      return;
    }
    const positions = Array.from({length: n}, (_, i) => i);
    let nll = 0;
    let count = 0;
    let evalSeconds = 0;
    const windowNll = [];
    const t0 = performance.now();
    for (let w = 0; w < starts.length; w++) {
      const s = starts[w];
      const tw = performance.now();
      const logits = await this.evalLogits(seq, tokens.slice(s, s + n), positions);
      evalSeconds += (performance.now() - tw) / 1000;
      let sum = 0;
      for (let i = 0; i < n; i++) sum += negLogLikelihood(logits[i], tokens[s + i + 1]);
      windowNll.push(sum);
      nll += sum;
      count += n;
      if (opts.verbose || w === starts.length - 1 || (w + 1) % 10 === 0)
        console.log(`  window ${w + 1}/${starts.length}: ppl so far ${Math.exp(nll / count).toFixed(4)}`);
    }
    const seconds = (performance.now() - t0) / 1000;
    const ppl = Math.exp(nll / count);
    this.result.perplexity = {
      text: path.resolve(opts.pplText), ctx: n, tokens: tokens.length, windows: starts.length,
      windows_available: totalWindows, targets: count, nll, ppl, seconds, eval_seconds: evalSeconds,
      tokens_per_s: count / seconds, window_nll: windowNll,
    };
    console.log(`\nperplexity ${ppl.toFixed(4)} over ${starts.length}/${totalWindows} windows of ${n} ` +
                `(${count} targets), ${seconds.toFixed(1)} s, ${(count / seconds).toFixed(1)} tokens/s\n`);
    this.check("perplexity: finite", Number.isFinite(ppl) && ppl >= 1, `ppl ${ppl.toFixed(4)}`);
  }

  async dispose() {
    try {
      await this.model?.dispose();
      await this.llama?.dispose();
    } catch {
      // Nothing useful to do on the way out.
    }
  }
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`error: ${e.message}\n${kUsage}`);
    return 2;
  }
  if (opts.help) {
    console.log(kUsage);
    return 0;
  }
  const checker = new Checker(opts);
  const started = performance.now();
  try {
    await checker.run();
  } catch (e) {
    checker.check("run", false, opts.verbose ? (e.stack ?? String(e)) : (e.message ?? String(e)));
  } finally {
    await checker.dispose();
  }
  const result = checker.result;
  result.seconds = (performance.now() - started) / 1000;
  result.ok = checker.checks.length > 0 && checker.checks.every((c) => c.ok);
  if (opts.out != null) {
    fs.mkdirSync(path.dirname(path.resolve(opts.out)), {recursive: true});
    fs.writeFileSync(opts.out, JSON.stringify(result, null, 1) + "\n");
  }
  const failed = checker.checks.filter((c) => !c.ok);
  console.log(`${result.ok ? "OK" : "FAILED"}: ${checker.checks.length - failed.length} passed, ` +
              `${failed.length} failed (${result.seconds.toFixed(1)} s)`);
  return result.ok ? 0 : 1;
}

process.exitCode = await main();
