// Checksums for data that crosses the wire or the disk: CRC-32C for cheap
// integrity checks of streamed chunks, SHA-256 for content addressing.
#ifndef COMMON_CHECKSUM_H_
#define COMMON_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

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

// `bytes` as lowercase hex, two digits per byte: HexOf("\x01\xab") == "01ab".
std::string HexOf(absl::string_view bytes);
// Whether `text` is a SHA-256 as HexOf writes it: 64 lowercase hex digits.
bool IsSha256Hex(absl::string_view text);

}  // namespace quant

#endif  // COMMON_CHECKSUM_H_
