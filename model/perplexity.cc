#include "model/perplexity.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "common/sentencepiece.h"
#include "common/status_macros.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "model/llama_forward.h"

namespace quant {

absl::StatusOr<std::vector<int32_t>> HeldOutTokenStream(
    const std::string& tokenizer_model, absl::string_view text, int32_t bos) {
  ASSIGN_OR_RETURN(const std::unique_ptr<SentencePieceModel> processor,
                   SentencePieceModel::Load(tokenizer_model));
  std::vector<int32_t> tokens;
  for (absl::string_view paragraph : absl::StrSplit(text, "\n\n")) {
    if (paragraph.empty()) continue;
    ASSIGN_OR_RETURN(const std::vector<int> ids, processor->Encode(paragraph));
    tokens.push_back(bos);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
  }
  return tokens;
}

absl::StatusOr<std::vector<int32_t>> HeldOutTokensOfFile(
    const std::string& model_dir, const std::string& text_path) {
  ASSIGN_OR_RETURN(const ModelSpec spec, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(text_path));
  return HeldOutTokenStream(
      model_dir + "/tokenizer.model", text,
      static_cast<int32_t>(spec.bos_token_id.value_or(1)));
}

absl::StatusOr<PerplexityResult> EvaluatePerplexity(
    const std::string& model_dir, const std::vector<int32_t>& tokens,
    const PerplexityOptions& options, const BlockLoader& load_block) {
  const int64_t context = options.context;
  const int64_t length = static_cast<int64_t>(tokens.size());
  if (context < 1) {
    return absl::InvalidArgumentError("the context must be at least 1 token");
  }
  int64_t windows = 0;
  while (windows * context + context < length) ++windows;
  if (options.max_windows >= 0)
    windows = std::min(windows, options.max_windows);
  if (windows == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a stream of ", length, " tokens holds no window of ",
                     context, " inputs plus a target"));
  }
  ASSIGN_OR_RETURN(const ModelSpec spec, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                   SafetensorsCheckpoint::Open(model_dir));
  const LlamaForward forward(spec, context);
  ASSIGN_OR_RETURN(const OutputHeadWeights head,
                   LoadOutputHead(*checkpoint, spec));
  PerplexityResult result;
  result.windows = windows;
  const int64_t per_pass = std::max<int64_t>(1, options.windows_per_pass);
  const int64_t dim = spec.hidden_size, vocab = spec.vocab_size;
  std::vector<float> logits(static_cast<size_t>(context * vocab));
  for (int64_t first = 0; first < windows; first += per_pass) {
    const int64_t count = std::min(per_pass, windows - first);
    std::vector<float> hidden(static_cast<size_t>(count * context * dim));
    const absl::Span<const int32_t> inputs(
        tokens.data() + first * context, static_cast<size_t>(count * context));
    RETURN_IF_ERROR(forward.Embed(*checkpoint, inputs, hidden.data()));
    for (int layer = 0; layer < spec.num_layers; ++layer) {
      ASSIGN_OR_RETURN(const DecoderBlockWeights block,
                       load_block ? load_block(*checkpoint, spec, layer)
                                  : LoadDecoderBlock(*checkpoint, spec, layer));
      RETURN_IF_ERROR(
          forward.ForwardBlock(block, count, context, hidden.data()));
    }
    for (int64_t w = 0; w < count; ++w) {
      RETURN_IF_ERROR(forward.Logits(head, hidden.data() + w * context * dim,
                                     context, logits.data()));
      const int64_t start = (first + w) * context;
      double window_nll = 0;
      for (int64_t t = 0; t < context; ++t) {
        const float* row = logits.data() + t * vocab;
        const float largest = *std::max_element(row, row + vocab);
        double total = 0;
        for (int64_t i = 0; i < vocab; ++i)
          total += std::exp(double{row[i]} - largest);
        const int32_t target = tokens[static_cast<size_t>(start + t + 1)];
        window_nll += std::log(total) + largest - row[target];
      }
      result.window_nll.push_back(window_nll);
      result.total_nll += window_nll;
      result.targets += context;
    }
  }
  result.perplexity =
      std::exp(result.total_nll / static_cast<double>(result.targets));
  return result;
}

}  // namespace quant
