#include "common/checksum.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

// Bit-at-a-time CRC-32C, straight from the definition.
uint32_t ReferenceCrc32c(const void* data, size_t size, uint32_t crc = 0) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  for (size_t i = 0; i < size; ++i) {
    c ^= p[i];
    for (int bit = 0; bit < 8; ++bit) {
      c = (c >> 1) ^ ((c & 1u) ? 0x82F63B78u : 0u);
    }
  }
  return ~c;
}

std::string RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(size, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xFF);
  return out;
}

uint32_t Crc(absl::string_view s, uint32_t crc = 0) {
  return Crc32c(s.data(), s.size(), crc);
}

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc(""), 0u);
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  EXPECT_EQ(Crc32c(nullptr, 0, 0x12345678u), 0x12345678u);
  EXPECT_EQ(Crc("a"), 0xC1D04330u);
}

// RFC 3720 (iSCSI), appendix B.4.
TEST(Crc32cTest, Rfc3720Vectors) {
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc(zeros), 0x8A9136AAu);
  std::string ones(32, '\xff');
  EXPECT_EQ(Crc(ones), 0x62A8AB43u);
  std::string incrementing(32, '\0');
  std::string decrementing(32, '\0');
  for (int i = 0; i < 32; ++i) {
    incrementing[i] = static_cast<char>(i);
    decrementing[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(Crc(incrementing), 0x46DD794Eu);
  EXPECT_EQ(Crc(decrementing), 0x113FDB5Cu);
  // An iSCSI read command PDU.
  const unsigned char kIscsiRead[48] = {
      0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
      0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  EXPECT_EQ(Crc32c(kIscsiRead, sizeof(kIscsiRead)), 0xD9963A56u);
}

// Every implementation against the bitwise reference, for all small sizes
// and misalignments, and a few large ones.
TEST(Crc32cTest, ImplementationsMatchReference) {
  const std::string data = RandomBytes(70000, 1);
  std::vector<std::pair<size_t, size_t>> cases;  // (offset, size)
  for (size_t offset = 0; offset < 9; ++offset) {
    for (size_t size = 0; size <= 70; ++size) cases.push_back({offset, size});
  }
  cases.push_back({0, 4097});
  cases.push_back({3, 65536});
  cases.push_back({5, data.size() - 5});
  const bool hardware = crc32c_internal::HardwareAvailable();
  for (const auto& [offset, size] : cases) {
    const char* p = data.data() + offset;
    const uint32_t seed = static_cast<uint32_t>(size * 2654435761u);
    for (uint32_t start : {0u, seed}) {
      const uint32_t want = ReferenceCrc32c(p, size, start);
      EXPECT_EQ(crc32c_internal::Portable(p, size, start), want)
          << "offset " << offset << " size " << size;
      EXPECT_EQ(Crc32c(p, size, start), want)
          << "offset " << offset << " size " << size;
      if (hardware) {
        EXPECT_EQ(crc32c_internal::Hardware(p, size, start), want)
            << "offset " << offset << " size " << size;
      }
    }
  }
}

TEST(Crc32cTest, HardwarePathKnownVector) {
  if (!crc32c_internal::HardwareAvailable()) {
    GTEST_SKIP() << "no SSE4.2 on this CPU or build";
  }
  EXPECT_EQ(crc32c_internal::Hardware("123456789", 9, 0), 0xE3069283u);
}

TEST(Crc32cTest, IncrementalEqualsOneShot) {
  std::mt19937 rng(7);
  for (size_t size :
       {size_t{1}, size_t{7}, size_t{4097}, size_t{(1 << 20) + 3}}) {
    const std::string data = RandomBytes(size, static_cast<uint32_t>(size));
    const uint32_t one_shot = Crc(data);
    EXPECT_EQ(one_shot, ReferenceCrc32c(data.data(), data.size()));
    for (int trial = 0; trial < 5; ++trial) {
      // Split at random points into up to 6 pieces (some may be empty).
      std::vector<size_t> cuts = {0, data.size()};
      for (int i = 0; i < 5; ++i) cuts.push_back(rng() % (data.size() + 1));
      std::sort(cuts.begin(), cuts.end());
      uint32_t crc = 0;
      uint32_t portable = 0;
      for (size_t i = 0; i + 1 < cuts.size(); ++i) {
        const char* p = data.data() + cuts[i];
        const size_t n = cuts[i + 1] - cuts[i];
        crc = Crc32c(p, n, crc);
        portable = crc32c_internal::Portable(p, n, portable);
      }
      EXPECT_EQ(crc, one_shot) << "size " << size;
      EXPECT_EQ(portable, one_shot) << "size " << size;
    }
  }
}

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(HexOf(Sha256Of("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HexOf(Sha256Of("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HexOf(Sha256Of(
                "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Of("abc").size(), Sha256::kDigestSize);
  // One million 'a' (FIPS 180-2 test vector).
  EXPECT_EQ(HexOf(Sha256Of(std::string(1000000, 'a'))),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, IncrementalEqualsOneShot) {
  std::mt19937 rng(11);
  for (size_t size :
       {size_t{1}, size_t{7}, size_t{4097}, size_t{(1 << 20) + 3}}) {
    const std::string data = RandomBytes(size, static_cast<uint32_t>(size));
    const std::string one_shot = Sha256Of(data);
    ASSERT_EQ(one_shot.size(), 32u);
    std::vector<size_t> cuts = {0, data.size()};
    for (int i = 0; i < 5; ++i) cuts.push_back(rng() % (data.size() + 1));
    std::sort(cuts.begin(), cuts.end());
    Sha256 hash;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      hash.Update(data.data() + cuts[i], cuts[i + 1] - cuts[i]);
    }
    EXPECT_EQ(hash.Finish(), one_shot) << "size " << size;
  }
}

TEST(Sha256Test, FinishStartsOver) {
  Sha256 hash;
  hash.Update("ab", 2);
  hash.Update(absl::string_view("c"));
  EXPECT_EQ(hash.Finish(), Sha256Of("abc"));
  EXPECT_EQ(hash.Finish(), Sha256Of(""));
  hash.Update("abc", 3);
  EXPECT_EQ(hash.Finish(), Sha256Of("abc"));
}

TEST(Sha256Test, MoveKeepsState) {
  Sha256 a;
  a.Update("ab", 2);
  Sha256 b(std::move(a));
  b.Update("c", 1);
  EXPECT_EQ(b.Finish(), Sha256Of("abc"));
  Sha256 c;
  c = std::move(b);
  c.Update("abc", 3);
  EXPECT_EQ(c.Finish(), Sha256Of("abc"));
}

TEST(HexOfTest, Lowercase) {
  EXPECT_EQ(HexOf(""), "");
  EXPECT_EQ(HexOf(absl::string_view("\x00\x01\xab\xff", 4)), "0001abff");
}

TEST(HexOfTest, IsHexDigestTakesWhatHexOfWrites) {
  const std::string digest = HexOf(Sha256Of("abc"));
  EXPECT_TRUE(IsHexDigest(digest));
  EXPECT_FALSE(IsHexDigest(digest.substr(1)));
  EXPECT_FALSE(IsHexDigest(digest + "0"));
  EXPECT_FALSE(IsHexDigest(absl::AsciiStrToUpper(digest)));
  EXPECT_FALSE(IsHexDigest(std::string(64, 'g')));
}

// A file is hashed as its bytes are, across the reader's block boundary
// (8 MiB); a missing file is NotFound.
TEST(Sha256Test, FilesHashAsTheirBytes) {
  const std::string path =
      ::testing::TempDir() + "/sha256_of_file_" + std::to_string(getpid());
  std::string bytes((8 << 20) + 4099, '\0');
  std::mt19937 rng(7);
  for (char& c : bytes) c = static_cast<char>(rng());
  std::ofstream(path, std::ios::binary) << bytes;
  uint64_t size = 0;
  absl::StatusOr<std::string> digest = Sha256OfFile(path, &size);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, Sha256Of(bytes));
  EXPECT_EQ(size, bytes.size());
  std::remove(path.c_str());
  EXPECT_EQ(Sha256OfFile(path).status().code(), absl::StatusCode::kNotFound);
}

// The content digest's definition, written out: SHA-256 of the prefix, the
// size and each 16 MiB piece's SHA-256.
std::string DigestByDefinition(absl::string_view data) {
  std::string message = "quant-content-digest-v1\n";
  for (int i = 0; i < 8; ++i) {
    message.push_back(static_cast<char>(uint64_t{data.size()} >> (8 * i)));
  }
  for (size_t at = 0; at < data.size(); at += kDigestPieceBytes) {
    message += Sha256Of(data.substr(at, kDigestPieceBytes));
  }
  return Sha256Of(message);
}

// Bytes (((i * 31 + 7) >> 3) & 0xff), as the Python oracle below made them.
std::string PatternBytes(size_t size) {
  std::string out(size, '\0');
  for (size_t i = 0; i < size; ++i) {
    out[i] = static_cast<char>(((i * 31 + 7) >> 3) & 0xFF);
  }
  return out;
}

// Digests from an independent implementation (Python's hashlib):
//   def cd(b):
//     h = sha256(b"quant-content-digest-v1\n" + struct.pack("<Q", len(b)))
//     for i in range(0, len(b), 16 << 20):
//       h.update(sha256(b[i:i + (16 << 20)]).digest())
//     return h.hexdigest()
TEST(ContentDigestTest, KnownVectors) {
  EXPECT_EQ(HexOf(ContentDigestOf("")),
            "fdcbfdd62b20498b859dc13897172a07cdfad8f44bc15df6ef4a2cd9178d24d5");
  EXPECT_EQ(HexOf(ContentDigestOf("abc")),
            "0ef46fc492a1f746e0f2ff39072d1a5a7f90938be39466aa9561c27c6344036c");
  const std::string pattern = PatternBytes(2 * kDigestPieceBytes + 12345);
  EXPECT_EQ(HexOf(ContentDigestOf(pattern, 3)),
            "09e81d71b95455ad446f46fd4230bb92a1f7d9b3e14c3351bf3d2680447fda99");
  EXPECT_EQ(HexOf(ContentDigestOf(
                absl::string_view(pattern).substr(0, kDigestPieceBytes))),
            "bbf88a382b525990d0ea655e40a931368135252aab421cc41dc3c6bcbeac55c5");
}

// Whatever the cuts between updates and the number of threads, the digest
// is the definition's, and it is not the plain SHA-256.
TEST(ContentDigestTest, IncrementalAndThreadedEqualTheDefinition) {
  const std::string data = RandomBytes(3 * kDigestPieceBytes + 4099, 5);
  std::mt19937 rng(13);
  for (size_t size : {size_t{0}, size_t{1}, size_t{kDigestPieceBytes - 1},
                      size_t{kDigestPieceBytes}, size_t{kDigestPieceBytes + 1},
                      data.size()}) {
    const absl::string_view bytes = absl::string_view(data).substr(0, size);
    const std::string expected = DigestByDefinition(bytes);
    ASSERT_EQ(expected.size(), Sha256::kDigestSize);
    EXPECT_NE(expected, Sha256Of(bytes));
    for (int threads : {1, 3, 8}) {
      EXPECT_EQ(ContentDigestOf(bytes, threads), expected)
          << "size " << size << ", " << threads << " threads";
      std::vector<size_t> cuts = {0, size};
      for (int i = 0; i < 4; ++i) cuts.push_back(rng() % (size + 1));
      cuts.push_back(std::min(size, size_t{kDigestPieceBytes}));
      std::sort(cuts.begin(), cuts.end());
      ContentDigest digest(threads);
      for (size_t i = 0; i + 1 < cuts.size(); ++i) {
        digest.Update(bytes.substr(cuts[i], cuts[i + 1] - cuts[i]));
      }
      EXPECT_EQ(digest.Finish(), expected)
          << "size " << size << ", " << threads << " threads, in cuts";
      EXPECT_EQ(digest.Finish(), ContentDigestOf(""));  // Started over.
    }
  }
}

// Pieces hashed elsewhere combine to the same digest; a wrong count or a
// piece digest of the wrong size gives the empty string.
TEST(ContentDigestTest, CombinesPiecesHashedElsewhere) {
  const std::string data = RandomBytes(2 * kDigestPieceBytes + 3, 9);
  std::vector<std::string> pieces(ContentDigest::PiecesOf(data.size()));
  ASSERT_EQ(pieces.size(), 3u);
  for (size_t i = pieces.size(); i-- > 0;) {  // Out of order.
    pieces[i] = Sha256Of(absl::string_view(data).substr(i * kDigestPieceBytes,
                                                        kDigestPieceBytes));
  }
  EXPECT_EQ(ContentDigest::Combine(data.size(), pieces), ContentDigestOf(data));
  EXPECT_EQ(ContentDigest::Combine(data.size() + kDigestPieceBytes, pieces),
            "");
  std::vector<std::string> short_digest = pieces;
  short_digest[1].pop_back();
  EXPECT_EQ(ContentDigest::Combine(data.size(), short_digest), "");
  EXPECT_EQ(ContentDigest::Combine(0, {}), ContentDigestOf(""));
  EXPECT_EQ(ContentDigest::PiecesOf(0), 0u);
  EXPECT_EQ(ContentDigest::PiecesOf(kDigestPieceBytes), 1u);
  EXPECT_EQ(ContentDigest::PiecesOf(kDigestPieceBytes + 1), 2u);
}

// A file's digest is its bytes' with any number of reading threads; a
// missing file is NotFound.
TEST(ContentDigestTest, FilesDigestAsTheirBytes) {
  const std::string path =
      ::testing::TempDir() + "/content_digest_" + std::to_string(getpid());
  const std::string bytes = RandomBytes(2 * kDigestPieceBytes + 4099, 17);
  std::ofstream(path, std::ios::binary) << bytes;
  for (int threads : {1, 4}) {
    uint64_t size = 0;
    absl::StatusOr<std::string> digest =
        ContentDigestOfFile(path, &size, threads);
    ASSERT_TRUE(digest.ok()) << digest.status();
    EXPECT_EQ(*digest, ContentDigestOf(bytes));
    EXPECT_EQ(size, bytes.size());
  }
  std::remove(path.c_str());
  EXPECT_EQ(ContentDigestOfFile(path).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace quant
