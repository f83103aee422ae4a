#include "model/calibration.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/test_data.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(SplitMix64Test, MatchesThePublishedSequence) {
  // The reference outputs of Vigna's splitmix64.c for seed 1234567.
  SplitMix64 random(1234567);
  EXPECT_EQ(random.Next(), 6457827717110365317ull);
  EXPECT_EQ(random.Next(), 3203168211198807973ull);
  EXPECT_EQ(random.Next(), 9817491932198370423ull);
}

// Outputs of CPython's random module (3.11) for the same seeds.
TEST(PythonRandomTest, MatchesCPython) {
  PythonRandom zero(0);
  EXPECT_EQ(zero.GetRandBits(32), 3626764237u);
  EXPECT_EQ(zero.GetRandBits(32), 1654615998u);
  EXPECT_EQ(zero.GetRandBits(32), 3255389356u);
  PythonRandom again(0);
  std::vector<int64_t> ints;
  for (int i = 0; i < 5; ++i) ints.push_back(again.RandInt(0, 1000));
  EXPECT_EQ(ints, (std::vector<int64_t>{864, 394, 776, 911, 430}));
  PythonRandom two_words(12345678901ull);  // A seed of two 32-bit words.
  ints.clear();
  for (int i = 0; i < 5; ++i) ints.push_back(two_words.RandInt(0, 70000));
  EXPECT_EQ(ints, (std::vector<int64_t>{42991, 50304, 46419, 15026, 21928}));
  PythonRandom small(7);
  ints.clear();
  for (int i = 0; i < 8; ++i) ints.push_back(small.RandInt(0, 5));
  EXPECT_EQ(ints, (std::vector<int64_t>{2, 1, 3, 5, 0, 0, 4, 0}));
}

TEST(CalibrationTest, PythonSamplingDrawsAsGptqsDataScripts) {
  std::vector<int32_t> stream(1000);
  for (int i = 0; i < 1000; ++i) stream[i] = i;
  // random.seed(5); [random.randint(0, 1000 - 10 - 1) for _ in range(3)]
  const int32_t starts[] = {637, 261, 759};
  const auto windows = SampleCalibrationWindows(
      stream, 3, 10, 5, CalibrationSampling::kPythonRandom);
  ASSERT_TRUE(windows.ok()) << windows.status();
  for (int s = 0; s < 3; ++s) {
    for (int t = 0; t < 10; ++t) {
      EXPECT_EQ((*windows)[s * 10 + t], starts[s] + t);
    }
  }
  EXPECT_EQ(SampleCalibrationWindows(std::vector<int32_t>(10, 1), 1, 10, 0,
                                     CalibrationSampling::kPythonRandom)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseCalibrationSampling("python"),
            CalibrationSampling::kPythonRandom);
  EXPECT_FALSE(ParseCalibrationSampling("torch").ok());
}

TEST(CalibrationTest, WindowsStartWhereTheDocumentedRuleSays) {
  std::vector<int32_t> stream(1000);
  for (int i = 0; i < 1000; ++i) stream[i] = i;
  const auto windows = SampleCalibrationWindows(stream, 3, 10, 1234567);
  ASSERT_TRUE(windows.ok()) << windows.status();
  ASSERT_EQ(windows->size(), 30u);
  const uint64_t starts[] = {6457827717110365317ull % 991,
                             3203168211198807973ull % 991,
                             9817491932198370423ull % 991};
  for (int s = 0; s < 3; ++s) {
    for (int t = 0; t < 10; ++t) {
      EXPECT_EQ((*windows)[s * 10 + t], static_cast<int32_t>(starts[s] + t));
    }
  }
  // Same seed, same windows; another seed, other windows.
  EXPECT_EQ(*SampleCalibrationWindows(stream, 3, 10, 1234567), *windows);
  EXPECT_NE(*SampleCalibrationWindows(stream, 3, 10, 7), *windows);
}

TEST(CalibrationTest, RejectsImpossibleRequests) {
  const std::vector<int32_t> stream(100, 5);
  EXPECT_EQ(SampleCalibrationWindows(stream, 1, 101, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SampleCalibrationWindows(stream, 0, 10, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A window as long as the stream is the stream itself.
  EXPECT_EQ(SampleCalibrationWindows(stream, 2, 100, 0)->size(), 200u);
}

TEST(CalibrationTest, ReadsNpyAndTextIds) {
  const std::string dir = MakeTestTempDir("calibration_ids");
  {
    std::ofstream text(dir + "/ids.txt");
    text << "1 2\n3\t40000\n";
  }
  EXPECT_EQ(*ReadTokenIds(dir + "/ids.txt"),
            (std::vector<int32_t>{1, 2, 3, 40000}));
  {
    std::ofstream bad(dir + "/bad.txt");
    bad << "1 two 3";
  }
  EXPECT_EQ(ReadTokenIds(dir + "/bad.txt").status().code(),
            absl::StatusCode::kInvalidArgument);
  // A version-1 .npy of int64 [3], as numpy.save writes it.
  std::string header =
      "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }";
  header.append(128 - 10 - header.size() - 1, ' ');
  header.push_back('\n');
  std::string npy = std::string("\x93NUMPY\x01\x00", 8);
  npy.push_back(static_cast<char>(header.size()));
  npy.push_back('\0');
  npy += header;
  for (int64_t v : {7, 8, 9}) npy.append(reinterpret_cast<char*>(&v), 8);
  {
    std::ofstream out(dir + "/ids.npy", std::ios::binary);
    out << npy;
  }
  EXPECT_EQ(*ReadTokenIds(dir + "/ids.npy"), (std::vector<int32_t>{7, 8, 9}));
  {
    std::ofstream out(dir + "/short.npy", std::ios::binary);
    out << npy.substr(0, npy.size() - 3);
  }
  const absl::Status truncated = ReadTokenIds(dir + "/short.npy").status();
  EXPECT_EQ(truncated.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(truncated.message().find("bytes"), std::string::npos) << truncated;
}

TEST(CalibrationTest, AnOversizedSourceIsRefusedUnread) {
  const std::string dir = MakeTestTempDir("calibration_big");
  const std::string path = dir + "/huge.txt";
  { std::ofstream out(path); }
  // Sparse: one byte over the limit, none of it on disk.
  std::filesystem::resize_file(path, kMaxCalibrationFileBytes + 1);
  for (bool tokens : {false, true}) {
    CalibrationOptions options;
    (tokens ? options.tokens_path : options.text_path) = path;
    const absl::Status status =
        LoadCalibrationWindows(dir + "/no-model", options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("1073741825 bytes"), std::string::npos)
        << status;
  }
}

TEST(CalibrationTest, TokenizesTheSharedCalibrationText) {
  const std::string data = SharedDataDir();
  if (data.empty()) GTEST_SKIP() << "../shared/data is absent";
  const std::string model = data + "/llama-29m-books";
  CalibrationOptions options;
  options.text_path = data + "/text/calibration.txt";
  options.samples = 4;
  options.seq_len = 64;
  const auto windows = LoadCalibrationWindows(model, options);
  ASSERT_TRUE(windows.ok()) << windows.status();
  ASSERT_EQ(windows->size(), 256u);
  for (int32_t id : *windows) ASSERT_TRUE(id >= 0 && id < 4096);
  // The reference ids of heldout_stories start with BOS; ids beyond the
  // vocabulary are refused with the position named.
  options.text_path.clear();
  options.tokens_path = model + "/reference/ref_tokens_stories_first64.npy";
  options.seq_len = 64;
  options.samples = 1;
  const auto ids = LoadCalibrationWindows(model, options);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ((*ids)[0], 1);
  const std::string dir = MakeTestTempDir("calibration_vocab");
  {
    std::ofstream out(dir + "/ids.txt");
    out << "1 5 4096 7";
  }
  options.tokens_path = dir + "/ids.txt";
  options.seq_len = 2;
  const absl::Status outside = LoadCalibrationWindows(model, options).status();
  EXPECT_EQ(outside.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(outside.message().find("token 2 is 4096"), std::string::npos)
      << outside;
}

}  // namespace
}  // namespace quant
