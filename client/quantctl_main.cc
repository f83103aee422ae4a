// quantctl: parses flags into QuantctlOptions and runs the command.
#include <unistd.h>

#include <cstring>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "client/quantctl.h"
#include "common/auth_flags.h"
#include "model/calibration.h"
#include "quant/block_backend.h"
#ifdef QS_WITH_CUDA
#include "kernels/cuda/block_backend_cuda.h"
#endif

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::string, out, "", "Output file (convert) or directory");
ABSL_FLAG(std::string, type, "F16",
          "GGUF type by llama.cpp's name: F32, F16, BF16, Q8_0, Q6_K, Q5_K_M, "
          "Q5_K_S, Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1, Q4_0, Q3_K_L, Q3_K_M, "
          "Q3_K_S, Q2_K");
ABSL_FLAG(int, threads, 0,
          "Worker threads, OpenMP's and OpenBLAS's (0: all cores); OpenBLAS's "
          "count is part of the kernel class results reproduce within");
ABSL_FLAG(int64_t, layers, 2, "make-tiny-model: decoder blocks");
ABSL_FLAG(int64_t, hidden, 256, "make-tiny-model: hidden size");
ABSL_FLAG(int64_t, intermediate, 0,
          "make-tiny-model: MLP intermediate size (0: 3 x hidden)");
ABSL_FLAG(uint64_t, seed, 1, "make-tiny-model: random seed");
ABSL_FLAG(std::string, arch, "llama", "make-tiny-model: llama or qwen2");
ABSL_FLAG(std::string, preset, "",
          "make-tiny-model: llama3-70b (Llama-3-70B's shapes; --layers)");
ABSL_FLAG(bool, tie_embeddings, false,
          "make-tiny-model: share the embedding with the output layer");

ABSL_FLAG(std::string, method, "gptq", "quantize: gptq, awq or rtn");
ABSL_FLAG(std::string, format, "gptq", "quantize: output gptq, awq or gguf");
ABSL_FLAG(int, bits, 4, "quantize: bits per weight");
ABSL_FLAG(int, group_size, 128, "quantize: columns per group (-1: per row)");
ABSL_FLAG(bool, sym, false, "quantize: symmetric levels");
ABSL_FLAG(bool, desc_act, false, "quantize: GPTQ act-order");
ABSL_FLAG(bool, static_groups, false, "quantize: GPTQ static groups");
ABSL_FLAG(bool, mse, false,
          "quantize: group ranges searched for least error (GPTQ, RTN)");
ABSL_FLAG(double, damp, 0.01, "quantize: GPTQ damp_percent");
ABSL_FLAG(int, block_size, 128, "quantize: GPTQ lazy-update block");
ABSL_FLAG(bool, group_params_at_block_start, false,
          "quantize: GPTQ group ranges as AutoGPTQ finds them");
ABSL_FLAG(bool, gguf_grid, true,
          "quantize: GGUF output: GPTQ solves on each GGUF type's own grid");
ABSL_FLAG(bool, true_sequential, true,
          "quantize: GPTQ stages q/k/v, o, gate/up, down");
ABSL_FLAG(bool, awq_clip, true, "quantize: AWQ clipping search");
ABSL_FLAG(int64_t, sequences_per_pass, 16,
          "quantize: calibration sequences run through a block at once "
          "(activation memory; part of the recipe: it fixes every product's "
          "shape)");
ABSL_FLAG(int64_t, calibration_shards, 1,
          "quantize: sum the calibration set in this many shards (GPTQ, "
          "RTN); a sequential job calibrates each block on that many "
          "workers at once");
ABSL_FLAG(int64_t, awq_search_sequences, 16,
          "quantize: calibration sequences AWQ's scale search measures");
ABSL_FLAG(bool, awq_fp_inputs, false,
          "quantize: AWQ calibrates every block on the FP model's activations");
ABSL_FLAG(bool, awq_duo_scaling, true,
          "quantize: AWQ scales from activations and weights");
ABSL_FLAG(std::string, calib, "", "quantize: calibration text");
ABSL_FLAG(std::string, calib_tokens, "",
          "quantize: calibration token ids (.npy or .txt)");
ABSL_FLAG(int64_t, calib_samples, 128, "quantize: calibration windows");
ABSL_FLAG(int64_t, calib_seqlen, 512, "quantize: tokens per window");
ABSL_FLAG(uint64_t, calib_seed, 0, "quantize: window sampling seed");
ABSL_FLAG(std::string, calib_sampling, "splitmix64",
          "quantize: window starts from splitmix64 or python (random.seed, "
          "randint as GPTQ's data scripts)");
ABSL_FLAG(std::string, work_dir, "", "quantize: resumable work directory");
ABSL_FLAG(int, stop_after_block, -1, "quantize: stop after this block");
ABSL_FLAG(std::vector<std::string>, eval, {},
          "quantize / perplexity: held-out texts");
ABSL_FLAG(int64_t, eval_windows, -1, "perplexity windows per text (-1: all)");
ABSL_FLAG(std::string, backend, "cpu",
          "quantize / run --local: where blocks compute, cpu or cuda");
ABSL_FLAG(std::string, devices, "0",
          "quantize / run --local with --backend cuda: GPU indices, e.g. 0,1");
ABSL_FLAG(std::string, coordinator, "localhost:50051",
          "service commands: the coordinator, host:port");
ABSL_FLAG(std::string, mode, "sequential",
          "run / submit: sequential or parallel");
ABSL_FLAG(bool, shards_in_task, false,
          "run / submit, sequential with --calibration_shards: each block "
          "task computes its shards itself (across the GPUs of a worker "
          "slot of --devices_per_task) instead of capture, solve and "
          "forward tasks over workers; the same bits");
ABSL_FLAG(int, devices_per_task, 1,
          "run --local --backend cuda: GPUs per in-process worker");
ABSL_FLAG(bool, local, false, "run: in this process");
ABSL_FLAG(int, workers, 2, "run --local: in-process workers");
ABSL_FLAG(std::string, state_dir, "",
          "run --local: job store directory (default: temporary)");
ABSL_FLAG(bool, watch, false, "submit: then watch the job");
ABSL_FLAG(std::string, name, "", "submit: the job's name");

int main(int argc, char** argv) {
#ifdef QS_WITH_CUDA
  quant::cuda::RegisterCudaBlockBackend();
#endif
  absl::SetProgramUsageMessage(quant::QuantctlUsage());
  // --calib-samples and --calib_samples alike.
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--", 2) != 0) continue;
    for (char* c = argv[i] + 2; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  quant::QuantctlOptions options;
  if (positional.size() > 1) options.command = positional[1];
  for (size_t i = 2; i < positional.size(); ++i) {
    options.args.push_back(positional[i]);
  }
  options.model = absl::GetFlag(FLAGS_model);
  options.out = absl::GetFlag(FLAGS_out);
  options.type = absl::GetFlag(FLAGS_type);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.layers = absl::GetFlag(FLAGS_layers);
  options.hidden = absl::GetFlag(FLAGS_hidden);
  options.intermediate = absl::GetFlag(FLAGS_intermediate);
  options.seed = absl::GetFlag(FLAGS_seed);
  options.arch = absl::GetFlag(FLAGS_arch);
  options.tie_embeddings = absl::GetFlag(FLAGS_tie_embeddings);
  options.preset = absl::GetFlag(FLAGS_preset);
  options.progress_on_tty = ::isatty(STDERR_FILENO);
  quant::QuantizeModelOptions& q = options.quantize;
  absl::StatusOr<quant::QuantMethod> method =
      quant::ParseQuantMethod(absl::GetFlag(FLAGS_method));
  absl::StatusOr<quant::OutputFormat> format =
      quant::ParseOutputFormat(absl::GetFlag(FLAGS_format));
  absl::StatusOr<quant::CalibrationSampling> sampling =
      quant::ParseCalibrationSampling(absl::GetFlag(FLAGS_calib_sampling));
  absl::StatusOr<std::vector<int>> devices =
      quant::ParseDeviceList(absl::GetFlag(FLAGS_devices));
  for (const absl::Status& status : {method.status(), format.status(),
                                     sampling.status(), devices.status()}) {
    if (!status.ok()) {
      std::cerr << "quantctl: " << status.message() << "\n";
      return 2;
    }
  }
  q.method = *method;
  q.backend = absl::GetFlag(FLAGS_backend);
  options.devices = *devices;
  q.output_format = *format;
  q.weights.bits = absl::GetFlag(FLAGS_bits);
  q.weights.group_size = absl::GetFlag(FLAGS_group_size);
  q.weights.sym = absl::GetFlag(FLAGS_sym);
  q.gptq.desc_act = absl::GetFlag(FLAGS_desc_act);
  q.gptq.static_groups = absl::GetFlag(FLAGS_static_groups);
  q.gptq.mse = absl::GetFlag(FLAGS_mse);
  q.gptq.damp_percent = absl::GetFlag(FLAGS_damp);
  q.gptq.block_size = absl::GetFlag(FLAGS_block_size);
  q.gptq.group_params_at_block_start =
      absl::GetFlag(FLAGS_group_params_at_block_start);
  q.gguf_grid = absl::GetFlag(FLAGS_gguf_grid);
  q.true_sequential = absl::GetFlag(FLAGS_true_sequential);
  q.sequences_per_pass = absl::GetFlag(FLAGS_sequences_per_pass);
  q.calibration_shards = absl::GetFlag(FLAGS_calibration_shards);
  q.awq.clip = absl::GetFlag(FLAGS_awq_clip);
  q.awq.search_sequences = absl::GetFlag(FLAGS_awq_search_sequences);
  q.awq.duo_scaling = absl::GetFlag(FLAGS_awq_duo_scaling);
  q.awq.fp_inputs = absl::GetFlag(FLAGS_awq_fp_inputs);
  q.calibration.text_path = absl::GetFlag(FLAGS_calib);
  q.calibration.tokens_path = absl::GetFlag(FLAGS_calib_tokens);
  q.calibration.samples = absl::GetFlag(FLAGS_calib_samples);
  q.calibration.seq_len = absl::GetFlag(FLAGS_calib_seqlen);
  q.calibration.seed = absl::GetFlag(FLAGS_calib_seed);
  q.calibration.sampling = *sampling;
  q.work_dir = absl::GetFlag(FLAGS_work_dir);
  q.stop_after_block = absl::GetFlag(FLAGS_stop_after_block);
  q.eval_texts = absl::GetFlag(FLAGS_eval);
  q.eval_max_windows = absl::GetFlag(FLAGS_eval_windows);
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  options.auth = quant::ClientAuthFromFlags();
  options.mode = absl::GetFlag(FLAGS_mode);
  options.shards_in_task = absl::GetFlag(FLAGS_shards_in_task);
  options.devices_per_task = absl::GetFlag(FLAGS_devices_per_task);
  options.local = absl::GetFlag(FLAGS_local);
  options.workers = absl::GetFlag(FLAGS_workers);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.watch = absl::GetFlag(FLAGS_watch);
  options.name = absl::GetFlag(FLAGS_name);
  const absl::Status status = quant::RunQuantctl(options, std::cout, std::cerr);
  if (!status.ok()) {
    std::cerr << "quantctl: " << status.message() << "\n";
    if (status.code() == absl::StatusCode::kInvalidArgument &&
        options.command.empty()) {
      std::cerr << quant::QuantctlUsage();
    }
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
