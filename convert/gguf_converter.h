// Hugging Face checkpoint -> GGUF, streaming: tensors are read from the
// mapped safetensors, converted in row chunks and appended to the output, so
// memory stays at a few MiB whatever the model size.
#ifndef CONVERT_GGUF_CONVERTER_H_
#define CONVERT_GGUF_CONVERTER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "convert/quant_mix.h"
#include "format/ggml_type.h"

namespace quant {

struct ConvertProgress {
  int64_t tensor_index = 0;  // 1-based index of the tensor just written.
  int64_t tensor_count = 0;
  std::string tensor_name;  // GGUF name.
  GgmlType type = GgmlType::kF32;
  uint64_t input_bytes_done = 0;  // Source (safetensors) bytes consumed.
  uint64_t input_bytes_total = 0;
  double seconds = 0;
};

struct ConvertOptions {
  std::string model_dir;    // config.json, *.safetensors, tokenizer files.
  std::string output_path;  // The .gguf to write (atomically).
  // The GGUF type by llama.cpp's name (convert/quant_mix.h): F16, Q8_0,
  // Q4_K_M, ... Norms and biases stay F32.
  QuantMix mix = *ParseQuantMix("F16");
  int num_threads = 0;                                      // <= 0: all cores.
  std::function<void(const ConvertProgress&)> on_progress;  // Optional.
};

struct ConvertResult {
  int64_t tensor_count = 0;
  uint64_t output_bytes = 0;
  std::map<GgmlType, int64_t> tensors_by_type;
  double seconds = 0;
};

absl::StatusOr<ConvertResult> ConvertToGguf(const ConvertOptions& options);

}  // namespace quant

#endif  // CONVERT_GGUF_CONVERTER_H_
