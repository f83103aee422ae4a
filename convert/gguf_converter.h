// Hugging Face checkpoint -> GGUF, streaming: tensors are read from the
// mapped safetensors, converted in row chunks and appended to the output, so
// memory stays at a few MiB whatever the model size.
#ifndef CONVERT_GGUF_CONVERTER_H_
#define CONVERT_GGUF_CONVERTER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
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

// Replacement data for one checkpoint tensor, one of:
// - its values in the checkpoint's layout (HF row order): `values`, or
//   `rows` producing them a chunk of rows at a time (a large tensor decoded
//   from stored levels without a whole F32 copy); either with optional
//   per-input-column importance (the calibration Hessian diagonal) for the
//   GGUF quantizer;
// - its rows already encoded in the planned GGUF type (HF row order), for
//   solutions that are exactly that type's blocks: owned in
//   `encoded_storage`, or `encoded_view` into memory the source keeps until
//   its next call.
struct TensorOverride {
  std::vector<float> values;
  std::function<absl::Status(int64_t first_row, int64_t count, float* out)>
      rows;
  // The [rows, cols] `rows` produces, checked against the tensor's.
  int64_t rows_count = 0, rows_width = 0;
  std::vector<float> importance;
  std::vector<uint8_t> encoded_storage;
  absl::Span<const uint8_t> encoded_view;
  // Told each byte range [from, to) of `encoded_view` once written (a mapped
  // file's pages can go: a 70B output head in Q6_K is 860 MB).
  std::function<void(uint64_t from, uint64_t to)> encoded_written;
  GgmlType encoded_type = GgmlType::kF32;

  absl::Span<const uint8_t> encoded() const {
    return encoded_storage.empty() ? encoded_view
                                   : absl::MakeConstSpan(encoded_storage);
  }
};
// Given an HF tensor name, the data to write instead of the checkpoint's,
// or nullopt to keep the checkpoint's.
using TensorSource =
    std::function<absl::StatusOr<std::optional<TensorOverride>>(
        const std::string& hf_name)>;

struct ConvertOptions {
  std::string model_dir;    // config.json, *.safetensors, tokenizer files.
  std::string output_path;  // The .gguf to write (atomically).
  // The GGUF type by llama.cpp's name (convert/quant_mix.h): F16, Q8_0,
  // Q4_K_M, ... Norms and biases stay F32.
  QuantMix mix = *ParseQuantMix("F16");
  // Whether importance comes with the quantized tensors (llama-quantize's
  // imatrix rules then apply to the mix).
  bool has_importance = false;
  TensorSource tensor_source;                               // Optional.
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

// The GGUF type ConvertToGguf gives each tensor of the checkpoint in
// `model_dir` for `mix`, by HF tensor name.
absl::StatusOr<std::map<std::string, GgmlType>> PlanGgufTypes(
    const std::string& model_dir, const QuantMix& mix, bool has_importance);

}  // namespace quant

#endif  // CONVERT_GGUF_CONVERTER_H_
