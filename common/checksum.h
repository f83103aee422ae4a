// Checksums for data that crosses the wire or the disk: CRC-32C for cheap
// integrity checks of streamed chunks, SHA-256 for content addressing.
#ifndef COMMON_CHECKSUM_H_
#define COMMON_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// OpenSSL's digest context (openssl/types.h), kept out of this header.
struct evp_md_ctx_st;

namespace quant {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and
// final xor 0xFFFFFFFF) of `size` bytes at `data`. Passing a previous result
// as `crc` continues it: Crc32c(ab) == Crc32c(b, Crc32c(a)), and
// Crc32c(nullptr, 0, c) == c. Uses the SSE4.2 crc32 instruction when the CPU
// has it, a slice-by-8 table otherwise.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

namespace crc32c_internal {

// The two implementations behind Crc32c, exposed for tests and benchmarks.
// Same contract as Crc32c.
uint32_t Portable(const void* data, size_t size, uint32_t crc);
// Only call when HardwareAvailable().
uint32_t Hardware(const void* data, size_t size, uint32_t crc);
// True when this build has the SSE4.2 path and the CPU supports it.
bool HardwareAvailable();

}  // namespace crc32c_internal

// Incremental SHA-256 through OpenSSL's EVP API:
//   Sha256 hash;
//   hash.Update(a.data(), a.size());
//   hash.Update(b.data(), b.size());
//   std::string digest = hash.Finish();  // 32 raw bytes.
// Not thread-safe; one object per stream.
class Sha256 {
 public:
  static constexpr size_t kDigestSize = 32;

  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  void Update(absl::string_view data) { Update(data.data(), data.size()); }

  // The 32-byte digest of everything passed to Update since construction or
  // the previous Finish; the object then starts over, ready for a new
  // stream. Returns an empty string only if OpenSSL failed (out of memory),
  // so callers comparing digests never mistake a failure for a match.
  std::string Finish();

 private:
  struct CtxDeleter {
    void operator()(evp_md_ctx_st* ctx) const;
  };

  void Reset();

  std::unique_ptr<evp_md_ctx_st, CtxDeleter> ctx_;
  bool failed_ = false;
};

// SHA-256 of `data` (32 raw bytes; empty only if OpenSSL failed).
std::string Sha256Of(absl::string_view data);

// SHA-256 (32 raw bytes) of the file at `path`, read a block at a time
// (activations at 70B are 8.6 GB); `bytes` gets its size when not null.
// NotFound / Internal naming the file when it cannot be read.
absl::StatusOr<std::string> Sha256OfFile(const std::string& path,
                                         uint64_t* bytes = nullptr);

// The content digest of every file the service moves (activations, block
// results, model tensors; in chunk streams, uploads, held files and the job
// store): the bytes are cut in pieces of kDigestPieceBytes (the last may be
// shorter; no data, no pieces), and the digest is the SHA-256 of
//   "quant-content-digest-v1\n" || size as 8 bytes little-endian ||
//   SHA-256(piece 0) || SHA-256(piece 1) || ...
// One SHA-256 is one core's ~1.3 GB/s, the worker's longest step on an
// 8.6 GB block of 70B activations; pieces hash on as many cores as are
// free, and out of order (a striped upload's streams each hash their own).
inline constexpr uint64_t kDigestPieceBytes = 16 << 20;

// Incremental content digest:
//   ContentDigest digest(/*threads=*/8);
//   digest.Update(a.data(), a.size());  // whole pieces of a: 8 threads
//   std::string raw = digest.Finish();  // 32 bytes
// Not thread-safe; one object per stream.
class ContentDigest {
 public:
  // `threads` (at least 1) hash the whole pieces of one Update side by side.
  explicit ContentDigest(int threads = 1);

  void Update(const void* data, size_t size);
  void Update(absl::string_view data) { Update(data.data(), data.size()); }
  // The raw 32-byte digest of everything passed since construction or the
  // previous Finish; then starts over. Empty only if OpenSSL failed.
  std::string Finish();

  // The digest of `size` bytes whose pieces, in order, have the raw SHA-256s
  // `pieces` (hashed elsewhere, in any order). Empty when the count is not
  // the number of pieces of `size` bytes or a piece's digest is not 32
  // bytes, so that a caller comparing digests never takes it for a match.
  static std::string Combine(uint64_t size,
                             const std::vector<std::string>& pieces);
  // The number of pieces of `size` bytes.
  static uint64_t PiecesOf(uint64_t size) {
    return (size + kDigestPieceBytes - 1) / kDigestPieceBytes;
  }

 private:
  int threads_;
  uint64_t size_ = 0;
  Sha256 piece_;                     // Of the bytes of the open piece so far.
  uint64_t piece_fill_ = 0;          // Bytes in the open piece.
  std::vector<std::string> pieces_;  // Of the pieces closed so far.
};

// The content digest (raw) of `data`, hashed by `threads` threads.
std::string ContentDigestOf(absl::string_view data, int threads = 1);

// The content digest (raw) of the file at `path`, its pieces read and
// hashed by `threads` threads; `bytes` gets its size when not null.
// NotFound / Internal naming the file when it cannot be read.
absl::StatusOr<std::string> ContentDigestOfFile(const std::string& path,
                                                uint64_t* bytes = nullptr,
                                                int threads = 1);

// `bytes` as lowercase hex, two digits per byte: HexOf("\x01\xab") == "01ab".
std::string HexOf(absl::string_view bytes);
// Whether `text` is a SHA-256 as HexOf writes it: 64 lowercase hex digits.
bool IsHexDigest(absl::string_view text);

}  // namespace quant

#endif  // COMMON_CHECKSUM_H_
