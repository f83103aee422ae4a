// quantctl: parses flags into QuantctlOptions and runs the command.
#include <unistd.h>

#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "client/quantctl.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory");
ABSL_FLAG(std::string, out, "", "Output file (convert) or directory");
ABSL_FLAG(std::string, type, "F16",
          "GGUF type by llama.cpp's name: F32, F16, BF16, Q8_0, Q6_K, Q5_K_M, "
          "Q5_K_S, Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1, Q4_0, Q3_K_L, Q3_K_M, "
          "Q3_K_S, Q2_K");
ABSL_FLAG(int, threads, 0, "Worker threads (0: all cores)");
ABSL_FLAG(int64_t, layers, 2, "make-tiny-model: decoder blocks");
ABSL_FLAG(int64_t, hidden, 256, "make-tiny-model: hidden size");
ABSL_FLAG(uint64_t, seed, 1, "make-tiny-model: random seed");
ABSL_FLAG(std::string, arch, "llama", "make-tiny-model: llama or qwen2");
ABSL_FLAG(bool, tie_embeddings, false,
          "make-tiny-model: share the embedding with the output layer");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(quant::QuantctlUsage());
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
  options.seed = absl::GetFlag(FLAGS_seed);
  options.arch = absl::GetFlag(FLAGS_arch);
  options.tie_embeddings = absl::GetFlag(FLAGS_tie_embeddings);
  options.progress_on_tty = ::isatty(STDERR_FILENO);
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
