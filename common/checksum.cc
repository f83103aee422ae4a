#include "common/checksum.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/parallel.h"

#if (defined(__x86_64__) || defined(_M_X64)) && \
    (defined(__GNUC__) || defined(__clang__))
#define QS_CRC32C_HAVE_SSE42 1
#include <nmmintrin.h>
#endif

namespace quant {
namespace {

constexpr uint32_t kCrc32cPoly = 0x82F63B78u;

using Crc32cTables = std::array<std::array<uint32_t, 256>, 8>;

// tables[0] is the classic byte-at-a-time table; tables[k][b] is the CRC of
// byte b followed by k zero bytes, for slice-by-8.
constexpr Crc32cTables MakeCrc32cTables() {
  Crc32cTables tables{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t crc = b;
    for (int bit = 0; bit < 8; ++bit) {
      crc = (crc >> 1) ^ ((crc & 1u) ? kCrc32cPoly : 0u);
    }
    tables[0][b] = crc;
  }
  for (uint32_t b = 0; b < 256; ++b) {
    for (size_t k = 1; k < 8; ++k) {
      const uint32_t prev = tables[k - 1][b];
      tables[k][b] = (prev >> 8) ^ tables[0][prev & 0xFFu];
    }
  }
  return tables;
}

constexpr Crc32cTables kCrc32cTables = MakeCrc32cTables();

inline uint64_t LoadLittleEndian64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

#ifdef QS_CRC32C_HAVE_SSE42
__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(const void* data,
                                                       size_t size,
                                                       uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  // Align to 8 bytes so the 64-bit loads below are aligned.
  while (size > 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    c = _mm_crc32_u8(c, *p++);
    --size;
  }
  uint64_t c64 = c;
  while (size >= 8) {
    uint64_t v;
    std::memcpy(&v, p, sizeof(v));
    c64 = _mm_crc32_u64(c64, v);
    p += 8;
    size -= 8;
  }
  c = static_cast<uint32_t>(c64);
  while (size > 0) {
    c = _mm_crc32_u8(c, *p++);
    --size;
  }
  return ~c;
}

bool CpuHasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif  // QS_CRC32C_HAVE_SSE42

}  // namespace

namespace crc32c_internal {

uint32_t Portable(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  const Crc32cTables& t = kCrc32cTables;
  uint32_t c = ~crc;
  while (size >= 8) {
    const uint64_t v = LoadLittleEndian64(p) ^ c;
    c = t[7][v & 0xFF] ^ t[6][(v >> 8) & 0xFF] ^ t[5][(v >> 16) & 0xFF] ^
        t[4][(v >> 24) & 0xFF] ^ t[3][(v >> 32) & 0xFF] ^
        t[2][(v >> 40) & 0xFF] ^ t[1][(v >> 48) & 0xFF] ^ t[0][v >> 56];
    p += 8;
    size -= 8;
  }
  while (size > 0) {
    c = (c >> 8) ^ t[0][(c ^ *p++) & 0xFFu];
    --size;
  }
  return ~c;
}

uint32_t Hardware(const void* data, size_t size, uint32_t crc) {
#ifdef QS_CRC32C_HAVE_SSE42
  return Crc32cSse42(data, size, crc);
#else
  return Portable(data, size, crc);
#endif
}

bool HardwareAvailable() {
#ifdef QS_CRC32C_HAVE_SSE42
  return CpuHasSse42();
#else
  return false;
#endif
}

}  // namespace crc32c_internal

uint32_t Crc32c(const void* data, size_t size, uint32_t crc) {
  if (size == 0) return crc;
#ifdef QS_CRC32C_HAVE_SSE42
  if (CpuHasSse42()) return Crc32cSse42(data, size, crc);
#endif
  return crc32c_internal::Portable(data, size, crc);
}

void Sha256::CtxDeleter::operator()(evp_md_ctx_st* ctx) const {
  EVP_MD_CTX_free(ctx);
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) { Reset(); }

Sha256::~Sha256() = default;

Sha256::Sha256(Sha256&& other) noexcept
    : ctx_(std::move(other.ctx_)), failed_(other.failed_) {
  other.failed_ = true;  // A moved-from hash yields "" until Finish.
}

Sha256& Sha256::operator=(Sha256&& other) noexcept {
  ctx_ = std::move(other.ctx_);
  failed_ = other.failed_;
  other.failed_ = true;
  return *this;
}

void Sha256::Reset() {
  failed_ = ctx_ == nullptr ||
            EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1;
}

void Sha256::Update(const void* data, size_t size) {
  if (failed_ || ctx_ == nullptr || size == 0) return;
  if (EVP_DigestUpdate(ctx_.get(), data, size) != 1) failed_ = true;
}

std::string Sha256::Finish() {
  std::string digest;
  if (!failed_) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), md, &len) == 1 && len == kDigestSize) {
      digest.assign(reinterpret_cast<const char*>(md), len);
    }
  }
  if (ctx_ == nullptr) ctx_.reset(EVP_MD_CTX_new());
  Reset();
  return digest;
}

std::string Sha256Of(absl::string_view data) {
  Sha256 hash;
  hash.Update(data);
  return hash.Finish();
}

absl::StatusOr<std::string> Sha256OfFile(const std::string& path,
                                         uint64_t* bytes) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(
      std::fopen(path.c_str(), "rb"), &std::fclose);
  if (file == nullptr) {
    const int error = errno;
    const std::string message =
        absl::StrCat("cannot read ", path, ": ", std::strerror(error));
    return error == ENOENT ? absl::NotFoundError(message)
                           : absl::InternalError(message);
  }
  std::vector<char> block(8 << 20);
  Sha256 sha256;
  uint64_t total = 0;
  size_t n;
  while ((n = std::fread(block.data(), 1, block.size(), file.get())) > 0) {
    sha256.Update(block.data(), n);
    total += n;
  }
  if (std::ferror(file.get())) {
    return absl::InternalError(absl::StrCat("cannot read ", path));
  }
  if (bytes != nullptr) *bytes = total;
  std::string digest = sha256.Finish();
  if (digest.empty()) {
    return absl::InternalError(absl::StrCat("SHA-256 of ", path, " failed"));
  }
  return digest;
}

namespace {

constexpr absl::string_view kContentDigestPrefix = "quant-content-digest-v1\n";

}  // namespace

ContentDigest::ContentDigest(int threads) : threads_(std::max(threads, 1)) {}

void ContentDigest::Update(const void* data, size_t size) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  size_ += size;
  if (piece_fill_ > 0) {  // Completes the open piece first.
    const size_t n = static_cast<size_t>(
        std::min<uint64_t>(size, kDigestPieceBytes - piece_fill_));
    piece_.Update(bytes, n);
    piece_fill_ += n;
    bytes += n;
    size -= n;
    if (piece_fill_ == kDigestPieceBytes) {
      pieces_.push_back(piece_.Finish());
      piece_fill_ = 0;
    }
  }
  const uint64_t whole = size / kDigestPieceBytes;
  if (whole > 0) {
    const size_t first = pieces_.size();
    pieces_.resize(first + whole);
    ParallelForEach(whole, threads_, [&](uint64_t i) {
      Sha256 hash;
      hash.Update(bytes + i * kDigestPieceBytes, kDigestPieceBytes);
      pieces_[first + i] = hash.Finish();
    });
    bytes += whole * kDigestPieceBytes;
    size -= whole * kDigestPieceBytes;
  }
  if (size > 0) {
    piece_.Update(bytes, size);
    piece_fill_ = size;
  }
}

std::string ContentDigest::Finish() {
  if (piece_fill_ > 0) pieces_.push_back(piece_.Finish());
  std::string digest = Combine(size_, pieces_);
  size_ = 0;
  piece_fill_ = 0;
  pieces_.clear();
  return digest;
}

std::string ContentDigest::Combine(uint64_t size,
                                   const std::vector<std::string>& pieces) {
  if (pieces.size() != PiecesOf(size)) return "";
  Sha256 root;
  root.Update(kContentDigestPrefix);
  char size_le[8];
  for (int i = 0; i < 8; ++i) size_le[i] = static_cast<char>(size >> (8 * i));
  root.Update(size_le, sizeof(size_le));
  for (const std::string& piece : pieces) {
    if (piece.size() != Sha256::kDigestSize) return "";
    root.Update(piece);
  }
  return root.Finish();
}

std::string ContentDigestOf(absl::string_view data, int threads) {
  ContentDigest digest(threads);
  digest.Update(data);
  return digest.Finish();
}

absl::StatusOr<std::string> ContentDigestOfFile(const std::string& path,
                                                uint64_t* bytes, int threads) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    const std::string message =
        absl::StrCat("cannot read ", path, ": ", std::strerror(error));
    return error == ENOENT ? absl::NotFoundError(message)
                           : absl::InternalError(message);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::InternalError(
        absl::StrCat("cannot stat ", path, ": ", std::strerror(error)));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  std::vector<std::string> pieces(ContentDigest::PiecesOf(size));
  std::atomic<bool> failed{false};
  std::string failure;  // Set once, by the first piece to fail.
  std::atomic<bool> failure_set{false};
  ParallelForEach(pieces.size(), threads, [&](uint64_t i) {
    if (failed.load()) return;
    std::vector<char> block(4 << 20);
    Sha256 hash;
    const uint64_t end = std::min(size, (i + 1) * kDigestPieceBytes);
    for (uint64_t at = i * kDigestPieceBytes; at < end;) {
      const ssize_t n =
          ::pread(fd, block.data(), std::min<uint64_t>(block.size(), end - at),
                  static_cast<off_t>(at));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (!failure_set.exchange(true)) {
          failure = n < 0 ? std::strerror(errno)
                          : absl::StrCat("ends at byte ", at, " of the ", size,
                                         " it had when opened");
        }
        failed = true;
        return;
      }
      hash.Update(block.data(), static_cast<size_t>(n));
      at += static_cast<uint64_t>(n);
    }
    pieces[i] = hash.Finish();
  });
  ::close(fd);
  if (failed) {
    return absl::InternalError(
        absl::StrCat("cannot read ", path, ": ", failure));
  }
  std::string digest = ContentDigest::Combine(size, pieces);
  if (digest.empty()) {
    return absl::InternalError(
        absl::StrCat("content digest of ", path, " failed"));
  }
  if (bytes != nullptr) *bytes = size;
  return digest;
}

std::string HexOf(absl::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    out[2 * i] = kDigits[b >> 4];
    out[2 * i + 1] = kDigits[b & 0xF];
  }
  return out;
}

bool IsHexDigest(absl::string_view text) {
  return text.size() == 2 * Sha256::kDigestSize &&
         std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

}  // namespace quant
