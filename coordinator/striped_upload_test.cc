#include "coordinator/striped_upload.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/chunk_stream.h"
#include "common/file.h"
#include "common/test_data.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kUnit = 4096;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string bytes(n, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  return bytes;
}

struct Output {
  std::string name;
  std::string bytes;
};

v1::UploadStripe Stripe(const std::vector<Output>& outputs, int count,
                        const std::string& id = "attempt-1",
                        uint64_t unit = kUnit) {
  v1::UploadStripe stripe;
  stripe.set_upload_id(id);
  stripe.set_count(count);
  stripe.set_unit_bytes(unit);
  for (const Output& out : outputs) {
    v1::DeferredOutput* entry = stripe.add_outputs();
    entry->set_name(out.name);
    entry->set_digest(HexOf(ContentDigestOf(out.bytes)));
    entry->set_size_bytes(out.bytes.size());
  }
  return stripe;
}

// What stream `index` of `count` sends, as the worker sends it (by default
// chunks of 1500 bytes: several to a unit, the last one short).
std::vector<v1::UploadResultRequest> StreamOf(
    const std::vector<Output>& outputs, int index, int count,
    uint64_t unit = kUnit, size_t chunk = 1500) {
  std::vector<StripedTensor> tensors;
  for (const Output& out : outputs) {
    tensors.push_back({out.name,
                       reinterpret_cast<const uint8_t*>(out.bytes.data()),
                       out.bytes.size()});
  }
  std::vector<v1::UploadResultRequest> messages;
  const absl::Status sent =
      SendStripe(tensors, index, count, unit, chunk, [&](const v1::Chunk& c) {
        *messages.emplace_back().mutable_chunk() = c;
        return true;
      });
  EXPECT_TRUE(sent.ok()) << sent;
  return messages;
}

std::function<bool(v1::UploadResultRequest*)> Reader(
    std::vector<v1::UploadResultRequest> messages) {
  auto shared = std::make_shared<std::vector<v1::UploadResultRequest>>(
      std::move(messages));
  auto next = std::make_shared<size_t>(0);
  return [shared, next](v1::UploadResultRequest* m) {
    if (*next == shared->size()) return false;
    *m = (*shared)[(*next)++];
    return true;
  };
}

struct StreamResult {
  absl::Status status;
  uint64_t bytes = 0;
  bool last = false;
};

// Runs every stream on a thread of its own, as the gRPC server does.
std::vector<StreamResult> RunStreams(
    StripedUpload& upload,
    std::vector<std::vector<v1::UploadResultRequest>> streams) {
  std::vector<StreamResult> results(streams.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < streams.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i].status =
          upload.ReceiveStream(static_cast<int>(i), Reader(streams[i]),
                               &results[i].bytes, &results[i].last);
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

class StripedUploadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTestTempDir("striped_upload");
    // Odd sizes: a partial last unit, fewer units than streams, no bytes.
    outputs_ = {{"result", RandomBytes(11 * kUnit + 123, 1)},
                {"small", RandomBytes(kUnit + 7, 2)},
                {"empty", ""},
                {"activations", RandomBytes(5 * kUnit, 3)}};
    for (const Output& out : outputs_) expected_.push_back(out.name);
  }

  absl::StatusOr<std::shared_ptr<StripedUpload>> Create(
      const v1::UploadStripe& stripe) {
    return StripedUpload::Create(dir_, stripe, expected_, {}, 1 << 20);
  }

  std::vector<std::vector<v1::UploadResultRequest>> Streams(int count) {
    std::vector<std::vector<v1::UploadResultRequest>> streams;
    for (int i = 0; i < count; ++i)
      streams.push_back(StreamOf(outputs_, i, count));
    return streams;
  }

  std::string dir_;
  std::vector<Output> outputs_;
  std::vector<std::string> expected_;
};

TEST_F(StripedUploadTest, StreamsSideBySideCommitTheOutputsByteForByte) {
  for (int count : {1, 3, 7}) {
    SCOPED_TRACE(absl::StrCat(count, " streams"));
    auto upload = Create(Stripe(outputs_, count));
    ASSERT_TRUE(upload.ok()) << upload.status();
    const std::vector<StreamResult> results =
        RunStreams(**upload, Streams(count));
    uint64_t bytes = 0;
    int last = 0;
    for (const StreamResult& r : results) {
      ASSERT_TRUE(r.status.ok()) << r.status;
      bytes += r.bytes;
      last += r.last;
    }
    EXPECT_EQ(last, 1);
    EXPECT_EQ(bytes, 17 * kUnit + 130);
    for (const Output& out : outputs_) {
      const auto it = (*upload)->received().find(out.name);
      ASSERT_NE(it, (*upload)->received().end()) << out.name;
      EXPECT_EQ(it->second.bytes, out.bytes.size());
      EXPECT_EQ(it->second.digest, ContentDigestOf(out.bytes));
      const absl::StatusOr<std::string> file =
          ReadFileToString(it->second.path);
      ASSERT_TRUE(file.ok()) << file.status();
      EXPECT_TRUE(*file == out.bytes) << out.name;
    }
    // Only the committed files are left.
    EXPECT_EQ(
        std::distance(fs::directory_iterator(dir_), fs::directory_iterator()),
        4);
  }
}

// Outputs of several digest pieces: each piece is hashed by the stream that
// completes it, whether a piece spans units of several streams (units not
// aligned to pieces: read back) or a stream carries whole pieces (hashed as
// they come).
TEST_F(StripedUploadTest, PiecesSpanningStreamsDigestAsTheWholeFile) {
  const std::vector<Output> outputs = {
      {"activations", RandomBytes(2 * kDigestPieceBytes + 5000, 4)},
      {"result", RandomBytes(kDigestPieceBytes - 1, 5)}};
  const std::vector<std::string> names = {"activations", "result"};
  for (const auto& [count, unit] : std::vector<std::pair<int, uint64_t>>{
           {3, (5 << 20) + 4096},
           {2, kDigestPieceBytes},
           {3, 2 * kDigestPieceBytes}}) {
    SCOPED_TRACE(absl::StrCat(count, " streams, units of ", unit));
    const std::string dir = MakeTestTempDir("striped_upload_pieces");
    auto upload = StripedUpload::Create(
        dir, Stripe(outputs, count, "pieces", unit), names, {}, 64 << 20);
    ASSERT_TRUE(upload.ok()) << upload.status();
    std::vector<std::vector<v1::UploadResultRequest>> streams;
    for (int i = 0; i < count; ++i) {
      streams.push_back(StreamOf(outputs, i, count, unit, 1 << 20));
    }
    for (const StreamResult& r : RunStreams(**upload, std::move(streams))) {
      ASSERT_TRUE(r.status.ok()) << r.status;
    }
    for (const Output& out : outputs) {
      const auto it = (*upload)->received().find(out.name);
      ASSERT_NE(it, (*upload)->received().end()) << out.name;
      const absl::StatusOr<std::string> file =
          ReadFileToString(it->second.path);
      ASSERT_TRUE(file.ok()) << file.status();
      EXPECT_TRUE(*file == out.bytes) << out.name;
    }
  }
  // One byte of the second piece changed (its chunk's CRC-32C made to
  // match): only the digest tells.
  std::vector<std::vector<v1::UploadResultRequest>> streams;
  for (int i = 0; i < 2; ++i) {
    streams.push_back(StreamOf(outputs, i, 2, kDigestPieceBytes, 1 << 20));
  }
  (*streams[1][0].mutable_chunk()->mutable_data())[9] ^= 0x01;
  v1::Chunk& chunk = *streams[1][0].mutable_chunk();
  chunk.set_crc32c(Crc32c(chunk.data().data(), chunk.data().size()));
  auto upload = StripedUpload::Create(
      MakeTestTempDir("striped_upload_pieces"),
      Stripe(outputs, 2, "damaged", kDigestPieceBytes), names, {}, 64 << 20);
  ASSERT_TRUE(upload.ok()) << upload.status();
  int mismatches = 0;
  for (const StreamResult& r : RunStreams(**upload, std::move(streams))) {
    mismatches += r.status.message() == "activations: digest mismatch";
  }
  EXPECT_EQ(mismatches, 1);
}

TEST_F(StripedUploadTest, ADamagedChunkFailsTheUploadAndLeavesNoFile) {
  std::vector<std::vector<v1::UploadResultRequest>> streams = Streams(3);
  (*streams[1][2].mutable_chunk()->mutable_data())[5] ^= 0x10;
  {
    auto upload = Create(Stripe(outputs_, 3));
    ASSERT_TRUE(upload.ok()) << upload.status();
    const std::vector<StreamResult> results = RunStreams(**upload, streams);
    EXPECT_EQ(results[1].status.code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(results[1].status.message().find("CRC-32C"), std::string::npos)
        << results[1].status;
    // A stream that ended before may have heard OK; none heard that the
    // upload is in.
    for (const StreamResult& r : results) EXPECT_FALSE(r.status.ok() && r.last);
    EXPECT_TRUE((*upload)->received().empty());
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(StripedUploadTest, BytesThatDoNotMatchTheManifestAreRefused) {
  // Consistent chunks (their CRC-32C right) of other bytes: only the
  // manifest's digest can tell.
  std::vector<Output> sent = outputs_;
  sent[0].bytes[7 * kUnit + 3] ^= 0x01;
  auto upload = Create(Stripe(outputs_, 3));
  ASSERT_TRUE(upload.ok()) << upload.status();
  std::vector<std::vector<v1::UploadResultRequest>> streams;
  for (int i = 0; i < 3; ++i) streams.push_back(StreamOf(sent, i, 3));
  const std::vector<StreamResult> results = RunStreams(**upload, streams);
  bool mismatch = false;
  for (const StreamResult& r : results) {
    EXPECT_FALSE(r.status.ok() && r.last);
    mismatch |= r.status.code() == absl::StatusCode::kDataLoss &&
                r.status.message() == "result: digest mismatch";
  }
  EXPECT_TRUE(mismatch);
  EXPECT_TRUE((*upload)->received().empty());
}

TEST_F(StripedUploadTest, OutOfOrderShortAndRepeatedStreamsAreRefused) {
  {
    std::vector<std::vector<v1::UploadResultRequest>> streams = Streams(2);
    std::swap(streams[0][0], streams[0][1]);
    auto upload = Create(Stripe(outputs_, 2));
    ASSERT_TRUE(upload.ok());
    const std::vector<StreamResult> results = RunStreams(**upload, streams);
    EXPECT_EQ(results[0].status.code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(results[0].status.message().find("expected result at offset 0"),
              std::string::npos)
        << results[0].status;
  }
  {
    std::vector<std::vector<v1::UploadResultRequest>> streams = Streams(2);
    streams[1].pop_back();
    auto upload = Create(Stripe(outputs_, 2));
    ASSERT_TRUE(upload.ok());
    const std::vector<StreamResult> results = RunStreams(**upload, streams);
    EXPECT_EQ(results[1].status.code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(results[1].status.message().find("stream 1 ended at activations"),
              std::string::npos)
        << results[1].status;
  }
  {
    auto upload = Create(Stripe(outputs_, 2));
    ASSERT_TRUE(upload.ok());
    uint64_t bytes;
    bool last;
    EXPECT_TRUE(
        (*upload)
            ->ReceiveStream(0, Reader(StreamOf(outputs_, 0, 2)), &bytes, &last)
            .ok());
    EXPECT_FALSE(last);
    EXPECT_EQ(
        (*upload)
            ->ReceiveStream(0, Reader(StreamOf(outputs_, 0, 2)), &bytes, &last)
            .code(),
        absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(
        (*upload)
            ->ReceiveStream(1, Reader(StreamOf(outputs_, 1, 2)), &bytes, &last)
            .code(),
        absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(StripedUploadTest, AnAbortedUploadRefusesItsStreams) {
  auto upload = Create(Stripe(outputs_, 2));
  ASSERT_TRUE(upload.ok());
  uint64_t bytes;
  bool last;
  ASSERT_TRUE(
      (*upload)
          ->ReceiveStream(0, Reader(StreamOf(outputs_, 0, 2)), &bytes, &last)
          .ok());
  (*upload)->Abort(absl::AbortedError("a newer upload began"));
  const absl::Status status = (*upload)->ReceiveStream(
      1, Reader(StreamOf(outputs_, 1, 2)), &bytes, &last);
  EXPECT_EQ(status, absl::AbortedError("a newer upload began"));
  EXPECT_TRUE((*upload)->received().empty());
}

TEST_F(StripedUploadTest, AManifestThatLiesIsRefusedBeforeAnyByte) {
  v1::UploadStripe stripe = Stripe(outputs_, 2);
  stripe.mutable_outputs(0)->set_name("weights");
  EXPECT_EQ(Create(stripe).status().code(), absl::StatusCode::kInvalidArgument);
  stripe = Stripe(outputs_, 2);
  stripe.mutable_outputs(1)->set_name("result");
  EXPECT_EQ(Create(stripe).status().code(), absl::StatusCode::kInvalidArgument);
  stripe = Stripe(outputs_, 2);
  stripe.mutable_outputs(2)->set_size_bytes(uint64_t{1} << 40);
  EXPECT_EQ(Create(stripe).status().code(), absl::StatusCode::kInvalidArgument);
  stripe = Stripe(outputs_, 2);
  stripe.mutable_outputs(3)->set_digest("not hex");
  EXPECT_EQ(Create(stripe).status().code(), absl::StatusCode::kInvalidArgument);
  stripe = Stripe(outputs_, 2);
  stripe.mutable_outputs()->RemoveLast();
  EXPECT_EQ(
      Create(stripe).status(),
      absl::FailedPreconditionError("the upload lacks output \"activations\""));
  stripe = Stripe(outputs_, 0);
  EXPECT_EQ(Create(stripe).status().code(), absl::StatusCode::kInvalidArgument);
  stripe = Stripe(outputs_, 2);
  stripe.set_unit_bytes(16);
  EXPECT_EQ(Create(stripe).status().code(), absl::StatusCode::kInvalidArgument);
  // An output the task may leave out (activations committed deferred).
  stripe = Stripe(outputs_, 2);
  stripe.mutable_outputs()->RemoveLast();
  EXPECT_TRUE(
      StripedUpload::Create(dir_, stripe, expected_, {"activations"}, 1 << 20)
          .ok());
}

TEST_F(StripedUploadTest, SameUploadComparesIdAndManifest) {
  auto upload = Create(Stripe(outputs_, 2, "a"));
  ASSERT_TRUE(upload.ok());
  v1::UploadStripe stripe = Stripe(outputs_, 2, "a");
  stripe.set_index(1);
  EXPECT_TRUE((*upload)->SameUpload(stripe));
  EXPECT_FALSE((*upload)->SameUpload(Stripe(outputs_, 2, "b")));
  EXPECT_FALSE((*upload)->SameUpload(Stripe(outputs_, 3, "a")));
  stripe.mutable_outputs(0)->set_size_bytes(1);
  EXPECT_FALSE((*upload)->SameUpload(stripe));
}

}  // namespace
}  // namespace quant
