// Reading and writing Hugging Face safetensors files.
//
// Layout: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON (padded
// with trailing spaces), then the data area. The JSON object maps each tensor
// name to {"dtype", "shape", "data_offsets": [begin, end]} with offsets
// relative to the data area; an optional "__metadata__" maps strings to
// strings.
//
// Readers map the file and hand out views into the mapping (no copies), so a
// 140 GB checkpoint costs address space, not memory; Release() drops a
// tensor's pages once it has been consumed.
//
// Error codes on Open: DataLoss when the bytes are cut short (file shorter
// than 8 bytes, header or data_offsets past the end of the file);
// InvalidArgument for everything else that is malformed; NotFound for missing
// files. Every message names the file and, where there is one, the tensor.
#ifndef FORMAT_SAFETENSORS_H_
#define FORMAT_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/file.h"

namespace quant {

enum class SafetensorsDType {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kF16,
  kBF16,
  kU32,
  kI32,
  kF32,
  kU64,
  kI64,
  kF64,
  kF8E4M3,
  kF8E5M2,
};

// "BF16" -> kBF16 etc. (the exact spelling used in safetensors headers).
absl::StatusOr<SafetensorsDType> ParseSafetensorsDType(absl::string_view name);
// kBF16 -> "BF16".
absl::string_view SafetensorsDTypeName(SafetensorsDType dtype);
// Bytes per element (BOOL is one byte).
size_t SafetensorsDTypeSize(SafetensorsDType dtype);

// Largest header accepted (and written), as in the reference implementation.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100u * 1000 * 1000;

// Copies `size` bytes out of a file's mapping. A large copy (64 MiB or
// more) runs on every core: its time is the source's page faults, one core
// spends seconds on a 70B block's 8.6 GB of activations.
void CopyFromMapping(void* dst, const void* src, size_t size);

// A tensor inside a mapped file: no copy. Valid while its file is open.
struct TensorView {
  std::string name;
  SafetensorsDType dtype = SafetensorsDType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  // Product of the dimensions (1 for a scalar, shape []).
  int64_t num_elements() const;

  // Converts elements [begin, begin + count) to float. Only BF16, F16, F32
  // and F64 convert; other dtypes give InvalidArgument naming the tensor and
  // its dtype. A range outside the tensor gives OutOfRange.
  absl::Status ToFloat(int64_t begin, int64_t count, float* out) const;
  absl::StatusOr<std::vector<float>> ToFloatVector() const;
  // The stored elements, bit for bit, as T: the caller has checked that T
  // is the C++ type of `dtype` (int32_t for I32, uint16_t for F16, ...).
  template <typename T>
  std::vector<T> CopyElements() const {
    std::vector<T> out(nbytes / sizeof(T));
    if (!out.empty()) CopyFromMapping(out.data(), data, out.size() * sizeof(T));
    return out;
  }
};

// One mapped .safetensors file, fully validated on Open.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // In data-offset order.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // nullptr if absent.
  const TensorView* Find(absl::string_view name) const;
  // The "__metadata__" entry (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  const std::string& path() const { return path_; }
  // Bytes of the JSON header (without the 8-byte length prefix).
  uint64_t header_size() const { return header_size_; }
  // True when `t` points into this file's mapping.
  bool Contains(const TensorView& t) const;

  // Drops the pages of `t` from the resident set (madvise DONTNEED); a later
  // read faults them in again from the file. `t` may be any byte range of a
  // tensor (a view with narrowed data/nbytes). No-op for foreign views.
  void Release(const TensorView& t) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  std::unique_ptr<MappedFile> mapped_;
  uint64_t header_size_ = 0;
  std::vector<TensorView> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;  // name -> tensors_ index
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face model directory (sharded with an index, or one file), or a
// single .safetensors file.
class SafetensorsCheckpoint {
 public:
  // `path` is a .safetensors file, or a directory holding
  // model.safetensors.index.json (sharded), or model.safetensors, or exactly
  // one *.safetensors file. With an index, every listed shard must exist and
  // hold exactly the tensors the index assigns to it (a tensor in a shard
  // that the index does not list there is an error, so no name can come from
  // two shards).
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(
      const std::string& path);

  SafetensorsCheckpoint(const SafetensorsCheckpoint&) = delete;
  SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint&) = delete;

  // Sorted.
  std::vector<std::string> TensorNames() const;
  bool Has(absl::string_view name) const;
  // NotFound names the tensor.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;
  absl::StatusOr<std::vector<int64_t>> Shape(absl::string_view name) const;
  // Forwards to the file that owns `t`.
  void Release(const TensorView& t) const;
  // Hands `fn` the bytes of `t` a window of at most `window` bytes at a
  // time, in order, dropping each window's pages once `fn` returned: a
  // pass over a tensor holds a window of it, not the tensor. Stops at the
  // first error `fn` returns.
  absl::Status ForEachWindow(
      const TensorView& t, size_t window,
      const std::function<absl::Status(const uint8_t* data, size_t size)>& fn)
      const;

  size_t num_files() const { return files_.size(); }
  // The path given to Open().
  const std::string& path() const { return path_; }
  // Files in index order (sorted by file name for an index).
  const SafetensorsFile& file(size_t i) const { return *files_[i]; }
  // The file holding `name`, or nullptr.
  const SafetensorsFile* FileOf(absl::string_view name) const;
  // The index's "metadata" object dumped as JSON ("" without an index).
  const std::string& index_metadata_json() const {
    return index_metadata_json_;
  }

 private:
  SafetensorsCheckpoint() = default;
  absl::Status AddFile(std::unique_ptr<SafetensorsFile> file);

  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  // name -> (file index, tensor index in that file).
  absl::flat_hash_map<std::string, std::pair<size_t, size_t>> index_;
  std::string index_metadata_json_;
};

// A tensor as SafetensorsWriter::AddTensor declares it.
struct SafetensorsTensorDecl {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
};
// The bytes SafetensorsWriter writes before the data of `tensors` (declared
// in this order) with `metadata`: the header's length and the header. With
// the data in memory, a file's digest is known without writing it.
// InvalidArgument for a tensor AddTensor would refuse.
absl::StatusOr<std::string> SafetensorsFileHeader(
    const std::vector<SafetensorsTensorDecl>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// Streaming writer. Declare every tensor first (so the header is known), then
// write each tensor's bytes in declaration order (in as many pieces as
// wanted), then Finish(), which commits through AtomicFileWriter (temp file,
// fsync, rename). Nothing ever appears at `path` unless Finish() succeeds.
// Tensors are laid out in declaration order; the header is padded with
// spaces so the data area starts at a multiple of 8.
class SafetensorsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, Durability durability = Durability::kDurable);

  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Key and value must be valid UTF-8 (checked when the header is written).
  void SetMetadata(std::string key, std::string value);
  // Errors: empty, non-UTF-8, "__metadata__" or duplicate names, negative
  // dimensions, sizes overflowing int64, or any call after data was written.
  absl::Status AddTensor(std::string name, SafetensorsDType dtype,
                         std::vector<int64_t> shape);
  // `name` must be the first tensor not yet complete (zero-byte tensors
  // complete by themselves); may be called repeatedly for one tensor. More
  // bytes than the tensor holds is InvalidArgument; a tensor out of order is
  // FailedPrecondition. The first call writes the header.
  absl::Status WriteTensorData(absl::string_view name, const void* data,
                               size_t size);
  // FailedPrecondition naming the first incomplete tensor if any is short;
  // on any failure the temporary file is removed.
  absl::Status Finish();

  // Before the first WriteTensorData: the file's digest is computed as it
  // is written (AtomicFileWriter::HashContents); digest() is the raw
  // digest once finished.
  void HashContents() { out_->HashContents(); }
  const std::string& digest() const { return digest_; }

  const std::string& path() const { return path_; }

 private:
  struct Entry {
    std::string name;
    SafetensorsDType dtype;
    std::vector<int64_t> shape;
    uint64_t nbytes = 0;
    uint64_t begin = 0;
    uint64_t written = 0;
  };

  SafetensorsWriter(std::string path, std::unique_ptr<AtomicFileWriter> out)
      : path_(std::move(path)), out_(std::move(out)) {}
  absl::Status WriteHeader();
  void SkipCompleteTensors();
  absl::Status Fail(absl::Status status);

  std::string path_;
  std::unique_ptr<AtomicFileWriter> out_;
  std::map<std::string, std::string> metadata_;
  std::vector<Entry> entries_;
  absl::flat_hash_map<std::string, size_t> by_name_;
  uint64_t data_size_ = 0;
  bool header_written_ = false;
  bool done_ = false;  // Finished, or failed on I/O: no further calls.
  std::string digest_;
  size_t current_ = 0;  // First incomplete tensor once the header is out.
};

// Writes <dir>/model.safetensors.index.json, {"metadata": {"total_size": N},
// "weight_map": {tensor: file}}, atomically. File names must be plain names
// (no '/', not "." or "..").
absl::Status WriteSafetensorsIndex(
    const std::string& dir,
    const std::map<std::string, std::string>& weight_map, uint64_t total_size);

}  // namespace quant

#endif  // FORMAT_SAFETENSORS_H_
