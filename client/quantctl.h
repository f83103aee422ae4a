// quantctl, the command-line client: the service commands (`run --local`,
// `submit`, `watch`, `status`, `list`, `cancel`, `resume`, `workers`) and
// the engine's own: `convert` (HF -> GGUF), `quantize` (calibrated RTN /
// GPTQ / AWQ -> GPTQ, AWQ or GGUF output, in this process), `perplexity`
// (held-out perplexity of an FP, GPTQ or AWQ checkpoint), `inspect` (print
// a GGUF's metadata and tensors) and `make-tiny-model` (a small
// random-weight Llama to try things on).
#ifndef CLIENT_QUANTCTL_H_
#define CLIENT_QUANTCTL_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/auth.h"
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
  int64_t intermediate = 0;  // 0: 3 x hidden.
  uint64_t seed = 1;
  std::string arch = "llama";  // llama or qwen2.
  bool tie_embeddings = false;
  std::string preset;            // make-tiny-model: "" or "llama3-70b".
  bool progress_on_tty = false;  // Redraw one progress line with '\r'.
  // quantize, run and submit (model_dir, output and gguf_type come from
  // --model, --out and --type) and perplexity (eval_texts,
  // eval_max_windows).
  QuantizeModelOptions quantize;
  // The service commands.
  std::string coordinator = "localhost:50051";  // --coordinator
  ClientAuthOptions auth;           // --tls_* / --token_file / --insecure
  std::string mode = "sequential";  // --mode: or parallel.
  bool shards_in_task = false;      // --shards_in_task (Recipe's).
  bool local = false;               // run --local (the only kind of run today).
  int workers = 2;                  // run --local: in-process workers.
  // quantize and run --local --backend cuda (quantize.backend): the GPUs;
  // quantize uses the first.
  std::vector<int> devices = {0};
  int devices_per_task = 1;  // run --local --backend cuda: GPUs per worker.
  std::string state_dir;     // run --local: keep the job store here.
  bool watch = false;        // submit --watch: then watch it.
  std::string name;          // submit: the job's name.
};

// The usage text printed for `quantctl help` and on a usage error.
std::string QuantctlUsage();

// Runs one command. Results go to `out`, progress to `err`. A usage error
// is InvalidArgument with a message naming the problem.
absl::Status RunQuantctl(const QuantctlOptions& options, std::ostream& out,
                         std::ostream& err);

}  // namespace quant

#endif  // CLIENT_QUANTCTL_H_
