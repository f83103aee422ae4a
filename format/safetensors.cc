#include "format/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "format/half.h"
#include "nlohmann/json.hpp"

namespace quant {

namespace {

// Runs body(begin, end) over [0, count) in contiguous stretches (multiples
// of `unit`), one a core, when count is at least `parallel_from`; else once,
// on this thread. The large copies and conversions of a 70B block (8.6 GB
// of activations, 1.7 GB of BF16 weights) are bound by page faults and
// memory, which one core does not saturate.
void ForStretches(size_t count, size_t parallel_from, size_t unit,
                  const std::function<void(size_t, size_t)>& body) {
  const size_t threads = std::min<size_t>(
      static_cast<size_t>(HardwareThreads()), (count + unit - 1) / unit);
  if (count < parallel_from || threads < 2) {
    if (count > 0) body(0, count);
    return;
  }
  const size_t stretch = (count / threads + unit - 1) / unit * unit;
  ParallelForEach((count + stretch - 1) / stretch, static_cast<int>(threads),
                  [&](uint64_t i) {
                    const size_t from = static_cast<size_t>(i) * stretch;
                    body(from, std::min(from + stretch, count));
                  });
}

// Elements [from, to) of the `type` elements at `p`, as float, to out.
void ConvertToFloat(SafetensorsDType type, const uint8_t* p, size_t from,
                    size_t to, float* out) {
  switch (type) {
    case SafetensorsDType::kBF16:
      for (size_t i = from; i < to; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = Bf16ToFloat(h);
      }
      break;
    case SafetensorsDType::kF16:
      for (size_t i = from; i < to; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = HalfToFloat(h);
      }
      break;
    case SafetensorsDType::kF32:
      std::memcpy(out + from, p + 4 * from, (to - from) * 4);
      break;
    case SafetensorsDType::kF64:
      for (size_t i = from; i < to; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      break;
    default:  // The caller checked the dtype.
      break;
  }
}

}  // namespace

void CopyFromMapping(void* dst, const void* src, size_t size) {
  ForStretches(size, size_t{64} << 20, size_t{16} << 20,
               [dst, src](size_t from, size_t to) {
                 std::memcpy(static_cast<char*>(dst) + from,
                             static_cast<const char*>(src) + from, to - from);
               });
}

namespace {

using json = nlohmann::json;

constexpr char kMetadataKey[] = "__metadata__";
constexpr char kIndexFileName[] = "model.safetensors.index.json";
constexpr char kSingleFileName[] = "model.safetensors";
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

struct DTypeInfo {
  SafetensorsDType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {SafetensorsDType::kBool, "BOOL", 1},
    {SafetensorsDType::kU8, "U8", 1},
    {SafetensorsDType::kI8, "I8", 1},
    {SafetensorsDType::kU16, "U16", 2},
    {SafetensorsDType::kI16, "I16", 2},
    {SafetensorsDType::kF16, "F16", 2},
    {SafetensorsDType::kBF16, "BF16", 2},
    {SafetensorsDType::kU32, "U32", 4},
    {SafetensorsDType::kI32, "I32", 4},
    {SafetensorsDType::kF32, "F32", 4},
    {SafetensorsDType::kU64, "U64", 8},
    {SafetensorsDType::kI64, "I64", 8},
    {SafetensorsDType::kF64, "F64", 8},
    {SafetensorsDType::kF8E4M3, "F8_E4M3", 1},
    {SafetensorsDType::kF8E5M2, "F8_E5M2", 1},
};

const DTypeInfo* FindDType(SafetensorsDType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return &info;
  }
  return nullptr;
}

// Element count and byte count of a shape, or an error when either
// overflows int64 or a dimension is negative. `what` prefixes messages.
absl::Status ShapeSizes(const std::vector<int64_t>& shape,
                        SafetensorsDType dtype, absl::string_view what,
                        int64_t* elements, int64_t* bytes) {
  int64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": negative dimension ", dim, " in shape [",
                       absl::StrJoin(shape, ", "), "]"));
    }
    if (dim != 0 && count > kInt64Max / dim) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": element count of shape [",
                       absl::StrJoin(shape, ", "), "] overflows int64"));
    }
    count *= dim;
  }
  const int64_t size = static_cast<int64_t>(SafetensorsDTypeSize(dtype));
  if (count > kInt64Max / size) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": byte count of shape [", absl::StrJoin(shape, ", "), "] x ",
        SafetensorsDTypeName(dtype), " overflows int64"));
  }
  *elements = count;
  *bytes = count * size;
  return absl::OkStatus();
}

// Reads a JSON integer in [0, int64 max] (shape dims, offsets).
bool GetNonNegative(const json& value, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
    return *out <= static_cast<uint64_t>(kInt64Max);
  }
  if (value.is_number_integer()) {
    const int64_t v = value.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

// A shard name in an index must stay inside the checkpoint directory.
absl::Status CheckPlainFileName(absl::string_view name,
                                absl::string_view what) {
  if (name.empty() || name == "." || name == ".." ||
      name.find('/') != absl::string_view::npos ||
      name.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": file name ", QuoteForMessage(name),
                     " must be a plain file name in the checkpoint directory "
                     "(no '/', '.', '..' or path traversal)"));
  }
  return absl::OkStatus();
}

uint64_t ReadU64Le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

struct ParsedEntry {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

// Validates one tensor entry of a header.
absl::StatusOr<ParsedEntry> ParseEntry(const std::string& name,
                                       const json& value,
                                       absl::string_view file_what,
                                       uint64_t data_size) {
  const std::string what =
      absl::StrCat(file_what, ": tensor ", QuoteForMessage(name));
  if (name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file_what, ": empty tensor name"));
  }
  if (!IsValidUtf8(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": name is not valid UTF-8"));
  }
  if (!value.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": entry must be an object, got ", value.type_name()));
  }
  ParsedEntry entry;
  entry.name = name;

  const auto dtype_it = value.find("dtype");
  if (dtype_it == value.end()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": missing 'dtype'"));
  }
  if (!dtype_it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": 'dtype' must be a string, got ", dtype_it->type_name()));
  }
  absl::StatusOr<SafetensorsDType> dtype =
      ParseSafetensorsDType(dtype_it->get<std::string>());
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", dtype.status().message()));
  }
  entry.dtype = *dtype;

  const auto shape_it = value.find("shape");
  if (shape_it == value.end()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": missing 'shape'"));
  }
  if (!shape_it->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": 'shape' must be an array, got ", shape_it->type_name()));
  }
  for (const json& dim : *shape_it) {
    if (dim.is_number_integer() && !dim.is_number_unsigned() &&
        dim.get<int64_t>() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": negative dimension ", dim.get<int64_t>(),
                       " in 'shape' ", DescribeJson(*shape_it)));
    }
    uint64_t d = 0;
    if (!GetNonNegative(dim, &d)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": 'shape' ", DescribeJson(*shape_it),
                       " must hold integers in [0, 2^63)"));
    }
    entry.shape.push_back(static_cast<int64_t>(d));
  }
  int64_t elements = 0;
  int64_t nbytes = 0;
  RETURN_IF_ERROR(
      ShapeSizes(entry.shape, entry.dtype, what, &elements, &nbytes));

  const auto offsets_it = value.find("data_offsets");
  if (offsets_it == value.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": missing 'data_offsets'"));
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2 ||
      !GetNonNegative((*offsets_it)[0], &entry.begin) ||
      !GetNonNegative((*offsets_it)[1], &entry.end)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what,
                     ": 'data_offsets' must be [begin, end] with "
                     "non-negative integers, got ",
                     DescribeJson(*offsets_it)));
  }
  if (entry.begin > entry.end) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": data_offsets [",
                                                   entry.begin, ", ", entry.end,
                                                   "] has begin > end"));
  }
  if (entry.end > data_size) {
    return absl::DataLossError(
        absl::StrCat(what, ": data_offsets [", entry.begin, ", ", entry.end,
                     "] run past the end of the file (data area is ", data_size,
                     " bytes); the file may be truncated"));
  }
  if (entry.end - entry.begin != static_cast<uint64_t>(nbytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": data_offsets [", entry.begin, ", ", entry.end, "] span ",
        entry.end - entry.begin, " bytes but shape [",
        absl::StrJoin(entry.shape, ", "), "] x ",
        SafetensorsDTypeName(entry.dtype), " needs ", nbytes, " bytes"));
  }
  return entry;
}

}  // namespace

absl::StatusOr<SafetensorsDType> ParseSafetensorsDType(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown safetensors dtype ", QuoteForMessage(name)));
}

absl::string_view SafetensorsDTypeName(SafetensorsDType dtype) {
  const DTypeInfo* info = FindDType(dtype);
  return info != nullptr ? info->name : "UNKNOWN";
}

size_t SafetensorsDTypeSize(SafetensorsDType dtype) {
  const DTypeInfo* info = FindDType(dtype);
  return info != nullptr ? info->size : 1;
}

// ---------------------------------------------------------------------------
// TensorView

int64_t TensorView::num_elements() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

absl::Status TensorView::ToFloat(int64_t begin, int64_t count,
                                 float* out) const {
  switch (dtype) {
    case SafetensorsDType::kBF16:
    case SafetensorsDType::kF16:
    case SafetensorsDType::kF32:
    case SafetensorsDType::kF64:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' has dtype ", SafetensorsDTypeName(dtype),
          ", which does not convert to float (only BF16, F16, F32, F64)"));
  }
  const size_t size = SafetensorsDTypeSize(dtype);
  const int64_t available =
      std::min<int64_t>(num_elements(), static_cast<int64_t>(nbytes / size));
  if (begin < 0 || count < 0 || begin > available ||
      count > available - begin) {
    return absl::OutOfRangeError(
        absl::StrCat("tensor '", name, "': elements [", begin, ", ", begin,
                     " + ", count, ") outside [0, ", available, ")"));
  }
  if (count == 0) return absl::OkStatus();
  const uint8_t* p = data + static_cast<size_t>(begin) * size;
  const SafetensorsDType type = dtype;
  ForStretches(static_cast<size_t>(count), size_t{1} << 22, size_t{1} << 16,
               [type, p, out](size_t from, size_t to) {
                 ConvertToFloat(type, p, from, to, out);
               });
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> TensorView::ToFloatVector() const {
  const size_t size = SafetensorsDTypeSize(dtype);
  const int64_t n =
      std::min<int64_t>(num_elements(), static_cast<int64_t>(nbytes / size));
  std::vector<float> out;
  // Check the dtype before allocating.
  RETURN_IF_ERROR(ToFloat(0, 0, nullptr));
  out.resize(static_cast<size_t>(n));
  RETURN_IF_ERROR(ToFloat(0, n, out.data()));
  return out;
}

// ---------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  const std::string what = absl::StrCat("safetensors file '", path, "'");
  absl::StatusOr<std::unique_ptr<MappedFile>> mapped = MappedFile::Open(path);
  if (!mapped.ok()) return mapped.status();
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapped_ = std::move(*mapped);
  const uint8_t* base = file->mapped_->data();
  const uint64_t size = file->mapped_->size();

  if (size < 8) {
    return absl::DataLossError(
        absl::StrCat(what, ": file is ", size,
                     " bytes, shorter than the 8-byte header length prefix"));
  }
  const uint64_t header_size = ReadU64Le(base);
  if (header_size > kSafetensorsMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": header length ", header_size, " exceeds the limit of ",
        kSafetensorsMaxHeaderBytes, " bytes"));
  }
  if (header_size > size - 8) {
    return absl::DataLossError(absl::StrCat(
        what, ": header length ", header_size, " runs past the end of the ",
        size, "-byte file; the file may be truncated"));
  }
  file->header_size_ = header_size;
  const absl::string_view header_text(reinterpret_cast<const char*>(base + 8),
                                      header_size);
  ASSIGN_OR_RETURN(
      json header,
      ParseJsonStrict(header_text, absl::StrCat(what, ": header")));
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": header must be a JSON object, got ", header.type_name()));
  }

  const uint64_t data_start = 8 + header_size;
  const uint64_t data_size = size - data_start;
  std::vector<ParsedEntry> entries;
  entries.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == kMetadataKey) {
      if (!it.value().is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": __metadata__ must be an object, got ",
                         it.value().type_name()));
      }
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": __metadata__ value of '", m.key(),
                           "' must be a string, got ", m.value().type_name()));
        }
        file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    ASSIGN_OR_RETURN(ParsedEntry entry,
                     ParseEntry(it.key(), it.value(), what, data_size));
    entries.push_back(std::move(entry));
  }

  std::sort(entries.begin(), entries.end(),
            [](const ParsedEntry& a, const ParsedEntry& b) {
              return std::tie(a.begin, a.end, a.name) <
                     std::tie(b.begin, b.end, b.name);
            });
  // The data area must be covered exactly: no overlaps, no holes.
  uint64_t expected = 0;
  const ParsedEntry* previous = nullptr;
  for (const ParsedEntry& e : entries) {
    if (e.begin < expected) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": tensor '", e.name, "' data_offsets [", e.begin,
                       ", ", e.end, "] overlap tensor '", previous->name, "' [",
                       previous->begin, ", ", previous->end, "]"));
    }
    if (e.begin > expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": hole of ", e.begin - expected, " bytes before tensor '",
          e.name, "' (data_offsets [", e.begin, ", ", e.end,
          "]); the data area must be covered without gaps"));
    }
    expected = e.end;
    previous = &e;
  }
  if (expected != data_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", data_size - expected,
        " bytes after the last tensor are not covered by any tensor (data "
        "area is ",
        data_size, " bytes, tensors end at ", expected, ")"));
  }

  file->tensors_.reserve(entries.size());
  for (ParsedEntry& e : entries) {
    TensorView view;
    view.name = std::move(e.name);
    view.dtype = e.dtype;
    view.shape = std::move(e.shape);
    view.data = base + data_start + e.begin;
    view.nbytes = static_cast<size_t>(e.end - e.begin);
    file->index_.emplace(view.name, file->tensors_.size());
    file->tensors_.push_back(std::move(view));
  }
  return file;
}

const TensorView* SafetensorsFile::Find(absl::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

bool SafetensorsFile::Contains(const TensorView& t) const {
  const uint8_t* begin = mapped_->data();
  if (begin == nullptr || t.data == nullptr) return false;
  // Compare as integers: pointers into different objects are not ordered.
  const uintptr_t lo = reinterpret_cast<uintptr_t>(begin);
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data);
  return p >= lo && p - lo <= mapped_->size() &&
         t.nbytes <= mapped_->size() - (p - lo);
}

void SafetensorsFile::Release(const TensorView& t) const {
  if (!Contains(t)) return;
  const size_t offset =
      static_cast<size_t>(reinterpret_cast<uintptr_t>(t.data) -
                          reinterpret_cast<uintptr_t>(mapped_->data()));
  mapped_->Release(offset, t.nbytes);
}

// ---------------------------------------------------------------------------
// SafetensorsCheckpoint

absl::Status SafetensorsCheckpoint::AddFile(
    std::unique_ptr<SafetensorsFile> file) {
  const size_t file_index = files_.size();
  for (size_t i = 0; i < file->tensors().size(); ++i) {
    const std::string& name = file->tensors()[i].name;
    const auto inserted = index_.emplace(name, std::make_pair(file_index, i));
    if (!inserted.second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' is in both '",
                       files_[inserted.first->second.first]->path(), "' and '",
                       file->path(), "'"));
    }
  }
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>>
SafetensorsCheckpoint::Open(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec || !fs::exists(status)) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint path '", path, "' does not exist"));
  }
  std::unique_ptr<SafetensorsCheckpoint> checkpoint(
      new SafetensorsCheckpoint());
  checkpoint->path_ = path;

  std::string index_path;
  std::string dir;
  if (fs::is_directory(status)) {
    dir = path;
    const std::string candidate = path + "/" + kIndexFileName;
    if (fs::exists(candidate, ec)) {
      index_path = candidate;
    } else if (fs::exists(path + "/" + kSingleFileName, ec)) {
      ASSIGN_OR_RETURN(auto file,
                       SafetensorsFile::Open(path + "/" + kSingleFileName));
      RETURN_IF_ERROR(checkpoint->AddFile(std::move(file)));
      return checkpoint;
    } else {
      std::vector<std::string> found;
      for (fs::directory_iterator it(path, ec), end; !ec && it != end;
           it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name.size() > 12 &&
            name.compare(name.size() - 12, 12, ".safetensors") == 0) {
          found.push_back(name);
        }
      }
      if (ec) {
        return absl::InternalError(
            absl::StrCat("cannot list directory '", path, "': ", ec.message()));
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) {
        return absl::NotFoundError(absl::StrCat("directory '", path,
                                                "' has no ", kIndexFileName,
                                                " and no *.safetensors file"));
      }
      if (found.size() > 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "directory '", path, "' has ", found.size(),
            " *.safetensors files (", absl::StrJoin(found, ", "), ") but no ",
            kIndexFileName, " to say how they fit together"));
      }
      ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path + "/" + found[0]));
      RETURN_IF_ERROR(checkpoint->AddFile(std::move(file)));
      return checkpoint;
    }
  } else {
    const size_t slash = path.rfind('/');
    const std::string base =
        slash == std::string::npos ? path : path.substr(slash + 1);
    if (base.size() > 11 &&
        base.compare(base.size() - 11, 11, ".index.json") == 0) {
      index_path = path;
      dir = slash == std::string::npos ? "." : path.substr(0, slash);
    } else {
      ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
      RETURN_IF_ERROR(checkpoint->AddFile(std::move(file)));
      return checkpoint;
    }
  }

  // Sharded: the index says which shard holds each tensor.
  const std::string what = absl::StrCat("safetensors index '", index_path, "'");
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  ASSIGN_OR_RETURN(json index, ParseJsonStrict(text, what));
  if (!index.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": must be a JSON object, got ", index.type_name()));
  }
  const auto metadata_it = index.find("metadata");
  if (metadata_it != index.end()) {
    // Safe to serialise: ParseJsonStrict bounds the nesting depth.
    checkpoint->index_metadata_json_ = metadata_it->dump();
  }
  const auto map_it = index.find("weight_map");
  if (map_it == index.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": missing 'weight_map'"));
  }
  if (!map_it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": 'weight_map' must be an object, got ", map_it->type_name()));
  }
  if (map_it->empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": 'weight_map' is empty"));
  }
  std::map<std::string, std::string> weight_map;
  std::map<std::string, std::vector<std::string>> by_file;
  for (auto it = map_it->begin(); it != map_it->end(); ++it) {
    if (it.key().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": empty tensor name in 'weight_map'"));
    }
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": weight_map entry for tensor '", it.key(),
          "' must be a file name string, got ", it.value().type_name()));
    }
    const std::string file_name = it.value().get<std::string>();
    RETURN_IF_ERROR(CheckPlainFileName(
        file_name, absl::StrCat(what, ": tensor '", it.key(), "'")));
    weight_map[it.key()] = file_name;
    by_file[file_name].push_back(it.key());
  }

  for (const auto& [file_name, names] : by_file) {
    const std::string shard_path = dir + "/" + file_name;
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> shard =
        SafetensorsFile::Open(shard_path);
    if (!shard.ok()) {
      return absl::Status(shard.status().code(),
                          absl::StrCat(what, ": shard '", file_name,
                                       "': ", shard.status().message()));
    }
    for (const std::string& name : names) {
      if ((*shard)->Find(name) == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": lists tensor '", name, "' in shard '",
                         file_name, "', which does not contain it"));
      }
    }
    for (const TensorView& t : (*shard)->tensors()) {
      const auto listed = weight_map.find(t.name);
      if (listed == weight_map.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": shard '", file_name, "' holds tensor '",
                         t.name, "', which the index does not list"));
      }
      if (listed->second != file_name) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": shard '", file_name, "' holds tensor '", t.name,
            "', which the index places in '", listed->second, "'"));
      }
    }
    RETURN_IF_ERROR(checkpoint->AddFile(std::move(*shard)));
  }
  return checkpoint;
}

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& entry : index_) names.push_back(entry.first);
  std::sort(names.begin(), names.end());
  return names;
}

bool SafetensorsCheckpoint::Has(absl::string_view name) const {
  return index_.contains(name);
}

absl::StatusOr<TensorView> SafetensorsCheckpoint::Get(
    absl::string_view name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor ", QuoteForMessage(name),
                                            " not found in checkpoint '", path_,
                                            "'"));
  }
  return files_[it->second.first]->tensors()[it->second.second];
}

absl::StatusOr<std::vector<int64_t>> SafetensorsCheckpoint::Shape(
    absl::string_view name) const {
  ASSIGN_OR_RETURN(TensorView t, Get(name));
  return t.shape;
}

const SafetensorsFile* SafetensorsCheckpoint::FileOf(
    absl::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : files_[it->second.first].get();
}

absl::Status SafetensorsCheckpoint::ForEachWindow(
    const TensorView& t, size_t window,
    const std::function<absl::Status(const uint8_t* data, size_t size)>& fn)
    const {
  if (window == 0) return absl::InvalidArgumentError("windows of zero bytes");
  for (size_t from = 0; from < t.nbytes; from += window) {
    TensorView part = t;
    part.data = t.data + from;
    part.nbytes = std::min(window, t.nbytes - from);
    const absl::Status status = fn(part.data, part.nbytes);
    Release(part);
    if (!status.ok()) return status;
  }
  Release(t);  // Pages straddling the windows.
  return absl::OkStatus();
}

void SafetensorsCheckpoint::Release(const TensorView& t) const {
  const SafetensorsFile* owner = FileOf(t.name);
  if (owner != nullptr && owner->Contains(t)) {
    owner->Release(t);
    return;
  }
  for (const auto& file : files_) {
    if (file->Contains(t)) {
      file->Release(t);
      return;
    }
  }
}

// ---------------------------------------------------------------------------
// SafetensorsWriter

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, Durability durability) {
  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> out,
                   AtomicFileWriter::Create(path, durability));
  return std::unique_ptr<SafetensorsWriter>(
      new SafetensorsWriter(path, std::move(out)));
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

absl::Status SafetensorsWriter::AddTensor(std::string name,
                                          SafetensorsDType dtype,
                                          std::vector<int64_t> shape) {
  const std::string what = absl::StrCat("safetensors writer '", path_,
                                        "': tensor ", QuoteForMessage(name));
  if (done_) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": writer already finished or failed"));
  }
  if (header_written_) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": tensors must all be declared before any data is written"));
  }
  if (name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors writer '", path_, "': empty tensor name"));
  }
  if (!IsValidUtf8(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": name is not valid UTF-8"));
  }
  if (name == kMetadataKey) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": name is reserved for metadata"));
  }
  if (by_name_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat(what, ": declared twice"));
  }
  if (FindDType(dtype) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": unknown dtype"));
  }
  int64_t elements = 0;
  int64_t nbytes = 0;
  RETURN_IF_ERROR(ShapeSizes(shape, dtype, what, &elements, &nbytes));
  if (static_cast<uint64_t>(nbytes) >
      static_cast<uint64_t>(kInt64Max) - data_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": total data size overflows int64"));
  }
  Entry entry;
  entry.name = std::move(name);
  entry.dtype = dtype;
  entry.shape = std::move(shape);
  entry.nbytes = static_cast<uint64_t>(nbytes);
  entry.begin = data_size_;
  data_size_ += entry.nbytes;
  by_name_.emplace(entry.name, entries_.size());
  entries_.push_back(std::move(entry));
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Fail(absl::Status status) {
  done_ = true;
  out_.reset();  // Removes the temporary file.
  return status;
}

namespace {

// A tensor of a header: where its bytes lie in the data area.
struct HeaderEntry {
  const std::string* name;
  SafetensorsDType dtype;
  const std::vector<int64_t>* shape;
  uint64_t begin;
  uint64_t nbytes;
};

// The 8-byte length and the JSON header (padded with spaces to a multiple
// of 8) that start a file of these tensors; `what` names it in errors.
absl::StatusOr<std::string> EncodeHeader(
    const std::map<std::string, std::string>& metadata,
    const std::vector<HeaderEntry>& entries, const std::string& what) {
  json header = json::object();
  if (!metadata.empty()) {
    json encoded = json::object();
    for (const auto& [key, value] : metadata) {
      if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": metadata key ", QuoteForMessage(key),
                         " or its value is not valid UTF-8"));
      }
      encoded[key] = value;
    }
    header[kMetadataKey] = std::move(encoded);
  }
  for (const HeaderEntry& e : entries) {
    json entry = json::object();
    entry["dtype"] = std::string(SafetensorsDTypeName(e.dtype));
    entry["shape"] = *e.shape;
    entry["data_offsets"] = {e.begin, e.begin + e.nbytes};
    header[*e.name] = std::move(entry);
  }
  std::string text =
      header.dump(-1, ' ', false, json::error_handler_t::replace);
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kSafetensorsMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": header of ", text.size(), " bytes exceeds the limit of ",
        kSafetensorsMaxHeaderBytes, " bytes"));
  }
  std::string bytes(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) {
    bytes[i] = static_cast<char>(n & 0xff);
    n >>= 8;
  }
  return bytes + text;
}

}  // namespace

absl::StatusOr<std::string> SafetensorsFileHeader(
    const std::vector<SafetensorsTensorDecl>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<HeaderEntry> entries;
  uint64_t offset = 0;
  for (const SafetensorsTensorDecl& t : tensors) {
    const std::string what =
        absl::StrCat("safetensors header: tensor ", QuoteForMessage(t.name));
    if (t.name.empty() || t.name == kMetadataKey || !IsValidUtf8(t.name) ||
        FindDType(t.dtype) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": bad name or dtype"));
    }
    int64_t elements = 0;
    int64_t nbytes = 0;
    RETURN_IF_ERROR(ShapeSizes(t.shape, t.dtype, what, &elements, &nbytes));
    entries.push_back(
        {&t.name, t.dtype, &t.shape, offset, static_cast<uint64_t>(nbytes)});
    offset += static_cast<uint64_t>(nbytes);
  }
  return EncodeHeader(metadata, entries, "safetensors header");
}

absl::Status SafetensorsWriter::WriteHeader() {
  std::vector<HeaderEntry> entries;
  for (const Entry& e : entries_) {
    entries.push_back({&e.name, e.dtype, &e.shape, e.begin, e.nbytes});
  }
  absl::StatusOr<std::string> header = EncodeHeader(
      metadata_, entries, absl::StrCat("safetensors writer '", path_, "'"));
  if (!header.ok()) return header.status();
  absl::Status status = out_->Write(*header);
  if (!status.ok()) return Fail(status);
  header_written_ = true;
  current_ = 0;
  SkipCompleteTensors();
  return absl::OkStatus();
}

void SafetensorsWriter::SkipCompleteTensors() {
  while (current_ < entries_.size() &&
         entries_[current_].written == entries_[current_].nbytes) {
    ++current_;
  }
}

absl::Status SafetensorsWriter::WriteTensorData(absl::string_view name,
                                                const void* data, size_t size) {
  const std::string what = absl::StrCat("safetensors writer '", path_,
                                        "': tensor ", QuoteForMessage(name));
  if (done_) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": writer already finished or failed"));
  }
  const auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    return absl::NotFoundError(absl::StrCat(what, ": was never declared"));
  }
  if (!header_written_) RETURN_IF_ERROR(WriteHeader());
  const size_t index = it->second;
  Entry& e = entries_[index];
  if (size == 0 && (index < current_ || e.nbytes == 0)) {
    return absl::OkStatus();  // Nothing to write to a complete tensor.
  }
  if (index > current_) {
    const Entry& expected = entries_[current_];
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": written out of order; tensor '", expected.name,
                     "' (declared earlier) is incomplete with ",
                     expected.written, " of ", expected.nbytes, " bytes"));
  }
  if (index < current_ || size > e.nbytes - e.written) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", e.written, " + ", size, " bytes exceed its size of ",
        e.nbytes, " bytes (shape [", absl::StrJoin(e.shape, ", "), "] x ",
        SafetensorsDTypeName(e.dtype), ")"));
  }
  if (size > 0) {
    const absl::Status status = out_->Write(data, size);
    if (!status.ok()) return Fail(status);
  }
  e.written += size;
  SkipCompleteTensors();
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  const std::string what = absl::StrCat("safetensors writer '", path_, "'");
  if (done_) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": writer already finished or failed"));
  }
  if (!header_written_) {
    const absl::Status status = WriteHeader();
    if (!status.ok()) return Fail(status);
  }
  if (current_ < entries_.size()) {
    const Entry& e = entries_[current_];
    return Fail(absl::FailedPreconditionError(
        absl::StrCat(what, ": tensor '", e.name, "' is incomplete: ", e.written,
                     " of ", e.nbytes, " bytes written")));
  }
  const absl::Status status = out_->Commit();
  if (!status.ok()) return Fail(status);
  done_ = true;
  digest_ = out_->digest();
  out_.reset();
  return absl::OkStatus();
}

absl::Status WriteSafetensorsIndex(
    const std::string& dir,
    const std::map<std::string, std::string>& weight_map, uint64_t total_size) {
  const std::string path = dir + "/" + kIndexFileName;
  const std::string what = absl::StrCat("safetensors index '", path, "'");
  json map = json::object();
  for (const auto& [name, file] : weight_map) {
    if (name.empty() || !IsValidUtf8(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": tensor name ", QuoteForMessage(name),
                       " is empty or not valid UTF-8"));
    }
    if (!IsValidUtf8(file)) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": file name of tensor '", name, "' is not valid UTF-8"));
    }
    RETURN_IF_ERROR(
        CheckPlainFileName(file, absl::StrCat(what, ": tensor '", name, "'")));
    map[name] = file;
  }
  json index = json::object();
  index["metadata"] = json::object({{"total_size", total_size}});
  index["weight_map"] = std::move(map);
  return WriteFileAtomically(path, index.dump(2) + "\n");
}

}  // namespace quant
