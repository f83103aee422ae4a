// File primitives shared by every reader and writer: a read-only memory map
// and a writer that only ever exposes complete files (temp + fsync + rename).
#ifndef COMMON_FILE_H_
#define COMMON_FILE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/checksum.h"

namespace quant {

// A read-only, private mapping of a whole file. Pages are loaded lazily, so
// mapping a 40 GB shard costs address space, not memory.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(
      const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Tells the kernel the bytes [offset, offset + length) are no longer needed
  // so they leave this process's resident set (streaming conversions call
  // this after each tensor to keep memory at about one tensor).
  void Release(size_t offset, size_t length) const;

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

// Whether a file must outlive a crash of its machine (fsynced), or is
// scratch that nothing reads after a restart (a worker's task outputs: its
// scratch is emptied when it starts, and what it committed deferred is made
// again if lost). Fsyncing a 70B block's 8.6 GB of activations is seconds
// on the critical path, for nothing.
enum class Durability { kDurable, kScratch };

// Writes `final_path` atomically: bytes go to "<final_path>.tmp.XXXXXX", and
// Commit() fsyncs (kDurable), renames over `final_path` and fsyncs the
// directory (kDurable). Destroying an uncommitted writer removes the
// temporary file, so a failed or interrupted write never leaves a partial
// output under the final name.
class AtomicFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Create(
      const std::string& final_path,
      Durability durability = Durability::kDurable);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  absl::Status Write(const void* data, size_t size);
  absl::Status Write(absl::string_view bytes) {
    return Write(bytes.data(), bytes.size());
  }
  absl::Status WriteZeros(size_t count);
  // Bytes written so far.
  uint64_t offset() const { return offset_; }
  absl::Status Commit();

  // Before the first Write: the content digest (common/checksum.h) of the
  // contents is computed as they are written, so that a digest the caller
  // needs costs no second pass. A large write is hashed while it goes to
  // the file, its pieces on every core: a writer's outputs come after its
  // compute, and one core's SHA-256 would take longer than the write.
  void HashContents();
  // After Commit: the raw digest, or empty without HashContents.
  const std::string& digest() const { return digest_; }

  const std::string& final_path() const { return final_path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  AtomicFileWriter(std::string final_path, std::string temp_path, int fd,
                   Durability durability)
      : final_path_(std::move(final_path)),
        temp_path_(std::move(temp_path)),
        fd_(fd),
        durability_(durability) {}
  absl::Status FlushBuffer();
  // Durable files: starts the writeback of what was written since the last
  // call, every kWritebackBytes, so that Commit's fsync finds little left
  // to write (an 8.6 GB upload would otherwise wait seconds there).
  void StartWriteback();

  std::string final_path_;
  std::string temp_path_;
  int fd_;
  const Durability durability_;
  uint64_t offset_ = 0;
  uint64_t writeback_from_ = 0;  // Durable: bytes whose writeback began.
  std::string buffer_;           // Coalesces small writes (headers, metadata).
  bool committed_ = false;
  std::unique_ptr<ContentDigest> hash_;  // Of the bytes written, in order.
  std::string digest_;
};

// fsync of a directory: makes the renames and creations in it durable.
absl::Status SyncDirectory(const std::string& dir);
// rename(2), then SyncDirectory of the target's directory. Both paths must
// be on one file system (EXDEV otherwise, named in the error).
absl::Status RenameDurably(const std::string& from, const std::string& to);

// Reads a whole (small) regular file such as config.json into a string. Not
// for /proc or other files that report a size of 0.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes a small file atomically (AtomicFileWriter under the hood).
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents);

// A file's identity for change detection: a replaced or rewritten file has
// another (device, inode, size, modification time). All -1 when the file
// cannot be stat'ed.
struct FileStamp {
  int64_t device = -1, inode = -1, size = -1, mtime_ns = -1;
  bool ok() const { return inode >= 0; }
  bool operator==(const FileStamp& o) const {
    return device == o.device && inode == o.inode && size == o.size &&
           mtime_ns == o.mtime_ns;
  }
  bool operator!=(const FileStamp& o) const { return !(*this == o); }
};
FileStamp StampOf(const std::string& path);

}  // namespace quant

#endif  // COMMON_FILE_H_
