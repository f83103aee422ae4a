#include "quant/gguf_head.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/quantize_rows.h"

namespace quant {
namespace {

// Rows converted at a time (the converter's chunk size, about).
constexpr int64_t kChunkElements = 1 << 22;

struct Shape {
  int64_t rows = 0;
  int64_t cols = 0;
  uint64_t row_bytes = 0;
};

absl::StatusOr<Shape> ShapeOf(const TensorView& view, GgmlType type) {
  Shape shape;
  shape.cols = view.shape.empty() ? 1 : view.shape.back();
  shape.rows = shape.cols == 0 ? 0 : view.num_elements() / shape.cols;
  ASSIGN_OR_RETURN(shape.row_bytes, GgmlRowBytes(type, shape.cols));
  return shape;
}

}  // namespace

std::string GgufHeadPath(const std::string& work_dir) {
  return work_dir + "/head.safetensors";
}

absl::Status WriteGgufHead(const SafetensorsCheckpoint& source,
                           const std::map<std::string, GgmlType>& types,
                           const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                   SafetensorsWriter::Create(path));
  for (const auto& [name, type] : types) {
    ASSIGN_OR_RETURN(const TensorView view, source.Get(name));
    ASSIGN_OR_RETURN(const Shape shape, ShapeOf(view, type));
    RETURN_IF_ERROR(writer->AddTensor(
        name, SafetensorsDType::kU8,
        {static_cast<int64_t>(shape.rows * shape.row_bytes)}));
  }
  for (const auto& [name, type] : types) {
    ASSIGN_OR_RETURN(const TensorView view, source.Get(name));
    ASSIGN_OR_RETURN(const Shape shape, ShapeOf(view, type));
    const int64_t chunk_rows =
        std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, shape.cols));
    std::vector<float> values(std::min(shape.rows, chunk_rows) * shape.cols);
    std::vector<uint8_t> encoded(std::min(shape.rows, chunk_rows) *
                                 shape.row_bytes);
    for (int64_t row = 0; row < shape.rows; row += chunk_rows) {
      const int64_t n = std::min(chunk_rows, shape.rows - row);
      RETURN_IF_ERROR(
          view.ToFloat(row * shape.cols, n * shape.cols, values.data()));
      RETURN_IF_ERROR(QuantizeRows(type, values.data(), n, shape.cols,
                                   encoded.data(), /*num_threads=*/0,
                                   /*importance=*/nullptr));
      RETURN_IF_ERROR(
          writer->WriteTensorData(name, encoded.data(), n * shape.row_bytes));
    }
    source.Release(view);
  }
  return writer->Finish();
}

absl::Status CheckGgufHead(const std::string& path,
                           const SafetensorsCheckpoint& source,
                           const std::map<std::string, GgmlType>& types) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> head,
                   SafetensorsFile::Open(path));
  for (const TensorView& tensor : head->tensors()) {
    if (types.count(tensor.name) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("head: ", tensor.name, " is not a head tensor"));
    }
  }
  for (const auto& [name, type] : types) {
    const TensorView* got = head->Find(name);
    if (got == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("head: ", name, " is missing"));
    }
    ASSIGN_OR_RETURN(const TensorView view, source.Get(name));
    ASSIGN_OR_RETURN(const Shape shape, ShapeOf(view, type));
    const uint64_t want = shape.rows * shape.row_bytes;
    if (got->dtype != SafetensorsDType::kU8 || got->nbytes != want) {
      return absl::InvalidArgumentError(
          absl::StrCat("head: ", name, " holds ", got->nbytes, " bytes of ",
                       SafetensorsDTypeName(got->dtype), "; its ",
                       GgmlTypeName(type), " rows are ", want, " bytes of U8"));
    }
  }
  return absl::OkStatus();
}

}  // namespace quant
