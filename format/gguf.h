// GGUF v3 (llama.cpp's model file format): a validating, memory-mapped reader
// and a streaming, atomic writer.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor_count,
// u64 metadata_kv_count, the metadata key/value pairs, the tensor infos
// (name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset relative to
// the data section), zero padding to `general.alignment` (default 32), then
// the data section, in which every tensor starts at a multiple of the
// alignment. Strings are a u64 byte length followed by the bytes (no NUL).
#ifndef FORMAT_GGUF_H_
#define FORMAT_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "format/ggml_type.h"

namespace quant {

class AtomicFileWriter;
class MappedFile;

inline constexpr uint32_t kGgufVersion = 3;
inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr char kGgufAlignmentKey[] = "general.alignment";
inline constexpr int kGgufMaxDims = 4;
// Arrays may hold arrays; at most this many array levels are read or written.
inline constexpr int kGgufMaxArrayDepth = 4;
// A bound on the values (scalars, strings, arrays and their elements) that the
// reader materializes from a file's metadata. Each value costs ~72 bytes in
// memory however few bytes it takes in the file, so this caps what a crafted
// file can make the reader allocate (~300 MB). Real vocabularies stay far
// below it: Gemma's 256k tokens with scores and types are ~770k values.
inline constexpr uint64_t kGgufMaxMetadataValues = uint64_t{1} << 22;

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8,
  kUint16,
  kInt16,
  kUint32,
  kInt32,
  kFloat32,
  kBool,
  kString,
  kArray,
  kUint64,
  kInt64,
  kFloat64,
};

// "uint8", "int32", "float32", "bool", "string", "array", ... ("unknown" for
// ids outside the enum).
absl::string_view GgufValueTypeName(GgufValueType type);

// One metadata value. Arrays hold elements of one declared element type
// (arrays of arrays may differ in their inner element types).
class GgufValue {
 public:
  // An empty uint8 array; exists so containers can hold values.
  GgufValue() = default;

  static GgufValue U8(uint8_t v);
  static GgufValue I8(int8_t v);
  static GgufValue U16(uint16_t v);
  static GgufValue I16(int16_t v);
  static GgufValue U32(uint32_t v);
  static GgufValue I32(int32_t v);
  static GgufValue F32(float v);
  static GgufValue Bool(bool v);
  static GgufValue String(std::string v);
  static GgufValue U64(uint64_t v);
  static GgufValue I64(int64_t v);
  static GgufValue F64(double v);
  // Every item should have type `element_type`; the writer rejects the value
  // (naming the key and the item) when one does not.
  static GgufValue Array(GgufValueType element_type,
                         std::vector<GgufValue> items);
  static GgufValue StringArray(std::vector<std::string> items);
  static GgufValue F32Array(std::vector<float> items);
  static GgufValue I32Array(std::vector<int32_t> items);

  GgufValueType type() const { return type_; }
  // The element type of an array (meaningless for scalars).
  GgufValueType array_type() const { return array_type_; }
  bool is_array() const { return type_ == GgufValueType::kArray; }

  // Any integer type whose value is non-negative.
  absl::StatusOr<uint64_t> AsUint() const;
  // Any integer type whose value fits int64.
  absl::StatusOr<int64_t> AsInt() const;
  // float32 or float64 (integers are converted too).
  absl::StatusOr<double> AsFloat() const;
  absl::StatusOr<bool> AsBool() const;
  absl::StatusOr<std::string> AsString() const;
  // The items of an array; empty for a scalar.
  const std::vector<GgufValue>& array() const { return items_; }

  // `42`, `1.5`, `true`, `"text"` (C-escaped, long strings shortened),
  // `[1, 2, 3, ... (32000 x int32)]` for arrays longer than `max_items`.
  std::string DebugString(size_t max_items = 8) const;

  // Same type, same value (floats compare by bit pattern, so NaN == NaN after
  // a round trip), same items.
  bool operator==(const GgufValue& other) const;
  bool operator!=(const GgufValue& other) const { return !(*this == other); }

 private:
  GgufValue(GgufValueType type, uint64_t bits) : type_(type), bits_(bits) {}

  GgufValueType type_ = GgufValueType::kArray;
  GgufValueType array_type_ = GgufValueType::kUint8;
  // Integers (sign-extended to 64 bits for signed types), bools (0 or 1),
  // float32 bits in the low 32 bits, float64 bits.
  uint64_t bits_ = 0;
  std::string string_;
  std::vector<GgufValue> items_;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // dims[0] varies fastest (the row length).
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;  // Relative to the start of the data section.
  uint64_t nbytes = 0;  // Computed from dims and type.

  int64_t num_elements() const;
};

// Validates a tensor shape (1 to 4 dims, element count within int64, dims[0]
// a multiple of the type's block size) and returns its byte size:
// GgmlRowBytes(type, dims[0]) * dims[1] * ... . Errors do not name a tensor.
absl::StatusOr<uint64_t> GgufTensorBytes(GgmlType type,
                                         absl::Span<const uint64_t> dims);

// Reads a GGUF v2 or v3 file through a memory map. Open checks every count,
// length, type, offset and size against the file before anything is exposed;
// a malformed file yields InvalidArgument naming the key or tensor at fault.
class GgufReader {
 public:
  static absl::StatusOr<std::unique_ptr<GgufReader>> Open(
      const std::string& path);
  ~GgufReader();
  GgufReader(const GgufReader&) = delete;
  GgufReader& operator=(const GgufReader&) = delete;

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  // In file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const {
    return metadata_;
  }
  // nullptr when absent.
  const GgufValue* Find(absl::string_view key) const;
  // In file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufTensorInfo* FindTensor(absl::string_view name) const;
  // The tensor's `nbytes` bytes inside the mapping (valid while the reader
  // lives). `info` must be one of tensors().
  const uint8_t* TensorData(const GgufTensorInfo& info) const;
  // Absolute file offset of the data section.
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const;
  const std::string& path() const { return path_; }
  // Drops the pages of a tensor already consumed from the resident set.
  void ReleaseTensorData(const GgufTensorInfo& info) const;

 private:
  GgufReader() = default;
  absl::Status Parse();

  std::string path_;
  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  absl::flat_hash_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
};

// Streaming writer. Set metadata and declare every tensor first, then write
// the tensors' data in declaration order (each tensor in one or more pieces;
// the writer inserts the alignment padding), then Finish. Bytes go to a
// temporary file that Finish fsyncs and renames to `path`; on any failure, or
// if the writer is destroyed before Finish succeeds, nothing appears at
// `path`.
class GgufWriter {
 public:
  // Fails when `alignment` is not a nonzero power of two or the temporary
  // file cannot be created.
  static absl::StatusOr<std::unique_ptr<GgufWriter>> Create(
      const std::string& path, uint32_t alignment = kGgufDefaultAlignment);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Adds or replaces `key` (a replaced key keeps its first position). Keys
  // and values are validated when the header is written. The writer always
  // writes "general.alignment" = uint32 alignment as the first pair; a value
  // Set for that key is ignored. Setting after the header was written has no
  // effect on the file and makes Finish fail.
  void Set(std::string key, GgufValue value);

  // Declares the next tensor. Fails on a bad shape (see GgufTensorBytes), an
  // empty, non-UTF-8 or duplicate name, or once data writing has started.
  absl::Status AddTensor(std::string name, std::vector<uint64_t> dims,
                         GgmlType type);

  // Appends `size` bytes of the current tensor (the first declared tensor
  // whose data is incomplete). Writes the header on the first call. Fails if
  // `name` is not the current tensor or `size` exceeds its remaining bytes.
  absl::Status WriteTensorData(absl::string_view name, const void* data,
                               size_t size);

  // Writes the header if no data was written, checks every tensor is
  // complete, then commits the file. Any failure discards the file.
  absl::Status Finish();

  // The declared tensors, with offsets and sizes assigned.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  uint32_t alignment() const { return alignment_; }

 private:
  GgufWriter(std::string path, uint32_t alignment,
             std::unique_ptr<AtomicFileWriter> file);
  absl::Status WriteHeader();
  absl::Status Fail(absl::Status status);
  void SkipCompleteTensors();

  std::string path_;
  uint32_t alignment_;
  std::unique_ptr<AtomicFileWriter> file_;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  absl::flat_hash_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
  uint64_t next_offset_ = 0;  // Data-section offset of the next tensor.
  bool header_written_ = false;
  bool set_after_header_ = false;
  bool finished_ = false;
  absl::Status failed_;  // Sticky once an I/O error happened.
  size_t current_ = 0;   // Index of the tensor being written.
  uint64_t current_written_ = 0;
};

}  // namespace quant

#endif  // FORMAT_GGUF_H_
