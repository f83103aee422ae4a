#include "common/chunk_stream.h"

#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace quant {
namespace {

std::vector<uint8_t> RandomBytes(size_t n) {
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::vector<uint8_t> out(n);
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
  return out;
}

v1::TensorInfo Info(const std::string& name, uint64_t size) {
  v1::TensorInfo info;
  info.set_name(name);
  info.set_dtype("U8");
  info.add_shape(static_cast<int64_t>(size));
  info.set_size_bytes(size);
  return info;
}

std::vector<v1::Chunk> Send(const v1::TensorInfo& info,
                            const std::vector<uint8_t>& data, uint64_t offset,
                            size_t chunk_bytes) {
  std::vector<v1::Chunk> chunks;
  EXPECT_TRUE(SendTensor(info, data.data(), offset, chunk_bytes,
                         [&](const v1::Chunk& c) {
                           chunks.push_back(c);
                           return true;
                         })
                  .ok());
  return chunks;
}

// A digest the sender knows goes out as is: the same stream as one hashed
// there when it is right, and a stream the receiver refuses when it is not
// (a held file damaged after its commit).
TEST(ChunkStreamTest, AKnownDigestIsSentAsIs) {
  const std::vector<uint8_t> data = RandomBytes(10000);
  const std::vector<v1::Chunk> hashed =
      Send(Info("t", data.size()), data, 0, 4096);
  ASSERT_FALSE(hashed.empty());
  const std::string right = hashed.back().digest();
  std::string wrong = right;
  wrong[0] ^= 0x01;
  for (const std::string& digest : {right, wrong}) {
    std::vector<v1::Chunk> chunks;
    ASSERT_TRUE(SendTensor(
                    Info("t", data.size()), data.data(), 0, 4096,
                    [&](const v1::Chunk& c) {
                      chunks.push_back(c);
                      return true;
                    },
                    {}, {}, digest)
                    .ok());
    ASSERT_EQ(chunks.size(), hashed.size());
    EXPECT_EQ(chunks.back().digest(), digest);
    ChunkVerifier verifier("t", data.size());
    absl::Status status;
    for (const v1::Chunk& chunk : chunks) {
      status = verifier.Accept(chunk);
      if (!status.ok()) break;
    }
    if (digest == right) {
      EXPECT_TRUE(status.ok()) << status;
      EXPECT_EQ(verifier.digest(), right);
    } else {
      EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
    }
  }
}

// The ranges a sender may drop cover the tensor once, in order, in steps
// of at most kSendReleaseBytes and a chunk (from a fresh stream, at least
// kSendReleaseBytes but the last); a resumed stream hands back its prefix
// too, a window at a time, since it hashed it.
TEST(ChunkStreamTest, DoneRangesCoverTheTensorInWindows) {
  const size_t size = 2 * kSendReleaseBytes + 12345;
  const std::vector<uint8_t> data(size, 7);
  for (uint64_t offset :
       {uint64_t{0}, uint64_t{100}, uint64_t{kSendReleaseBytes + 5}}) {
    SCOPED_TRACE(offset);
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    ASSERT_TRUE(
        SendTensor(
            Info("t", size), data.data(), offset, 4 << 20,
            [](const v1::Chunk&) { return true; }, {},
            [&](uint64_t from, uint64_t to) { ranges.emplace_back(from, to); })
            .ok());
    ASSERT_FALSE(ranges.empty());
    EXPECT_EQ(ranges.front().first, 0u);
    EXPECT_EQ(ranges.back().second, size);
    for (size_t i = 0; i < ranges.size(); ++i) {
      if (i > 0) {
        EXPECT_EQ(ranges[i].first, ranges[i - 1].second);
      }
      EXPECT_LE(ranges[i].second - ranges[i].first,
                kSendReleaseBytes + (4 << 20));
      if (offset == 0 && i + 1 < ranges.size()) {
        EXPECT_GE(ranges[i].second - ranges[i].first, kSendReleaseBytes);
      }
    }
    if (offset == 0) {
      EXPECT_EQ(ranges.size(), 3u);
    }
  }
}

TEST(ChunkStreamTest, OddSizesRoundTrip) {
  for (size_t size : {0, 1, 7, 4096, 4097, 100003}) {
    const std::vector<uint8_t> data = RandomBytes(size);
    const std::vector<v1::Chunk> chunks = Send(Info("t", size), data, 0, 4096);
    EXPECT_EQ(chunks.size(), size == 0 ? 1u : (size + 4095) / 4096) << size;
    EXPECT_TRUE(chunks.front().has_info());
    ChunkVerifier verifier("t", size);
    std::string joined;
    for (const v1::Chunk& c : chunks) {
      EXPECT_LE(c.data().size(), 4096u);
      ASSERT_TRUE(verifier.Accept(c).ok()) << size;
      joined += c.data();
    }
    EXPECT_TRUE(verifier.done());
    EXPECT_EQ(verifier.digest(), ContentDigestOf(joined));
    EXPECT_TRUE(joined == std::string(data.begin(), data.end()));
  }
}

TEST(ChunkStreamTest, AResumedStreamHashesTheWholeTensor) {
  const std::vector<uint8_t> data = RandomBytes(10000);
  const std::vector<v1::Chunk> all = Send(Info("t", 10000), data, 0, 3000);
  const std::vector<v1::Chunk> resumed =
      Send(Info("t", 10000), data, 6000, 3000);
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_EQ(resumed[0].offset(), 6000u);
  EXPECT_EQ(resumed.back().digest(), all.back().digest());
  ChunkVerifier verifier("t", 10000);
  ASSERT_TRUE(verifier.Accept(all[0]).ok());
  ASSERT_TRUE(verifier.Accept(all[1]).ok());
  for (const v1::Chunk& c : resumed) ASSERT_TRUE(verifier.Accept(c).ok());
  EXPECT_TRUE(verifier.done());
}

TEST(ChunkStreamTest, DamageIsDataLoss) {
  const std::vector<uint8_t> data = RandomBytes(9000);
  const std::vector<v1::Chunk> chunks = Send(Info("t", 9000), data, 0, 4000);
  auto expect_loss = [&](std::vector<v1::Chunk> stream, const char* what) {
    ChunkVerifier verifier("t", 9000);
    absl::Status status;
    for (const v1::Chunk& c : stream) {
      status = verifier.Accept(c);
      if (!status.ok()) break;
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << what;
  };
  std::vector<v1::Chunk> flipped = chunks;
  (*flipped[1].mutable_data())[5] ^= 1;
  expect_loss(flipped, "flipped byte");
  std::vector<v1::Chunk> skipped = {chunks[0], chunks[2]};
  expect_loss(skipped, "skipped chunk");
  std::vector<v1::Chunk> renamed = chunks;
  renamed[0].set_tensor("u");
  expect_loss(renamed, "wrong tensor");
  // Consistent chunks of other bytes: only the digest tells.
  std::vector<v1::Chunk> swapped = chunks;
  std::string* d = swapped[0].mutable_data();
  (*d)[0] ^= 1;
  swapped[0].set_crc32c(Crc32c(d->data(), d->size()));
  expect_loss(swapped, "other bytes");
  ChunkVerifier longer("t", 9001);
  for (const v1::Chunk& c : chunks) {
    const absl::Status s = longer.Accept(c);
    if (c.last()) {
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
    }
  }
  // A receiver that went away cancels the send.
  EXPECT_EQ(SendTensor(Info("t", 9000), data.data(), 0, 4000,
                       [](const v1::Chunk&) { return false; })
                .code(),
            absl::StatusCode::kCancelled);
}

// The streams of a striped upload carry every byte exactly once between
// them, each stream its units in order, no chunk across a unit's end.
TEST(ChunkStreamTest, StripesCoverEveryByteOnce) {
  const std::vector<uint8_t> big = RandomBytes(10 * 1000 + 17);
  const std::vector<uint8_t> small = RandomBytes(999);
  const std::vector<StripedTensor> tensors = {
      {"big", big.data(), big.size()},
      {"none", nullptr, 0},
      {"small", small.data(), small.size()}};
  constexpr uint64_t kUnit = 1000;
  for (int count : {1, 3, 12}) {
    SCOPED_TRACE(count);
    std::vector<std::vector<int>> seen = {
        std::vector<int>(big.size()), {}, std::vector<int>(small.size())};
    for (int index = 0; index < count; ++index) {
      std::string last_tensor;
      uint64_t next = 0;
      uint64_t sent = 0, released = 0;
      const absl::Status status = SendStripe(
          tensors, index, count, kUnit, 300,
          [&](const v1::Chunk& chunk) {
            const size_t t = chunk.tensor() == "big" ? 0 : 2;
            const uint64_t at = chunk.offset();
            const size_t n = chunk.data().size();
            EXPECT_TRUE(n > 0 && n <= 300);
            EXPECT_EQ(at / kUnit % count, static_cast<uint64_t>(index));
            EXPECT_EQ((at + n - 1) / kUnit, at / kUnit) << "crosses a unit";
            if (chunk.tensor() == last_tensor) EXPECT_GE(at, next);
            last_tensor = chunk.tensor();
            next = at + n;
            EXPECT_EQ(chunk.crc32c(), Crc32c(chunk.data().data(), n));
            const uint8_t* data = t == 0 ? big.data() : small.data();
            EXPECT_EQ(chunk.data(),
                      std::string(reinterpret_cast<const char*>(data + at), n));
            for (size_t k = 0; k < n; ++k) ++seen[t][at + k];
            return true;
          },
          [&](size_t n) { sent += n; },
          [&](size_t, uint64_t from, uint64_t to) { released += to - from; });
      EXPECT_TRUE(status.ok()) << status;
      EXPECT_EQ(sent, released);
    }
    for (const std::vector<int>& counts : seen) {
      for (int c : counts) ASSERT_EQ(c, 1);
    }
  }
  const auto refuse = [](const v1::Chunk&) { return false; };
  EXPECT_EQ(SendStripe(tensors, 0, 2, kUnit, 300, refuse).code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(SendStripe(tensors, 2, 2, kUnit, 300, refuse).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quant
