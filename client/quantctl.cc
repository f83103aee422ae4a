#include "client/quantctl.h"

#include <cstdio>
#include <filesystem>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/service_client.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "convert/gguf_converter.h"
#include "convert/tiny_llama.h"
#include "format/gguf.h"
#include "format/model_config.h"
#include "kernels/cpu/compute_kernel.h"
#include "model/perplexity.h"
#include "proto/recipe.h"
#include "quant/checkpoint_export.h"

namespace quant {
namespace {

absl::Status RequireFlag(const std::string& value, const char* flag,
                         const std::string& command) {
  if (!value.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("quantctl ", command, " needs --", flag));
}

absl::Status RunConvert(const QuantctlOptions& options, std::ostream& out,
                        std::ostream& err) {
  RETURN_IF_ERROR(RequireFlag(options.model, "model", "convert"));
  RETURN_IF_ERROR(RequireFlag(options.out, "out", "convert"));
  ConvertOptions convert;
  convert.model_dir = options.model;
  convert.output_path = options.out;
  ASSIGN_OR_RETURN(convert.mix, ParseQuantMix(options.type));
  convert.num_threads = options.threads;
  convert.on_progress = [&](const ConvertProgress& p) {
    const double mb = p.input_bytes_done / 1e6;
    const std::string line = absl::StrFormat(
        "[%*d/%d] %5.1f%%  %-28s %-5s  %7.1f MB in %5.1f s (%.0f MB/s)",
        static_cast<int>(std::to_string(p.tensor_count).size()), p.tensor_index,
        p.tensor_count,
        100.0 * p.input_bytes_done / std::max<uint64_t>(1, p.input_bytes_total),
        p.tensor_name, GgmlTypeName(p.type), mb, p.seconds,
        p.seconds > 0 ? mb / p.seconds : 0.0);
    if (options.progress_on_tty) {
      err << "\r" << line << "\x1b[K" << std::flush;
    } else {
      err << line << "\n";
    }
  };
  ASSIGN_OR_RETURN(const ConvertResult result, ConvertToGguf(convert));
  if (options.progress_on_tty) err << "\n";
  std::vector<std::string> counts;
  for (const auto& [type, count] : result.tensors_by_type) {
    counts.push_back(absl::StrCat(count, " ", GgmlTypeName(type)));
  }
  out << absl::StrFormat("wrote %s: %d tensors (%s), %.1f MB in %.1f s\n",
                         options.out, result.tensor_count,
                         absl::StrJoin(counts, ", "), result.output_bytes / 1e6,
                         result.seconds);
  return absl::OkStatus();
}

absl::Status RunInspect(const QuantctlOptions& options, std::ostream& out) {
  if (options.args.size() != 1) {
    return absl::InvalidArgumentError(
        "quantctl inspect takes exactly one GGUF file");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<GgufReader> gguf,
                   GgufReader::Open(options.args[0]));
  out << absl::StrFormat(
      "GGUF v%d, alignment %d, %d metadata keys, %d tensors\n", gguf->version(),
      gguf->alignment(), gguf->metadata().size(), gguf->tensors().size());
  for (const auto& [key, value] : gguf->metadata()) {
    out << "  " << key << " = " << value.DebugString() << "\n";
  }
  uint64_t total = 0;
  for (const GgufTensorInfo& tensor : gguf->tensors()) {
    out << absl::StrFormat("  %-32s %-5s [%s] %d bytes\n", tensor.name,
                           GgmlTypeName(tensor.type),
                           absl::StrJoin(tensor.dims, ", "), tensor.nbytes);
    total += tensor.nbytes;
  }
  out << absl::StrFormat("tensor data: %.1f MB\n", total / 1e6);
  return absl::OkStatus();
}

absl::Status RunMakeTinyModel(const QuantctlOptions& options,
                              std::ostream& out) {
  RETURN_IF_ERROR(RequireFlag(options.out, "out", "make-tiny-model"));
  TinyLlamaOptions tiny;
  if (options.preset == "llama3-70b") {
    tiny = Llama3_70BShapes(options.layers);
  } else if (!options.preset.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--preset ", options.preset, ": the one preset is llama3-70b"));
  } else {
    tiny.num_layers = options.layers;
    tiny.hidden_size = options.hidden;
    tiny.intermediate_size =
        options.intermediate > 0 ? options.intermediate : 3 * options.hidden;
    tiny.num_heads = std::max<int64_t>(1, options.hidden / 64);
    tiny.num_kv_heads = std::max<int64_t>(1, tiny.num_heads / 2);
    tiny.architecture = options.arch;
    tiny.tie_word_embeddings = options.tie_embeddings;
  }
  tiny.seed = options.seed;
  RETURN_IF_ERROR(WriteTinyLlama(options.out, tiny));
  out << absl::StrFormat(
      "wrote a random-weight %s (%d layers, hidden %d, intermediate %d, "
      "%d/%d heads%s) to %s\n",
      tiny.architecture, tiny.num_layers, tiny.hidden_size,
      tiny.intermediate_size, tiny.num_heads, tiny.num_kv_heads,
      tiny.tie_word_embeddings ? ", tied embeddings" : "", options.out);
  return absl::OkStatus();
}

absl::Status RunQuantize(const QuantctlOptions& options, std::ostream& out,
                         std::ostream& err) {
  RETURN_IF_ERROR(RequireFlag(options.model, "model", "quantize"));
  RETURN_IF_ERROR(RequireFlag(options.out, "out", "quantize"));
  SetCpuThreads(options.threads);  // Part of the kernel class.
  QuantizeModelOptions quantize = options.quantize;
  quantize.model_dir = options.model;
  quantize.output = options.out;
  quantize.gguf_type = options.type;
  if (!options.devices.empty()) quantize.device = options.devices[0];
  if (quantize.work_dir.empty()) quantize.work_dir = options.out + ".work";
  quantize.log = [&](const std::string& line) { err << line << "\n"; };
  ASSIGN_OR_RETURN(const QuantizeModelResult result, QuantizeModel(quantize));
  if (!result.finished) {
    out << absl::StrFormat(
        "stopped: %d blocks quantized now, %d found done; run the same "
        "command again to resume from %s\n",
        result.blocks_quantized, result.blocks_resumed, quantize.work_dir);
    return absl::OkStatus();
  }
  out << result.report_table;
  out << absl::StrFormat("wrote %s (%d blocks quantized now, %d resumed)\n",
                         options.out, result.blocks_quantized,
                         result.blocks_resumed);
  return absl::OkStatus();
}

absl::Status RunPerplexity(const QuantctlOptions& options, std::ostream& out) {
  RETURN_IF_ERROR(RequireFlag(options.model, "model", "perplexity"));
  if (options.quantize.eval_texts.empty()) {
    return absl::InvalidArgumentError("quantctl perplexity needs --eval");
  }
  ASSIGN_OR_RETURN(const std::optional<QuantizationConfig> config,
                   ReadQuantizationConfig(options.model));
  BlockLoader loader;
  if (config) {
    loader = [config](const SafetensorsCheckpoint& checkpoint,
                      const ModelSpec& spec, int layer) {
      return LoadQuantizedDecoderBlock(checkpoint, spec, layer, *config);
    };
  }
  PerplexityOptions eval;
  eval.max_windows = options.quantize.eval_max_windows;
  for (const std::string& path : options.quantize.eval_texts) {
    ASSIGN_OR_RETURN(const std::vector<int32_t> tokens,
                     HeldOutTokensOfFile(options.model, path));
    ASSIGN_OR_RETURN(const PerplexityResult result,
                     EvaluatePerplexity(options.model, tokens, eval, loader));
    out << absl::StrFormat("%s: perplexity %.4f (%d windows of %d tokens)\n",
                           path, result.perplexity, result.windows,
                           eval.context);
  }
  return absl::OkStatus();
}

// The job the flags describe (the same flags as `quantize`).
absl::StatusOr<v1::JobSpec> JobSpecOf(const QuantctlOptions& options,
                                      const std::string& command) {
  RETURN_IF_ERROR(RequireFlag(options.model, "model", command));
  RETURN_IF_ERROR(RequireFlag(options.out, "out", command));
  v1::Mode mode;
  if (!v1::Mode_Parse("MODE_" + absl::AsciiStrToUpper(options.mode), &mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--mode: \"", options.mode, "\" (sequential or parallel)"));
  }
  QuantizeModelOptions quantize = options.quantize;
  quantize.gguf_type = options.type;
  v1::JobSpec spec;
  // Paths as the coordinator will see them, from wherever it runs.
  std::error_code error;
  spec.set_model_dir(std::filesystem::absolute(options.model, error).string());
  spec.set_output(std::filesystem::absolute(options.out, error).string());
  spec.set_name(options.name);
  *spec.mutable_recipe() = RecipeFromOptions(quantize, mode);
  spec.mutable_recipe()->set_shards_in_task(options.shards_in_task);
  v1::Calibration* calibration = spec.mutable_recipe()->mutable_calibration();
  for (std::string* path :
       {calibration->mutable_text_path(), calibration->mutable_tokens_path()}) {
    if (!path->empty()) {
      *path = std::filesystem::absolute(*path, error).string();
    }
  }
  for (std::string& text : *spec.mutable_recipe()->mutable_eval_texts()) {
    text = std::filesystem::absolute(text, error).string();
  }
  if (options.quantize.calibration.text_path.empty() &&
      options.quantize.calibration.tokens_path.empty()) {
    spec.mutable_recipe()->mutable_calibration()->set_samples(0);
  }
  return spec;
}

absl::StatusOr<std::string> JobIdArg(const QuantctlOptions& options) {
  if (options.args.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantctl ", options.command, " takes one job id"));
  }
  return options.args[0];
}

absl::Status RunServiceCommand(const QuantctlOptions& options,
                               std::ostream& out, std::ostream& err) {
  const std::string& command = options.command;
  if (command == "run") {
    if (!options.local) {
      return absl::InvalidArgumentError(
          "quantctl run needs --local (a cluster job is `quantctl submit`)");
    }
    ASSIGN_OR_RETURN(const v1::JobSpec spec, JobSpecOf(options, command));
    SetCpuThreads(options.threads);  // The in-process workers share it.
    LocalRunOptions local;
    local.workers = options.workers;
    local.backend = options.quantize.backend;
    local.devices = options.devices;
    local.devices_per_task = options.devices_per_task;
    local.threads = options.threads;
    local.state_dir = options.state_dir;
    local.progress_on_tty = options.progress_on_tty;
    return RunLocal(spec, local, out, err);
  }
  ServiceClientOptions client_options;
  client_options.coordinator = options.coordinator;
  client_options.progress_on_tty = options.progress_on_tty;
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel,
                   DialCoordinator(options.coordinator, options.auth));
  ServiceClient client(client_options, std::move(channel));
  if (command == "submit") {
    ASSIGN_OR_RETURN(const v1::JobSpec spec, JobSpecOf(options, command));
    ASSIGN_OR_RETURN(const v1::Job job, client.Submit(spec));
    out << job.job_id() << "\n" << std::flush;
    return options.watch ? client.Watch(job.job_id(), err) : absl::OkStatus();
  }
  if (command == "list") return client.List(out);
  if (command == "workers") return client.Workers(out);
  ASSIGN_OR_RETURN(const std::string job_id, JobIdArg(options));
  if (command == "watch") return client.Watch(job_id, err);
  if (command == "status") return client.Status(job_id, out);
  if (command == "cancel") return client.Cancel(job_id, out);
  return client.Resume(job_id, out);
}

}  // namespace

std::string QuantctlUsage() {
  return R"(usage: quantctl COMMAND [flags]

service commands:
  run --local      Run a quantization job in this process: a coordinator
                   and --workers N (2) workers over an in-process channel,
                   the same code path as a cluster. Takes the flags of
                   `quantize` (below) and [--mode sequential|parallel]
                   [--state-dir DIR (default: a temporary store)]
                   [--shards-in-task (with --calibration-shards: each
                   block task computes its shards, across its worker's
                   GPUs)] [--devices-per-task N (--backend cuda: GPUs per
                   in-process worker)].
  submit           Submit the same job to a coordinator; prints its id.
                   [--coordinator host:port (localhost:50051)] [--watch]
                   [--name TEXT]
  watch JOB        Progress bars per stage with ETA until the job ends;
                   exits 0 when it succeeded, 1 otherwise.
  status JOB       The job and each of its tasks.
  list             Every job.
  cancel JOB       Stop a job (its committed tasks are kept).
  resume JOB       Restart a failed or cancelled job from its committed tasks.
  workers          The workers the coordinator knows.
  Every command but run --local talks to --coordinator with credentials:
  --tls_ca CA.crt --tls_cert ME.crt --tls_key ME.key --token_file ME.token
  (scripts/make_credentials.sh makes them), or --insecure for a coordinator
  that runs without TLS. Only a job's submitter or an admin may cancel or
  resume it.

engine commands (in this process):
  convert          Convert a Hugging Face model directory to GGUF.
                   --model DIR --out FILE.gguf [--type TYPE] [--threads N]
                   TYPE is a llama.cpp file type: F32 F16 BF16 Q8_0 Q6_K
                   Q5_K_M Q5_K_S Q5_1 Q5_0 Q4_K_M Q4_K_S Q4_1 Q4_0 Q3_K_L
                   Q3_K_M Q3_K_S Q2_K (default F16).
  quantize         Calibrated quantization, block by block (resumable).
                   --model DIR --out DIR|FILE.gguf [--format gptq|awq|gguf]
                   [--method gptq|awq|rtn] [--bits 4] [--group-size 128]
                   [--sym] [--desc-act] [--static-groups] [--mse]
                   [--damp 0.01]
                   [--true-sequential=false] [--block-size 128]
                   [--awq-clip=false] [--awq-search-sequences 16]
                   [--awq-duo-scaling=false] [--awq-fp-inputs]
                   [--type Q4_K_M (gguf)] [--gguf-grid=false (gguf: GPTQ
                   in the nearest checkpoint format, then re-fitted)]
                   [--calib TEXT | --calib-tokens
                   FILE.npy|.txt] [--calib-samples 128] [--calib-seqlen 512]
                   [--calib-seed 0] [--calib-sampling splitmix64|python]
                   [--work-dir DIR (default OUT.work)]
                   [--stop-after-block N] [--eval TEXT,...] [--eval-windows N]
                   [--backend cpu|cuda] [--devices 0 (cuda: the GPU; run
                   --local: one worker per GPU listed, e.g. 0,1)]
                   Windows start at SplitMix64(seed) outputs modulo
                   (tokens - seqlen + 1), or with python at Python's
                   random.seed(seed); random.randint(0, tokens - seqlen - 1)
                   as GPTQ's data scripts draw them; --calib-samples 0 is
                   data-free RTN.
  perplexity       Held-out perplexity (512-token windows, BOS per paragraph)
                   of an FP, GPTQ or AWQ checkpoint: --model DIR --eval TEXT,...
                   [--eval-windows N]
  inspect FILE     Print a GGUF file's metadata and tensors.
  make-tiny-model  Write a small random-weight Llama checkpoint (HF layout).
                   --out DIR [--layers N] [--hidden N] [--intermediate N]
                   [--seed N]
                   [--arch llama|qwen2] [--tie_embeddings]
                   [--preset llama3-70b (Llama-3-70B's shapes, vocabulary
                   and 5 GB shards, --layers of them; 1.7 GB a layer)]
  help             Print this text.
)";
}

absl::Status RunQuantctl(const QuantctlOptions& options, std::ostream& out,
                         std::ostream& err) {
  for (const char* command : {"run", "submit", "watch", "status", "list",
                              "cancel", "resume", "workers"}) {
    if (options.command == command) {
      return RunServiceCommand(options, out, err);
    }
  }
  if (options.command == "convert") return RunConvert(options, out, err);
  if (options.command == "inspect") return RunInspect(options, out);
  if (options.command == "quantize") return RunQuantize(options, out, err);
  if (options.command == "perplexity") return RunPerplexity(options, out);
  if (options.command == "make-tiny-model") {
    return RunMakeTinyModel(options, out);
  }
  if (options.command == "help") {
    out << QuantctlUsage();
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      options.command.empty()
          ? std::string("no command given")
          : absl::StrCat("unknown command '", options.command, "'"));
}

}  // namespace quant
