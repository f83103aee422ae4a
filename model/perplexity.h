// Held-out perplexity by the method of ../shared/data/README.md, for any
// model the CPU forward pass runs: the text split on blank lines ("\n\n"),
// empty paragraphs skipped, token stream = concat([BOS] + encode(paragraph));
// windows of `context` tokens at s = 0, context, 2 context, ... while
// s + context < len; inputs t[s, s + context), targets t[s + 1, s + context
// + 1); perplexity = exp(total NLL / number of targets). Each window is a
// fresh sequence from position 0.
#ifndef MODEL_PERPLEXITY_H_
#define MODEL_PERPLEXITY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "model/llama_forward.h"

namespace quant {

// The token stream of `text` with the SentencePiece model at
// `tokenizer_model` (a tokenizer.model file). Errors: the model cannot be
// loaded, or `text` is not valid UTF-8 for it.
absl::StatusOr<std::vector<int32_t>> HeldOutTokenStream(
    const std::string& tokenizer_model, absl::string_view text, int32_t bos);

// The token stream of the text file at `text_path` with the tokenizer.model
// and BOS id (config.json's, default 1) of the model in `model_dir`.
absl::StatusOr<std::vector<int32_t>> HeldOutTokensOfFile(
    const std::string& model_dir, const std::string& text_path);

struct PerplexityOptions {
  int64_t context = 512;
  int64_t max_windows = -1;       // < 0: all windows.
  int64_t windows_per_pass = 16;  // Activations held at once.
};

struct PerplexityResult {
  double perplexity = 0;
  double total_nll = 0;
  int64_t targets = 0;
  int64_t windows = 0;
  std::vector<double> window_nll;  // Sum of NLL per window.
};

// Reads decoder block `layer`'s weights (LoadDecoderBlock by default; a
// quantized checkpoint's reader, or a run's results, otherwise).
using BlockLoader = std::function<absl::StatusOr<DecoderBlockWeights>(
    const SafetensorsCheckpoint& checkpoint, const ModelSpec& spec, int layer)>;

// Runs the model in `model_dir` (HF checkpoint: embeddings, final norm and
// lm_head from it; blocks through `load_block`) block by block over the
// windows of `tokens`. InvalidArgument when there is not one window.
absl::StatusOr<PerplexityResult> EvaluatePerplexity(
    const std::string& model_dir, const std::vector<int32_t>& tokens,
    const PerplexityOptions& options, const BlockLoader& load_block = {});

}  // namespace quant

#endif  // MODEL_PERPLEXITY_H_
