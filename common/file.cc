#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace quant {
namespace {

constexpr size_t kWriteBufferBytes = 1 << 20;
constexpr uint64_t kWritebackBytes = 64 << 20;

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  const int err = errno;
  const std::string message =
      absl::StrCat(what, " '", path, "': ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) {
    return absl::PermissionDeniedError(message);
  }
  return absl::InternalError(message);
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status status = ErrnoError("cannot stat", path);
    ::close(fd);
    return status;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' is not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      absl::Status status = ErrnoError("cannot mmap", path);
      ::close(fd);
      return status;
    }
    data = static_cast<const uint8_t*>(mapped);
  }
  ::close(fd);  // The mapping keeps the file alive.
  return std::unique_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void MappedFile::Release(size_t offset, size_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  if (length > size_ - offset) length = size_ - offset;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  // Only whole pages inside the range can be dropped.
  const size_t begin = (offset + page - 1) / page * page;
  const size_t end = (offset + length) / page * page;
  if (end <= begin) return;
  ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(
    const std::string& final_path, Durability durability) {
  // mkstemp: a fresh, exclusively created name, so two writers of one path
  // never share a temporary file and a planted link is never followed.
  std::string temp_path = absl::StrCat(final_path, ".tmp.XXXXXX");
  const int fd = ::mkostemp(temp_path.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot create", temp_path);
  ::fchmod(fd, 0644);  // mkstemp creates 0600; outputs are ordinary files.
  return std::unique_ptr<AtomicFileWriter>(
      new AtomicFileWriter(final_path, std::move(temp_path), fd, durability));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFileWriter::HashContents() {
  if (hash_ == nullptr && offset_ == 0) {
    hash_ = std::make_unique<ContentDigest>(
        static_cast<int>(std::thread::hardware_concurrency()));
  }
}

absl::Status AtomicFileWriter::FlushBuffer() {
  if (hash_ != nullptr) hash_->Update(buffer_);
  size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t n =
        ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", temp_path_);
    }
    done += static_cast<size_t>(n);
  }
  buffer_.clear();
  StartWriteback();
  return absl::OkStatus();
}

void AtomicFileWriter::StartWriteback() {
  if (durability_ != Durability::kDurable ||
      offset_ - writeback_from_ < kWritebackBytes) {
    return;
  }
  // A hint: fsync still reports any failure.
  (void)::sync_file_range(fd_, static_cast<off_t>(writeback_from_),
                          static_cast<off_t>(offset_ - writeback_from_),
                          SYNC_FILE_RANGE_WRITE);
  writeback_from_ = offset_;
}

absl::Status AtomicFileWriter::Write(const void* data, size_t size) {
  if (fd_ < 0 || committed_) {
    return absl::FailedPreconditionError(
        absl::StrCat("write to closed file '", temp_path_, "'"));
  }
  if (buffer_.size() + size <= kWriteBufferBytes) {
    buffer_.append(static_cast<const char*>(data), size);
    offset_ += size;
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(FlushBuffer());
  if (size <= kWriteBufferBytes) {
    buffer_.append(static_cast<const char*>(data), size);
    offset_ += size;
    return absl::OkStatus();
  }
  // Large tensors bypass the buffer (and are hashed meanwhile).
  std::thread hashing;
  if (hash_ != nullptr) {
    hashing = std::thread([this, data, size] { hash_->Update(data, size); });
  }
  const char* bytes = static_cast<const char*>(data);
  size_t done = 0;
  absl::Status status;
  while (done < size) {
    const ssize_t n = ::write(fd_, bytes + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      status = ErrnoError("cannot write", temp_path_);
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (hashing.joinable()) hashing.join();
  if (!status.ok()) return status;
  offset_ += size;
  StartWriteback();
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::WriteZeros(size_t count) {
  static const char kZeros[4096] = {};
  while (count > 0) {
    const size_t n = count < sizeof(kZeros) ? count : sizeof(kZeros);
    RETURN_IF_ERROR(Write(kZeros, n));
    count -= n;
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (committed_) return absl::OkStatus();
  RETURN_IF_ERROR(FlushBuffer());
  if (hash_ != nullptr) digest_ = hash_->Finish();
  if (durability_ == Durability::kDurable && ::fsync(fd_) != 0) {
    return ErrnoError("cannot fsync", temp_path_);
  }
  if (::close(fd_) != 0) {
    fd_ = -1;
    return ErrnoError("cannot close", temp_path_);
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    return ErrnoError("cannot rename temporary file to", final_path_);
  }
  committed_ = true;
  // Make the rename itself durable (best effort: the data is already safe).
  if (durability_ == Durability::kDurable) {
    (void)SyncDirectory(DirectoryOf(final_path_));
  }
  return absl::OkStatus();
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync directory", dir);
  return absl::OkStatus();
}

absl::Status RenameDurably(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return ErrnoError(absl::StrCat("cannot rename ", from, " to"), to);
  }
  return SyncDirectory(DirectoryOf(to));
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  return std::string(reinterpret_cast<const char*>(file->data()), file->size());
}

absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents) {
  ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> writer,
                   AtomicFileWriter::Create(path));
  RETURN_IF_ERROR(writer->Write(contents));
  return writer->Commit();
}

FileStamp StampOf(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return {};
  return {static_cast<int64_t>(st.st_dev), static_cast<int64_t>(st.st_ino),
          static_cast<int64_t>(st.st_size),
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 +
              st.st_mtim.tv_nsec};
}

}  // namespace quant
