// quantctl, the command-line client. Today: `convert` (HF -> GGUF),
// `quantize` (calibrated RTN / GPTQ / AWQ -> GPTQ, AWQ or GGUF output),
// `perplexity` (held-out perplexity of an FP, GPTQ or AWQ checkpoint),
// `inspect` (print a GGUF's metadata and tensors) and `make-tiny-model`
// (a small random-weight Llama to try things on). The service commands
// (submit, watch, resume, ...) join these as the service lands.
#ifndef CLIENT_QUANTCTL_H_
#define CLIENT_QUANTCTL_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "quant/quantize_model.h"

namespace quant {

struct QuantctlOptions {
  std::string command;            // First positional argument.
  std::vector<std::string> args;  // Remaining positional arguments.
  std::string model;              // --model: HF model directory.
  std::string out;                // --out: output file or directory.
  std::string type = "F16";       // --type: GGUF type (llama.cpp's name).
  int threads = 0;                // --threads: 0 = all cores.
  // make-tiny-model
  int64_t layers = 2;
  int64_t hidden = 256;
  uint64_t seed = 1;
  std::string arch = "llama";  // llama or qwen2.
  bool tie_embeddings = false;
  bool progress_on_tty = false;  // Redraw one progress line with '\r'.
  // quantize (model_dir, output and gguf_type come from --model, --out and
  // --type) and perplexity (eval_texts, eval_max_windows).
  QuantizeModelOptions quantize;
};

// The usage text printed for `quantctl help` and on a usage error.
std::string QuantctlUsage();

// Runs one command. Results go to `out`, progress to `err`. A usage error
// is InvalidArgument with a message naming the problem.
absl::Status RunQuantctl(const QuantctlOptions& options, std::ostream& out,
                         std::ostream& err);

}  // namespace quant

#endif  // CLIENT_QUANTCTL_H_
