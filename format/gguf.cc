#include "format/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "common/utf8.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "GGUF I/O here assumes a little-endian host");

namespace quant {
namespace {

constexpr uint32_t kNumValueTypes = 13;
constexpr uint8_t kMagic[4] = {'G', 'G', 'U', 'F'};
// llama.cpp refuses tensor names of GGML_MAX_NAME (64) bytes or more.
constexpr size_t kMaxTensorNameBytes = 63;
// Smallest possible encodings, used to bound counts by the bytes left:
// key (u64 length + 1 byte) + u32 type + 1-byte value.
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;
// name (u64 length + 1 byte) + u32 n_dims + one u64 dim + u32 type + u64
// offset.
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;

bool IsValidType(uint32_t type) { return type < kNumValueTypes; }

bool IsUnsignedType(GgufValueType type) {
  return type == GgufValueType::kUint8 || type == GgufValueType::kUint16 ||
         type == GgufValueType::kUint32 || type == GgufValueType::kUint64;
}

bool IsSignedType(GgufValueType type) {
  return type == GgufValueType::kInt8 || type == GgufValueType::kInt16 ||
         type == GgufValueType::kInt32 || type == GgufValueType::kInt64;
}

// Bytes of a scalar value; for strings and arrays the smallest encoding.
uint64_t MinEncodedBytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
    case GgufValueType::kString:  // u64 length
      return 8;
    case GgufValueType::kArray:  // u32 element type + u64 count
      return 12;
  }
  return 1;
}

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

absl::Status Prefixed(absl::string_view prefix, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

std::string DimsString(absl::Span<const uint64_t> dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

// Bounds-checked little-endian reads over the mapped file.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status ReadBytes(void* out, uint64_t n, absl::string_view what) {
    if (n > remaining()) {
      return absl::InvalidArgumentError(
          absl::StrCat("file truncated: ", what, " at offset ", pos_, " needs ",
                       n, " bytes, only ", remaining(), " left"));
    }
    if (n > 0) std::memcpy(out, data_ + pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status Read(T* out, absl::string_view what) {
    return ReadBytes(out, sizeof(T), what);
  }

  absl::Status ReadString(std::string* out, absl::string_view what) {
    uint64_t length = 0;
    RETURN_IF_ERROR(Read(&length, absl::StrCat("length of ", what)));
    if (length > remaining()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "string length ", length, " of ", what, " at offset ", pos_ - 8,
          " exceeds the ", remaining(), " bytes left in the file"));
    }
    out->assign(reinterpret_cast<const char*>(data_ + pos_),
                static_cast<size_t>(length));
    pos_ += length;
    return absl::OkStatus();
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// Reads one value of `type`. `depth` counts the arrays enclosing it;
// `budget` is the number of values that may still be materialized.
absl::Status ReadValue(Cursor& c, GgufValueType type, int depth,
                       uint64_t* budget, GgufValue* out) {
  if (*budget == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metadata holds more than ", kGgufMaxMetadataValues, " values"));
  }
  --*budget;
  switch (type) {
    case GgufValueType::kUint8: {
      uint8_t v;
      RETURN_IF_ERROR(c.Read(&v, "uint8 value"));
      *out = GgufValue::U8(v);
      return absl::OkStatus();
    }
    case GgufValueType::kInt8: {
      int8_t v;
      RETURN_IF_ERROR(c.Read(&v, "int8 value"));
      *out = GgufValue::I8(v);
      return absl::OkStatus();
    }
    case GgufValueType::kUint16: {
      uint16_t v;
      RETURN_IF_ERROR(c.Read(&v, "uint16 value"));
      *out = GgufValue::U16(v);
      return absl::OkStatus();
    }
    case GgufValueType::kInt16: {
      int16_t v;
      RETURN_IF_ERROR(c.Read(&v, "int16 value"));
      *out = GgufValue::I16(v);
      return absl::OkStatus();
    }
    case GgufValueType::kUint32: {
      uint32_t v;
      RETURN_IF_ERROR(c.Read(&v, "uint32 value"));
      *out = GgufValue::U32(v);
      return absl::OkStatus();
    }
    case GgufValueType::kInt32: {
      int32_t v;
      RETURN_IF_ERROR(c.Read(&v, "int32 value"));
      *out = GgufValue::I32(v);
      return absl::OkStatus();
    }
    case GgufValueType::kFloat32: {
      float v;
      RETURN_IF_ERROR(c.Read(&v, "float32 value"));
      *out = GgufValue::F32(v);
      return absl::OkStatus();
    }
    case GgufValueType::kBool: {
      uint8_t v;
      const uint64_t at = c.pos();
      RETURN_IF_ERROR(c.Read(&v, "bool value"));
      if (v > 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "bool value at offset ", at, " is ", v, ", expected 0 or 1"));
      }
      *out = GgufValue::Bool(v != 0);
      return absl::OkStatus();
    }
    case GgufValueType::kString: {
      std::string v;
      RETURN_IF_ERROR(c.ReadString(&v, "string value"));
      *out = GgufValue::String(std::move(v));
      return absl::OkStatus();
    }
    case GgufValueType::kUint64: {
      uint64_t v;
      RETURN_IF_ERROR(c.Read(&v, "uint64 value"));
      *out = GgufValue::U64(v);
      return absl::OkStatus();
    }
    case GgufValueType::kInt64: {
      int64_t v;
      RETURN_IF_ERROR(c.Read(&v, "int64 value"));
      *out = GgufValue::I64(v);
      return absl::OkStatus();
    }
    case GgufValueType::kFloat64: {
      double v;
      RETURN_IF_ERROR(c.Read(&v, "float64 value"));
      *out = GgufValue::F64(v);
      return absl::OkStatus();
    }
    case GgufValueType::kArray:
      break;
  }
  if (depth >= kGgufMaxArrayDepth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "arrays nested deeper than ", kGgufMaxArrayDepth, " levels"));
  }
  uint32_t element_type = 0;
  RETURN_IF_ERROR(c.Read(&element_type, "array element type"));
  if (!IsValidType(element_type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown array element type ", element_type));
  }
  const GgufValueType elem = static_cast<GgufValueType>(element_type);
  uint64_t count = 0;
  RETURN_IF_ERROR(c.Read(&count, "array length"));
  const uint64_t min_bytes = MinEncodedBytes(elem);
  if (count > c.remaining() / min_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "array of ", count, " ", GgufValueTypeName(elem),
        " elements at offset ", c.pos() - 12, " needs at least ", min_bytes,
        " bytes each, only ", c.remaining(), " bytes left in the file"));
  }
  if (count > *budget) {
    return absl::InvalidArgumentError(
        absl::StrCat("array of ", count, " elements exceeds the limit of ",
                     kGgufMaxMetadataValues, " metadata values"));
  }
  std::vector<GgufValue> items;
  items.reserve(static_cast<size_t>(count));  // Bounded by both checks above.
  for (uint64_t i = 0; i < count; ++i) {
    GgufValue item;
    RETURN_IF_ERROR(Prefixed(absl::StrCat("array item ", i, ": "),
                             ReadValue(c, elem, depth + 1, budget, &item)));
    items.push_back(std::move(item));
  }
  *out = GgufValue::Array(elem, std::move(items));
  return absl::OkStatus();
}

// ---- Writer-side encoding ----

template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

void PutString(std::string* out, absl::string_view s) {
  Put<uint64_t>(out, s.size());
  out->append(s.data(), s.size());
}

// Checks that a value can be written (homogeneous arrays, nesting depth,
// total size) and counts its values against `budget`.
absl::Status ValidateValue(const GgufValue& value, int depth,
                           uint64_t* budget) {
  if (*budget == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metadata holds more than ", kGgufMaxMetadataValues, " values"));
  }
  --*budget;
  if (!value.is_array()) return absl::OkStatus();
  if (depth >= kGgufMaxArrayDepth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "arrays nested deeper than ", kGgufMaxArrayDepth, " levels"));
  }
  if (!IsValidType(static_cast<uint32_t>(value.array_type()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown array element type ",
                     static_cast<uint32_t>(value.array_type())));
  }
  const std::vector<GgufValue>& items = value.array();
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].type() != value.array_type()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "array item ", i, " has type ", GgufValueTypeName(items[i].type()),
          ", expected ", GgufValueTypeName(value.array_type())));
    }
    RETURN_IF_ERROR(Prefixed(absl::StrCat("array item ", i, ": "),
                             ValidateValue(items[i], depth + 1, budget)));
  }
  return absl::OkStatus();
}

// Encodes the payload of `value` (without its type tag).
void PutValue(std::string* out, const GgufValue& value) {
  switch (value.type()) {
    case GgufValueType::kUint8:
      Put<uint8_t>(out, static_cast<uint8_t>(*value.AsUint()));
      return;
    case GgufValueType::kInt8:
      Put<int8_t>(out, static_cast<int8_t>(*value.AsInt()));
      return;
    case GgufValueType::kUint16:
      Put<uint16_t>(out, static_cast<uint16_t>(*value.AsUint()));
      return;
    case GgufValueType::kInt16:
      Put<int16_t>(out, static_cast<int16_t>(*value.AsInt()));
      return;
    case GgufValueType::kUint32:
      Put<uint32_t>(out, static_cast<uint32_t>(*value.AsUint()));
      return;
    case GgufValueType::kInt32:
      Put<int32_t>(out, static_cast<int32_t>(*value.AsInt()));
      return;
    case GgufValueType::kFloat32:
      Put<float>(out, static_cast<float>(*value.AsFloat()));
      return;
    case GgufValueType::kBool:
      Put<uint8_t>(out, *value.AsBool() ? 1 : 0);
      return;
    case GgufValueType::kString:
      PutString(out, *value.AsString());
      return;
    case GgufValueType::kUint64:
      Put<uint64_t>(out, *value.AsUint());
      return;
    case GgufValueType::kInt64:
      Put<int64_t>(out, *value.AsInt());
      return;
    case GgufValueType::kFloat64:
      Put<double>(out, *value.AsFloat());
      return;
    case GgufValueType::kArray:
      Put<uint32_t>(out, static_cast<uint32_t>(value.array_type()));
      Put<uint64_t>(out, value.array().size());
      for (const GgufValue& item : value.array()) PutValue(out, item);
      return;
  }
}

absl::Status ValidateName(absl::string_view what, absl::string_view name) {
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  }
  if (!IsValidUtf8(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", QuoteForMessage(name), " is not valid UTF-8"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

// ---- GgufValue ----

GgufValue GgufValue::U8(uint8_t v) {
  return GgufValue(GgufValueType::kUint8, v);
}
GgufValue GgufValue::I8(int8_t v) {
  return GgufValue(GgufValueType::kInt8, static_cast<uint64_t>(int64_t{v}));
}
GgufValue GgufValue::U16(uint16_t v) {
  return GgufValue(GgufValueType::kUint16, v);
}
GgufValue GgufValue::I16(int16_t v) {
  return GgufValue(GgufValueType::kInt16, static_cast<uint64_t>(int64_t{v}));
}
GgufValue GgufValue::U32(uint32_t v) {
  return GgufValue(GgufValueType::kUint32, v);
}
GgufValue GgufValue::I32(int32_t v) {
  return GgufValue(GgufValueType::kInt32, static_cast<uint64_t>(int64_t{v}));
}
GgufValue GgufValue::F32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return GgufValue(GgufValueType::kFloat32, bits);
}
GgufValue GgufValue::Bool(bool v) {
  return GgufValue(GgufValueType::kBool, v ? 1 : 0);
}
GgufValue GgufValue::String(std::string v) {
  GgufValue value(GgufValueType::kString, 0);
  value.string_ = std::move(v);
  return value;
}
GgufValue GgufValue::U64(uint64_t v) {
  return GgufValue(GgufValueType::kUint64, v);
}
GgufValue GgufValue::I64(int64_t v) {
  return GgufValue(GgufValueType::kInt64, static_cast<uint64_t>(v));
}
GgufValue GgufValue::F64(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return GgufValue(GgufValueType::kFloat64, bits);
}

GgufValue GgufValue::Array(GgufValueType element_type,
                           std::vector<GgufValue> items) {
  GgufValue value(GgufValueType::kArray, 0);
  value.array_type_ = element_type;
  value.items_ = std::move(items);
  return value;
}

GgufValue GgufValue::StringArray(std::vector<std::string> items) {
  std::vector<GgufValue> values;
  values.reserve(items.size());
  for (std::string& s : items) values.push_back(String(std::move(s)));
  return Array(GgufValueType::kString, std::move(values));
}

GgufValue GgufValue::F32Array(std::vector<float> items) {
  std::vector<GgufValue> values;
  values.reserve(items.size());
  for (float f : items) values.push_back(F32(f));
  return Array(GgufValueType::kFloat32, std::move(values));
}

GgufValue GgufValue::I32Array(std::vector<int32_t> items) {
  std::vector<GgufValue> values;
  values.reserve(items.size());
  for (int32_t i : items) values.push_back(I32(i));
  return Array(GgufValueType::kInt32, std::move(values));
}

absl::StatusOr<uint64_t> GgufValue::AsUint() const {
  if (IsUnsignedType(type_)) return bits_;
  if (IsSignedType(type_)) {
    const int64_t v = static_cast<int64_t>(bits_);
    if (v < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("expected a non-negative integer, got ",
                       GgufValueTypeName(type_), " ", v));
    }
    return static_cast<uint64_t>(v);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "expected an unsigned integer, got ", GgufValueTypeName(type_)));
}

absl::StatusOr<int64_t> GgufValue::AsInt() const {
  if (IsSignedType(type_)) return static_cast<int64_t>(bits_);
  if (IsUnsignedType(type_)) {
    if (bits_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "uint64 value ", bits_, " does not fit a signed 64-bit integer"));
    }
    return static_cast<int64_t>(bits_);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("expected an integer, got ", GgufValueTypeName(type_)));
}

absl::StatusOr<double> GgufValue::AsFloat() const {
  if (type_ == GgufValueType::kFloat32) {
    const uint32_t bits = static_cast<uint32_t>(bits_);
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
  if (type_ == GgufValueType::kFloat64) {
    double d;
    std::memcpy(&d, &bits_, sizeof(d));
    return d;
  }
  if (IsSignedType(type_))
    return static_cast<double>(static_cast<int64_t>(bits_));
  if (IsUnsignedType(type_)) return static_cast<double>(bits_);
  return absl::InvalidArgumentError(
      absl::StrCat("expected a number, got ", GgufValueTypeName(type_)));
}

absl::StatusOr<bool> GgufValue::AsBool() const {
  if (type_ == GgufValueType::kBool) return bits_ != 0;
  return absl::InvalidArgumentError(
      absl::StrCat("expected a bool, got ", GgufValueTypeName(type_)));
}

absl::StatusOr<std::string> GgufValue::AsString() const {
  if (type_ == GgufValueType::kString) return string_;
  return absl::InvalidArgumentError(
      absl::StrCat("expected a string, got ", GgufValueTypeName(type_)));
}

std::string GgufValue::DebugString(size_t max_items) const {
  switch (type_) {
    case GgufValueType::kUint8:
    case GgufValueType::kUint16:
    case GgufValueType::kUint32:
    case GgufValueType::kUint64:
      return absl::StrCat(bits_);
    case GgufValueType::kInt8:
    case GgufValueType::kInt16:
    case GgufValueType::kInt32:
    case GgufValueType::kInt64:
      return absl::StrCat(static_cast<int64_t>(bits_));
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64:
      return absl::StrFormat("%g", *AsFloat());
    case GgufValueType::kBool:
      return bits_ != 0 ? "true" : "false";
    case GgufValueType::kString: {
      constexpr size_t kMaxBytes = 120;
      if (string_.size() <= kMaxBytes) {
        return absl::StrCat("\"", absl::Utf8SafeCEscape(string_), "\"");
      }
      size_t cut = kMaxBytes;  // Do not split a UTF-8 sequence.
      while (cut > 0 && (static_cast<uint8_t>(string_[cut]) & 0xC0) == 0x80) {
        --cut;
      }
      return absl::StrCat("\"", absl::Utf8SafeCEscape(string_.substr(0, cut)),
                          "...\" (", string_.size(), " bytes)");
    }
    case GgufValueType::kArray:
      break;
  }
  std::string out = "[";
  const size_t shown = std::min(max_items, items_.size());
  for (size_t i = 0; i < shown; ++i) {
    if (i > 0) out += ", ";
    out += items_[i].DebugString(max_items);
  }
  if (shown < items_.size()) {
    absl::StrAppend(&out, shown > 0 ? ", " : "", "... (", items_.size(), " x ",
                    GgufValueTypeName(array_type_), ")");
  }
  out += "]";
  return out;
}

bool GgufValue::operator==(const GgufValue& other) const {
  if (type_ != other.type_) return false;
  switch (type_) {
    case GgufValueType::kString:
      return string_ == other.string_;
    case GgufValueType::kArray:
      return array_type_ == other.array_type_ && items_ == other.items_;
    default:
      return bits_ == other.bits_;
  }
}

// ---- Tensor shapes ----

int64_t GgufTensorInfo::num_elements() const {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;  // Validated by the reader and writer.
  return static_cast<int64_t>(n);
}

absl::StatusOr<uint64_t> GgufTensorBytes(GgmlType type,
                                         absl::Span<const uint64_t> dims) {
  if (dims.empty() || dims.size() > static_cast<size_t>(kGgufMaxDims)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n_dims ", dims.size(), " is not in [1, ", kGgufMaxDims, "]"));
  }
  // The element count must fit int64, counting zero dims as 1 so that no
  // partial product (e.g. the row count) can overflow either.
  constexpr uint64_t kMax = std::numeric_limits<int64_t>::max();
  uint64_t product = 1;
  for (uint64_t d : dims) {
    const uint64_t f = d == 0 ? 1 : d;
    if (f > kMax / product) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dims ", DimsString(dims), " overflow a 64-bit element count"));
    }
    product *= f;
  }
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  if (dims[0] % static_cast<uint64_t>(traits.block_size) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dims[0] = ", dims[0], " is not a multiple of the ",
                     traits.name, " block size ", traits.block_size));
  }
  ASSIGN_OR_RETURN(uint64_t bytes,
                   GgmlRowBytes(type, static_cast<int64_t>(dims[0])));
  for (size_t i = 1; i < dims.size(); ++i) {
    if (dims[i] != 0 &&
        bytes > std::numeric_limits<uint64_t>::max() / dims[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "byte size of dims ", DimsString(dims), " overflows 64 bits"));
    }
    bytes *= dims[i];
  }
  return bytes;
}

// ---- GgufReader ----

GgufReader::~GgufReader() = default;

absl::StatusOr<std::unique_ptr<GgufReader>> GgufReader::Open(
    const std::string& path) {
  std::unique_ptr<GgufReader> reader(new GgufReader());
  reader->path_ = path;
  ASSIGN_OR_RETURN(reader->file_, MappedFile::Open(path));
  RETURN_IF_ERROR(
      Prefixed(absl::StrCat("GGUF file '", path, "': "), reader->Parse()));
  return reader;
}

uint64_t GgufReader::file_size() const { return file_->size(); }

absl::Status GgufReader::Parse() {
  Cursor c(file_->data(), file_->size());

  uint8_t magic[4];
  RETURN_IF_ERROR(c.ReadBytes(magic, 4, "magic"));
  if (std::memcmp(magic, kMagic, 4) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad magic \"",
        absl::CHexEscape(absl::string_view(reinterpret_cast<char*>(magic), 4)),
        "\", expected \"GGUF\": not a GGUF file"));
  }
  RETURN_IF_ERROR(c.Read(&version_, "version"));
  if (version_ != 2 && version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(version_);
    if (swapped == 2 || swapped == 3) {
      return absl::InvalidArgumentError(absl::StrCat(
          "big-endian GGUF (version ", swapped, ") is not supported"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported GGUF version ", version_, " (supported: 2 and 3)"));
  }
  uint64_t tensor_count = 0;
  uint64_t kv_count = 0;
  RETURN_IF_ERROR(c.Read(&tensor_count, "tensor_count"));
  RETURN_IF_ERROR(c.Read(&kv_count, "metadata_kv_count"));
  const uint64_t rest = c.remaining();
  if (kv_count > rest / kMinKvBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata_kv_count ", kv_count, " cannot fit in the ",
                     rest, " bytes after the header (each pair needs at least ",
                     kMinKvBytes, ")"));
  }
  if (tensor_count > rest / kMinTensorInfoBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor_count ", tensor_count, " cannot fit in the ", rest,
        " bytes after the header (each tensor info needs at least ",
        kMinTensorInfoBytes, ")"));
  }
  // Both products are at most `rest`, so the sum cannot overflow.
  if (kv_count * kMinKvBytes + tensor_count * kMinTensorInfoBytes > rest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metadata_kv_count ", kv_count, " and tensor_count ", tensor_count,
        " cannot fit in the ", rest, " bytes after the header"));
  }

  // Metadata. Counts are bounded by the file size, but vectors grow as
  // entries are actually parsed rather than being reserved up front.
  uint64_t budget = kGgufMaxMetadataValues;
  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key;
    RETURN_IF_ERROR(
        c.ReadString(&key, absl::StrCat("the key of metadata pair ", i)));
    RETURN_IF_ERROR(
        ValidateName(absl::StrCat("key of metadata pair ", i), key));
    if (metadata_index_.contains(key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate metadata key ", QuoteForMessage(key)));
    }
    const std::string context =
        absl::StrCat("metadata key ", QuoteForMessage(key), ": ");
    uint32_t type = 0;
    RETURN_IF_ERROR(Prefixed(context, c.Read(&type, "value type")));
    if (!IsValidType(type)) {
      return absl::InvalidArgumentError(
          absl::StrCat(context, "unknown value type ", type));
    }
    GgufValue value;
    RETURN_IF_ERROR(Prefixed(
        context,
        ReadValue(c, static_cast<GgufValueType>(type), 0, &budget, &value)));
    metadata_index_.emplace(key, metadata_.size());
    metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* a = Find(kGgufAlignmentKey); a != nullptr) {
    if (a->type() != GgufValueType::kUint32) {
      return absl::InvalidArgumentError(
          absl::StrCat(kGgufAlignmentKey, " must be uint32, got ",
                       GgufValueTypeName(a->type())));
    }
    const uint64_t alignment = *a->AsUint();
    if (!IsPowerOfTwo(alignment)) {
      return absl::InvalidArgumentError(absl::StrCat(
          kGgufAlignmentKey, " ", alignment, " is not a nonzero power of two"));
    }
    alignment_ = static_cast<uint32_t>(alignment);
  }

  // Tensor infos.
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo info;
    RETURN_IF_ERROR(
        c.ReadString(&info.name, absl::StrCat("the name of tensor ", i)));
    RETURN_IF_ERROR(
        ValidateName(absl::StrCat("name of tensor ", i), info.name));
    if (tensor_index_.contains(info.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate tensor name ", QuoteForMessage(info.name)));
    }
    const std::string context =
        absl::StrCat("tensor ", QuoteForMessage(info.name), ": ");
    uint32_t n_dims = 0;
    RETURN_IF_ERROR(Prefixed(context, c.Read(&n_dims, "n_dims")));
    if (n_dims == 0 || n_dims > static_cast<uint32_t>(kGgufMaxDims)) {
      return absl::InvalidArgumentError(absl::StrCat(
          context, "n_dims ", n_dims, " is not in [1, ", kGgufMaxDims, "]"));
    }
    info.dims.resize(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      RETURN_IF_ERROR(Prefixed(
          context, c.Read(&info.dims[d], absl::StrCat("dims[", d, "]"))));
    }
    uint32_t type = 0;
    RETURN_IF_ERROR(Prefixed(context, c.Read(&type, "ggml type")));
    const GgmlTypeTraits* traits = FindGgmlType(type);
    if (traits == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(context, "unknown ggml type ", type));
    }
    info.type = traits->type;
    RETURN_IF_ERROR(Prefixed(context, c.Read(&info.offset, "data offset")));
    absl::StatusOr<uint64_t> nbytes = GgufTensorBytes(info.type, info.dims);
    if (!nbytes.ok()) return Prefixed(context, nbytes.status());
    info.nbytes = *nbytes;
    if (info.offset % alignment_ != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(context, "data offset ", info.offset,
                       " is not a multiple of the alignment ", alignment_));
    }
    tensor_index_.emplace(info.name, tensors_.size());
    tensors_.push_back(std::move(info));
  }

  data_offset_ = AlignUp(c.pos(), alignment_);
  const uint64_t size = file_->size();
  const uint64_t data_size = data_offset_ <= size ? size - data_offset_ : 0;
  for (const GgufTensorInfo& info : tensors_) {
    if (info.offset > data_size || info.nbytes > data_size - info.offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", QuoteForMessage(info.name), ": data of ", info.nbytes,
          " bytes at data offset ", info.offset,
          " extends past the end of the file (the data section at file offset ",
          data_offset_, " holds ", data_size, " bytes)"));
    }
  }

  // No two tensors may share bytes.
  std::vector<size_t> order(tensors_.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [this](size_t a, size_t b) {
    return tensors_[a].offset < tensors_[b].offset;
  });
  const GgufTensorInfo* furthest = nullptr;  // Largest end so far.
  for (size_t index : order) {
    const GgufTensorInfo& info = tensors_[index];
    if (info.nbytes == 0) continue;
    if (furthest != nullptr &&
        info.offset < furthest->offset + furthest->nbytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensors ", QuoteForMessage(furthest->name), " (data offset ",
          furthest->offset, ", ", furthest->nbytes, " bytes) and ",
          QuoteForMessage(info.name), " (data offset ", info.offset, ", ",
          info.nbytes, " bytes) overlap"));
    }
    if (furthest == nullptr ||
        info.offset + info.nbytes > furthest->offset + furthest->nbytes) {
      furthest = &info;
    }
  }
  return absl::OkStatus();
}

const GgufValue* GgufReader::Find(absl::string_view key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufTensorInfo* GgufReader::FindTensor(absl::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const uint8_t* GgufReader::TensorData(const GgufTensorInfo& info) const {
  return file_->data() + data_offset_ + info.offset;
}

void GgufReader::ReleaseTensorData(const GgufTensorInfo& info) const {
  file_->Release(static_cast<size_t>(data_offset_ + info.offset),
                 static_cast<size_t>(info.nbytes));
}

// ---- GgufWriter ----

GgufWriter::GgufWriter(std::string path, uint32_t alignment,
                       std::unique_ptr<AtomicFileWriter> file)
    : path_(std::move(path)), alignment_(alignment), file_(std::move(file)) {}

GgufWriter::~GgufWriter() = default;

absl::StatusOr<std::unique_ptr<GgufWriter>> GgufWriter::Create(
    const std::string& path, uint32_t alignment) {
  if (!IsPowerOfTwo(alignment)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GGUF alignment ", alignment, " is not a nonzero power of two"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> file,
                   AtomicFileWriter::Create(path));
  return std::unique_ptr<GgufWriter>(
      new GgufWriter(path, alignment, std::move(file)));
}

void GgufWriter::Set(std::string key, GgufValue value) {
  if (key == kGgufAlignmentKey) return;  // Always written from alignment_.
  if (header_written_ || finished_) {
    set_after_header_ = true;
    return;
  }
  auto it = metadata_index_.find(key);
  if (it != metadata_index_.end()) {
    metadata_[it->second].second = std::move(value);
    return;
  }
  metadata_index_.emplace(key, metadata_.size());
  metadata_.emplace_back(std::move(key), std::move(value));
}

absl::Status GgufWriter::AddTensor(std::string name, std::vector<uint64_t> dims,
                                   GgmlType type) {
  if (header_written_ || finished_) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot add tensor ", QuoteForMessage(name),
                     " after tensor data writing has started"));
  }
  RETURN_IF_ERROR(ValidateName("tensor name", name));
  if (name.size() > kMaxTensorNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor name ", QuoteForMessage(name), " is ", name.size(),
                     " bytes; llama.cpp allows at most ", kMaxTensorNameBytes));
  }
  if (tensor_index_.contains(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("duplicate tensor name ", QuoteForMessage(name)));
  }
  absl::StatusOr<uint64_t> bytes = GgufTensorBytes(type, dims);
  if (!bytes.ok()) {
    return Prefixed(absl::StrCat("tensor ", QuoteForMessage(name), ": "),
                    bytes.status());
  }
  const uint64_t nbytes = *bytes;
  const uint64_t padded = AlignUp(nbytes, alignment_);
  if (padded < nbytes ||
      next_offset_ > std::numeric_limits<uint64_t>::max() - padded) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", QuoteForMessage(name),
                     ": the data section would exceed 64 bits"));
  }
  GgufTensorInfo info;
  info.name = std::move(name);
  info.dims = std::move(dims);
  info.type = type;
  info.offset = next_offset_;
  info.nbytes = nbytes;
  next_offset_ += padded;
  tensor_index_.emplace(info.name, tensors_.size());
  tensors_.push_back(std::move(info));
  return absl::OkStatus();
}

absl::Status GgufWriter::Fail(absl::Status status) {
  failed_ = status;
  return status;
}

void GgufWriter::SkipCompleteTensors() {
  while (current_ < tensors_.size() &&
         current_written_ == tensors_[current_].nbytes) {
    ++current_;
    current_written_ = 0;
  }
}

absl::Status GgufWriter::WriteHeader() {
  if (set_after_header_) {
    return absl::FailedPreconditionError(
        "metadata was Set after the GGUF header was written");
  }
  // Validate every key and value before any byte is written.
  uint64_t budget = kGgufMaxMetadataValues;
  for (const auto& [key, value] : metadata_) {
    RETURN_IF_ERROR(ValidateName("metadata key", key));
    RETURN_IF_ERROR(
        Prefixed(absl::StrCat("metadata key ", QuoteForMessage(key), ": "),
                 ValidateValue(value, 0, &budget)));
  }
  std::string header;
  header.append(reinterpret_cast<const char*>(kMagic), 4);
  Put<uint32_t>(&header, kGgufVersion);
  Put<uint64_t>(&header, tensors_.size());
  Put<uint64_t>(&header, metadata_.size() + 1);
  PutString(&header, kGgufAlignmentKey);
  Put<uint32_t>(&header, static_cast<uint32_t>(GgufValueType::kUint32));
  Put<uint32_t>(&header, alignment_);
  for (const auto& [key, value] : metadata_) {
    PutString(&header, key);
    Put<uint32_t>(&header, static_cast<uint32_t>(value.type()));
    PutValue(&header, value);
  }
  for (const GgufTensorInfo& info : tensors_) {
    PutString(&header, info.name);
    Put<uint32_t>(&header, static_cast<uint32_t>(info.dims.size()));
    for (uint64_t d : info.dims) Put<uint64_t>(&header, d);
    Put<uint32_t>(&header, static_cast<uint32_t>(info.type));
    Put<uint64_t>(&header, info.offset);
  }
  header.resize(AlignUp(header.size(), alignment_), '\0');
  header_written_ = true;
  absl::Status status = file_->Write(header);
  if (!status.ok()) return Fail(status);
  return absl::OkStatus();
}

absl::Status GgufWriter::WriteTensorData(absl::string_view name,
                                         const void* data, size_t size) {
  if (finished_) {
    return absl::FailedPreconditionError("GGUF writer already finished");
  }
  RETURN_IF_ERROR(failed_);
  if (!header_written_) RETURN_IF_ERROR(WriteHeader());
  SkipCompleteTensors();
  if (current_ == tensors_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write data for ", QuoteForMessage(name),
                     ": every declared tensor is already complete"));
  }
  const GgufTensorInfo& info = tensors_[current_];
  if (name != info.name) {
    if (!tensor_index_.contains(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", QuoteForMessage(name), " was not declared"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "tensor data out of order: got data for ", QuoteForMessage(name),
        ", expected ", QuoteForMessage(info.name), " (tensor ", current_,
        " of ", tensors_.size(), ")"));
  }
  const uint64_t left = info.nbytes - current_written_;
  if (size > left) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", QuoteForMessage(info.name), ": writing ", size,
                     " bytes exceeds its size of ", info.nbytes, " bytes (",
                     current_written_, " already written)"));
  }
  if (size == 0) return absl::OkStatus();
  absl::Status status = file_->Write(data, size);
  if (!status.ok()) return Fail(status);
  current_written_ += size;
  if (current_written_ == info.nbytes) {
    status = file_->WriteZeros(AlignUp(info.nbytes, alignment_) - info.nbytes);
    if (!status.ok()) return Fail(status);
    ++current_;
    current_written_ = 0;
  }
  return absl::OkStatus();
}

absl::Status GgufWriter::Finish() {
  if (finished_) {
    return absl::FailedPreconditionError("GGUF writer already finished");
  }
  finished_ = true;
  absl::Status status = [this]() -> absl::Status {
    RETURN_IF_ERROR(failed_);
    if (set_after_header_) {
      return absl::FailedPreconditionError(
          "metadata was Set after the GGUF header was written");
    }
    if (!header_written_) RETURN_IF_ERROR(WriteHeader());
    SkipCompleteTensors();
    if (current_ < tensors_.size()) {
      const GgufTensorInfo& info = tensors_[current_];
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor ", QuoteForMessage(info.name),
          " is incomplete: ", current_written_, " of ", info.nbytes,
          " bytes written (", tensors_.size() - current_, " of ",
          tensors_.size(), " tensors unfinished)"));
    }
    return file_->Commit();
  }();
  if (!status.ok()) {
    file_.reset();  // Removes the temporary file.
    return Prefixed(absl::StrCat("GGUF file '", path_, "': "), status);
  }
  return absl::OkStatus();
}

}  // namespace quant
