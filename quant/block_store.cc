#include "quant/block_store.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checksum.h"
#include "common/json_util.h"
#include "common/status_macros.h"
#include "format/ggml_type.h"
#include "format/safetensors.h"

namespace quant {
namespace {

constexpr char kNormAttention[] = "input_layernorm.weight";
constexpr char kNormMlp[] = "post_attention_layernorm.weight";

// One tensor to write: name, dtype, shape, bytes.
struct Item {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t bytes;
};

template <typename T>
Item MakeItem(std::string name, SafetensorsDType dtype,
              std::vector<int64_t> shape, const std::vector<T>& values) {
  return {std::move(name), dtype, std::move(shape), values.data(),
          values.size() * sizeof(T)};
}

absl::Status WriteItems(const std::string& path, const std::vector<Item>& items,
                        const std::map<std::string, std::string>& metadata,
                        Durability durability, std::string* digest = nullptr) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                   SafetensorsWriter::Create(path, durability));
  if (digest != nullptr) writer->HashContents();
  for (const auto& [key, value] : metadata) writer->SetMetadata(key, value);
  for (const Item& item : items) {
    RETURN_IF_ERROR(writer->AddTensor(item.name, item.dtype, item.shape));
  }
  for (const Item& item : items) {
    RETURN_IF_ERROR(writer->WriteTensorData(item.name, item.data, item.bytes));
  }
  RETURN_IF_ERROR(writer->Finish());
  if (digest != nullptr) *digest = writer->digest();
  return absl::OkStatus();
}

// Copies tensor `name` of `file` into `out`, checking dtype and shape.
template <typename T>
absl::Status Read(const SafetensorsFile& file, const std::string& name,
                  SafetensorsDType dtype, const std::vector<int64_t>& shape,
                  std::vector<T>& out) {
  const TensorView* view = file.Find(name);
  if (view == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), " lacks tensor ", name));
  }
  if (view->dtype != dtype || view->shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.path(), ": tensor ", name, " is ",
        SafetensorsDTypeName(view->dtype), " [",
        absl::StrJoin(view->shape, ", "), "], expected ",
        SafetensorsDTypeName(dtype), " [", absl::StrJoin(shape, ", "), "]"));
  }
  out = view->CopyElements<T>();
  // The copy is what is kept: the file's pages go (the assembly of a 70B
  // block reads gigabytes through this mapping).
  file.Release(*view);
  return absl::OkStatus();
}

// Read, for a tensor that may be absent (`out` stays empty then).
template <typename T>
absl::Status ReadOptional(const SafetensorsFile& file, const std::string& name,
                          const std::vector<int64_t>& shape,
                          std::vector<T>& out) {
  if (file.Find(name) == nullptr) return absl::OkStatus();
  return Read(file, name, SafetensorsDType::kF32, shape, out);
}

// The JSON metadata entry `key` of a block result file.
absl::StatusOr<nlohmann::json> Metadata(const SafetensorsFile& file,
                                        const std::string& key) {
  auto it = file.metadata().find(key);
  if (it == file.metadata().end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), " has no \"", key, "\" metadata"));
  }
  return ParseJsonStrict(it->second, absl::StrCat(file.path(), " ", key));
}

nlohmann::json Number(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
}

// A linear's integer levels, group parameters and g_idx.
absl::Status ReadLevels(const SafetensorsFile& file, const std::string& name,
                        QuantizedLinear& q) {
  const TensorView* levels = file.Find(name + ".q");
  if (levels == nullptr || levels->shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), " lacks a 2-D tensor ", name, ".q"));
  }
  q.rows = levels->shape[0], q.cols = levels->shape[1];
  RETURN_IF_ERROR(
      Read(file, name + ".q", SafetensorsDType::kU8, {q.rows, q.cols}, q.q));
  const TensorView* scales = file.Find(name + ".scales");
  const int64_t groups =
      scales != nullptr && !scales->shape.empty() ? scales->shape[0] : 0;
  RETURN_IF_ERROR(Read(file, name + ".scales", SafetensorsDType::kF32,
                       {groups, q.rows}, q.scales));
  RETURN_IF_ERROR(Read(file, name + ".zeros", SafetensorsDType::kI32,
                       {groups, q.rows}, q.zeros));
  RETURN_IF_ERROR(
      Read(file, name + ".g_idx", SafetensorsDType::kI32, {q.cols}, q.g_idx));
  for (uint8_t level : q.q) {
    if (level >> q.bits != 0) {
      return absl::InvalidArgumentError(absl::StrCat(file.path(), ": ", name,
                                                     ".q holds level ", level,
                                                     " of ", q.bits, " bits"));
    }
  }
  for (int32_t g : q.g_idx) {
    if (g < 0 || g >= groups) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path(), ": ", name, ".g_idx holds group ", g, " of ", groups));
    }
  }
  return absl::OkStatus();
}

// A linear solved on a GGUF type's grid: its rows in that type.
absl::Status ReadGgufRows(const SafetensorsFile& file, const std::string& name,
                          const nlohmann::json& format, QuantizedLinear& q) {
  ASSIGN_OR_RETURN(const GgmlType type,
                   ParseGgmlType(format.at("gguf_type").get<std::string>()));
  q.gguf_type = type;
  q.cols = format.at("cols").get<int64_t>();
  const absl::StatusOr<uint64_t> row_bytes = GgmlRowBytes(type, q.cols);
  const TensorView* rows = file.Find(name + ".gguf");
  if (!row_bytes.ok() || rows == nullptr || rows->shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), " lacks the ", GgmlTypeName(type), " rows ",
                     name, ".gguf of ", q.cols, " columns"));
  }
  q.rows = rows->shape[0];
  return Read(file, name + ".gguf", SafetensorsDType::kU8,
              {q.rows, static_cast<int64_t>(*row_bytes)}, q.gguf_rows);
}

}  // namespace

nlohmann::json BlockReportJson(const BlockResult& result) {
  nlohmann::json linears = nlohmann::json::array();
  for (const LinearReport& r : result.reports) {
    linears.push_back(
        {{"name", r.name},
         {"kept_fp", r.kept_fp},
         {"bits", r.bits},
         {"group_size", r.group_size},
         {"proxy_loss", Number(r.proxy_loss)},
         {"relative_output_error", Number(r.relative_output_error)},
         {"damp_percent", r.damp_percent},
         {"seconds", r.seconds}});
  }
  return {{"linears", linears},
          {"awq_ratios", result.awq_ratios},
          {"seconds", result.seconds},
          {"backend", result.backend},
          {"kernel", result.kernel}};
}

absl::Status SaveBlockResult(const std::string& path, const BlockResult& result,
                             Durability durability, std::string* digest) {
  std::vector<Item> items;
  for (int i = 0; i < kBlockLinears; ++i) {
    const QuantizedLinear& q = result.quantized[i];
    const std::string name(kBlockLinearNames[i]);
    const LinearWeights& linear = BlockLinear(result.weights, i);
    if (!LinearSolved(result, i)) continue;  // "pending" in the formats.
    if (!result.reports[i].kept_fp.empty()) {
      items.push_back(MakeItem(name + ".weight", SafetensorsDType::kF32,
                               {linear.rows, linear.cols}, linear.weight));
    } else if (q.gguf_type.has_value()) {
      items.push_back(
          MakeItem(name + ".gguf", SafetensorsDType::kU8,
                   {q.rows, static_cast<int64_t>(q.gguf_rows.size()) / q.rows},
                   q.gguf_rows));
    } else {
      items.push_back(
          MakeItem(name + ".q", SafetensorsDType::kU8, {q.rows, q.cols}, q.q));
      items.push_back(MakeItem(name + ".scales", SafetensorsDType::kF32,
                               {q.groups(), q.rows}, q.scales));
      items.push_back(MakeItem(name + ".zeros", SafetensorsDType::kI32,
                               {q.groups(), q.rows}, q.zeros));
      items.push_back(
          MakeItem(name + ".g_idx", SafetensorsDType::kI32, {q.cols}, q.g_idx));
    }
    if (!linear.bias.empty()) {
      items.push_back(MakeItem(name + ".bias", SafetensorsDType::kF32,
                               {linear.rows}, linear.bias));
    }
    if (!result.importance[i].empty()) {
      items.push_back(MakeItem(name + ".importance", SafetensorsDType::kF32,
                               {linear.cols}, result.importance[i]));
    }
  }
  const int64_t dim = static_cast<int64_t>(result.weights.attn_norm.size());
  items.push_back(MakeItem(kNormAttention, SafetensorsDType::kF32, {dim},
                           result.weights.attn_norm));
  items.push_back(MakeItem(kNormMlp, SafetensorsDType::kF32, {dim},
                           result.weights.ffn_norm));
  nlohmann::json formats = nlohmann::json::array();
  for (int i = 0; i < kBlockLinears; ++i) {
    if (!LinearSolved(result, i)) {
      formats.push_back({{"pending", true}});
      continue;
    }
    const QuantizedLinear& q = result.quantized[i];
    nlohmann::json format = {{"bits", q.bits}, {"group_size", q.group_size}};
    if (q.gguf_type.has_value()) {
      format["gguf_type"] = std::string(GgmlTypeName(*q.gguf_type));
      format["cols"] = q.cols;
    }
    formats.push_back(std::move(format));
  }
  return WriteItems(
      path, items,
      {{"report", BlockReportJson(result).dump()}, {"formats", formats.dump()}},
      durability, digest);
}

namespace {

// The "report" metadata, of the shape BlockReportJson writes: an object
// whose "linears" are kBlockLinears objects (a worker's upload may say
// anything; the assembly indexes into it).
absl::StatusOr<nlohmann::json> ReportOf(const SafetensorsFile& file) {
  ASSIGN_OR_RETURN(nlohmann::json report, Metadata(file, "report"));
  const auto linears =
      report.is_object() ? report.find("linears") : report.end();
  if (!report.is_object() || linears == report.end() || !linears->is_array() ||
      linears->size() != kBlockLinears ||
      !std::all_of(linears->begin(), linears->end(),
                   [](const nlohmann::json& l) { return l.is_object(); })) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": report metadata is not an object of ",
                     kBlockLinears, " linears' reports"));
  }
  return report;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SavedBlockResult>> SavedBlockResult::Open(
    const std::string& path) {
  std::unique_ptr<SavedBlockResult> saved(new SavedBlockResult());
  ASSIGN_OR_RETURN(saved->file_, SafetensorsFile::Open(path));
  const SafetensorsFile& file = *saved->file_;
  ASSIGN_OR_RETURN(saved->formats_, Metadata(file, "formats"));
  ASSIGN_OR_RETURN(saved->report_, ReportOf(file));
  if (!saved->formats_.is_array() || saved->formats_.size() != kBlockLinears ||
      !std::all_of(saved->formats_.begin(), saved->formats_.end(),
                   [](const nlohmann::json& f) { return f.is_object(); })) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": formats metadata does not describe ",
                     kBlockLinears, " linears"));
  }
  // Vectors here; that they are as long as the linears' inputs is checked
  // with the linears (ReadBlockResult).
  for (const auto& [name, norm] :
       {std::make_pair(kNormAttention, &saved->attn_norm_),
        std::make_pair(kNormMlp, &saved->ffn_norm_)}) {
    const TensorView* view = file.Find(name);
    const int64_t dim = view == nullptr ? 0 : view->num_elements();
    RETURN_IF_ERROR(Read(file, name, SafetensorsDType::kF32, {dim}, *norm));
  }
  return saved;
}

SavedBlockResult::~SavedBlockResult() = default;

const std::string& SavedBlockResult::path() const { return file_->path(); }

bool SavedBlockResult::Pending(int i) const {
  // Anything but a true "pending" is a linear to read (and checked there).
  const auto pending = formats_[i].find("pending");
  return pending != formats_[i].end() && pending->is_boolean() &&
         pending->get<bool>();
}

absl::StatusOr<SavedLinear> SavedBlockResult::Linear(int i) const {
  const SafetensorsFile& file = *file_;
  const std::string& path = file.path();
  SavedLinear saved;
  const std::string name(kBlockLinearNames[i]);
  try {
    const nlohmann::json& r = report_["linears"][i];
    const nlohmann::json& format = formats_[i];
    if (Pending(i)) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, ": ", name, " is not solved yet (a partial block result)"));
    }
    LinearReport& out = saved.report;
    out.kept_fp = r.value("kept_fp", std::string());
    LinearWeights& linear = saved.weights;
    if (!out.kept_fp.empty()) {
      const TensorView* weight = file.Find(name + ".weight");
      if (weight == nullptr || weight->shape.size() != 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, " lacks the floating-point ", name,
                         ".weight its report says was kept"));
      }
      linear.rows = weight->shape[0], linear.cols = weight->shape[1];
      RETURN_IF_ERROR(Read(file, name + ".weight", SafetensorsDType::kF32,
                           {linear.rows, linear.cols}, linear.weight));
    } else {
      QuantizedLinear& q = saved.quantized;
      q.bits = format.at("bits").get<int>();
      q.group_size = format.at("group_size").get<int>();
      if (q.bits < 2 || q.bits > 8) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", name, " has ", q.bits, "-bit levels"));
      }
      if (format.contains("gguf_type")) {
        RETURN_IF_ERROR(ReadGgufRows(file, name, format, q));
      } else {
        RETURN_IF_ERROR(ReadLevels(file, name, q));
      }
      linear.rows = q.rows, linear.cols = q.cols;
    }
    RETURN_IF_ERROR(
        ReadOptional(file, name + ".bias", {linear.rows}, linear.bias));
    RETURN_IF_ERROR(ReadOptional(file, name + ".importance", {linear.cols},
                                 saved.importance));
    out.name = r.at("name").get<std::string>();
    out.bits = r.at("bits").get<int>();
    out.group_size = r.at("group_size").get<int>();
    auto number = [](const nlohmann::json& v) {
      return v.is_null() ? std::nan("") : v.get<double>();
    };
    out.proxy_loss = number(r.at("proxy_loss"));
    out.relative_output_error = number(r.at("relative_output_error"));
    out.damp_percent = r.at("damp_percent").get<double>();
    out.seconds = r.at("seconds").get<double>();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", name, ": malformed metadata: ", e.what()));
  }
  return saved;
}

absl::StatusOr<std::vector<float>> SavedBlockResult::Bias(int i) const {
  std::vector<float> bias;
  const std::string name = absl::StrCat(kBlockLinearNames[i], ".bias");
  const TensorView* view = file_->Find(name);
  if (view == nullptr) return bias;
  RETURN_IF_ERROR(
      Read(*file_, name, SafetensorsDType::kF32, {view->num_elements()}, bias));
  return bias;
}

namespace {

// LoadBlockResult into `out`, or (null) only its checks: one linear in
// memory at a time, nothing dequantized. With `partial`, a linear not
// solved yet is no error and is left as `out` has it.
absl::Status ReadBlockResult(const std::string& path, bool partial,
                             BlockResult* out) {
  ASSIGN_OR_RETURN(std::unique_ptr<SavedBlockResult> saved,
                   SavedBlockResult::Open(path));
  int64_t dim = 0;  // The inputs of q_proj: the hidden size.
  for (int i = 0; i < kBlockLinears; ++i) {
    if (partial && saved->Pending(i)) continue;
    ASSIGN_OR_RETURN(SavedLinear linear, saved->Linear(i));
    if (i == 0) dim = linear.weights.cols;
    if (out == nullptr) continue;
    if (linear.report.kept_fp.empty()) {
      linear.weights.weight = linear.quantized.Dequantize();
    }
    out->reports[i] = std::move(linear.report);
    out->quantized[i] = std::move(linear.quantized);
    BlockLinear(out->weights, i) = std::move(linear.weights);
    out->importance[i] = std::move(linear.importance);
  }
  for (const auto& [name, norm] :
       {std::make_pair(kNormAttention, &saved->attn_norm()),
        std::make_pair(kNormMlp, &saved->ffn_norm())}) {
    if (dim > 0 && static_cast<int64_t>(norm->size()) != dim) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", name, " holds ", norm->size(),
                       " values, expected ", dim));
    }
  }
  BlockResult checked;
  BlockResult& result = out == nullptr ? checked : *out;
  result.weights.attn_norm = saved->attn_norm();
  result.weights.ffn_norm = saved->ffn_norm();
  const nlohmann::json& report = saved->report();
  try {
    result.awq_ratios = report.at("awq_ratios").get<std::vector<double>>();
    result.seconds = report.at("seconds").get<double>();
    result.backend = report.value("backend", std::string());
    result.kernel = report.value("kernel", std::string());
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": malformed metadata: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<nlohmann::json> LoadBlockReport(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   SafetensorsFile::Open(path));
  return ReportOf(*file);
}

absl::StatusOr<BlockResult> LoadBlockResult(const std::string& path) {
  BlockResult result;
  RETURN_IF_ERROR(ReadBlockResult(path, /*partial=*/false, &result));
  return result;
}

absl::Status CheckBlockResult(const std::string& path) {
  return ReadBlockResult(path, /*partial=*/false, nullptr);
}

absl::Status LoadSolvedLinears(const std::string& path, BlockResult& partial) {
  return ReadBlockResult(path, /*partial=*/true, &partial);
}

absl::Status CheckPartialBlockResult(const std::string& path) {
  return ReadBlockResult(path, /*partial=*/true, nullptr);
}

namespace {

std::string StatisticsName(int input, const char* sum) {
  return absl::StrCat("input", input, ".", sum);
}

}  // namespace

absl::Status SaveBlockStatistics(const std::string& path,
                                 const BlockStatistics& statistics,
                                 Durability durability) {
  // The lower triangle of sum x x^T (all the accumulator adds to), packed
  // row by row: half the bytes of the square.
  std::array<std::vector<double>, kBlockInputs> packed;
  std::vector<Item> items;
  nlohmann::json samples = nlohmann::json::object();
  for (int input = 0; input < kBlockInputs; ++input) {
    if (!statistics[input].has_value()) continue;
    const HessianAccumulator& acc = *statistics[input];
    const int64_t n = acc.columns();
    std::vector<double>& lower = packed[input];
    lower.reserve(static_cast<size_t>(n * (n + 1) / 2));
    for (int64_t i = 0; i < n; ++i) {
      lower.insert(lower.end(), acc.sum_xxt().begin() + i * n,
                   acc.sum_xxt().begin() + i * n + i + 1);
    }
    items.push_back(MakeItem(StatisticsName(input, "sum_xxt"),
                             SafetensorsDType::kF64,
                             {static_cast<int64_t>(lower.size())}, lower));
    items.push_back(MakeItem(StatisticsName(input, "sum_abs"),
                             SafetensorsDType::kF64, {n}, acc.sum_abs()));
    samples[std::to_string(input)] = acc.samples();
  }
  return WriteItems(path, items, {{"samples", samples.dump()}}, durability);
}

namespace {

// The statistics file's inputs, each with its sample count and columns,
// every tensor's dtype and shape checked; values not read.
absl::StatusOr<std::vector<std::array<int64_t, 3>>> StatisticsLayout(
    const SafetensorsFile& file) {
  ASSIGN_OR_RETURN(const nlohmann::json samples, Metadata(file, "samples"));
  if (!samples.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": samples metadata is not an object"));
  }
  std::vector<std::array<int64_t, 3>> layout;  // {input, samples, columns}.
  for (int input = 0; input < kBlockInputs; ++input) {
    const auto count = samples.find(std::to_string(input));
    if (count == samples.end()) continue;
    if (!count->is_number_integer() || count->get<int64_t>() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.path(), ": the sample count of input ", input,
                       " is not a count"));
    }
    const TensorView* sum_abs = file.Find(StatisticsName(input, "sum_abs"));
    const TensorView* sum_xxt = file.Find(StatisticsName(input, "sum_xxt"));
    const int64_t n = sum_abs != nullptr && sum_abs->shape.size() == 1
                          ? sum_abs->shape[0]
                          : -1;
    if (n < 0 || sum_abs->dtype != SafetensorsDType::kF64 ||
        sum_xxt == nullptr || sum_xxt->dtype != SafetensorsDType::kF64 ||
        sum_xxt->shape != std::vector<int64_t>{n * (n + 1) / 2}) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.path(), ": the sums of input ", input,
          " are not F64 [columns] and F64 [columns * (columns + 1) / 2]"));
    }
    layout.push_back({input, count->get<int64_t>(), n});
  }
  return layout;
}

}  // namespace

absl::Status CheckBlockStatistics(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   SafetensorsFile::Open(path));
  return StatisticsLayout(*file).status();
}

absl::Status MergeBlockStatisticsFile(const std::string& path,
                                      BlockStatistics& total) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   SafetensorsFile::Open(path));
  ASSIGN_OR_RETURN(const auto layout, StatisticsLayout(*file));
  const bool first = std::none_of(total.begin(), total.end(),
                                  [](const auto& input) { return input; });
  std::array<bool, kBlockInputs> present = {};
  for (const auto& [input, samples, n] : layout) present[input] = true;
  for (int input = 0; input < kBlockInputs; ++input) {
    if (!first && present[input] != total[input].has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": statistics of other inputs than the shards before (input ",
          input, ")"));
    }
  }
  for (const auto& [input, samples, n] : layout) {
    if (!total[input]) total[input].emplace(n);
    if (total[input]->columns() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": input ", input, " has ", n, " columns, ",
                       total[input]->columns(), " before"));
    }
    const TensorView* lower = file->Find(StatisticsName(input, "sum_xxt"));
    const TensorView* sum_abs = file->Find(StatisticsName(input, "sum_abs"));
    RETURN_IF_ERROR(
        total[input]->AddPackedSums(samples, lower->data, sum_abs->data));
    // Added: the mapping's pages go (3.3 GB for a 70B down_proj).
    file->Release(*lower);
  }
  return absl::OkStatus();
}

absl::StatusOr<BlockStatistics> LoadBlockStatistics(const std::string& path) {
  BlockStatistics statistics;
  RETURN_IF_ERROR(MergeBlockStatisticsFile(path, statistics));
  return statistics;
}

absl::Status SaveActivations(const std::string& path,
                             const std::vector<float>& hidden,
                             int64_t sequences, int64_t seq_len, int64_t dim,
                             Durability durability, std::string* digest) {
  return WriteItems(path,
                    {MakeItem("hidden", SafetensorsDType::kF32,
                              {sequences, seq_len, dim}, hidden)},
                    {}, durability, digest);
}

absl::StatusOr<std::string> ActivationsFileDigest(
    const std::vector<float>& hidden, int64_t sequences, int64_t seq_len,
    int64_t dim, int threads, uint64_t* bytes) {
  ASSIGN_OR_RETURN(
      const std::string header,
      SafetensorsFileHeader(
          {{"hidden", SafetensorsDType::kF32, {sequences, seq_len, dim}}}));
  if (static_cast<int64_t>(hidden.size()) != sequences * seq_len * dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("activations: ", hidden.size(), " values, not [",
                     sequences, ", ", seq_len, ", ", dim, "]"));
  }
  if (bytes != nullptr) *bytes = header.size() + hidden.size() * sizeof(float);
  ContentDigest digest(threads);
  digest.Update(header);
  digest.Update(hidden.data(), hidden.size() * sizeof(float));
  return digest.Finish();
}

absl::StatusOr<std::vector<float>> LoadActivations(const std::string& path,
                                                   int64_t sequences,
                                                   int64_t seq_len,
                                                   int64_t dim) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   SafetensorsFile::Open(path));
  std::vector<float> hidden;
  RETURN_IF_ERROR(Read(*file, "hidden", SafetensorsDType::kF32,
                       {sequences, seq_len, dim}, hidden));
  return hidden;
}

}  // namespace quant
