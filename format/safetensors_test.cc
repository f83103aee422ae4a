#include "format/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/test_data.h"
#include "format/half.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

namespace fs = std::filesystem;

#define ASSERT_OK(expr)                                       \
  do {                                                        \
    const absl::Status assert_ok_status_ = (expr);            \
    ASSERT_TRUE(assert_ok_status_.ok()) << assert_ok_status_; \
  } while (0)

std::string LengthPrefix(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(n & 0xff);
    n >>= 8;
  }
  return out;
}

// Raw file: length prefix of `header`, the header, then `data`.
std::string Safetensors(const std::string& header, const std::string& data) {
  return LengthPrefix(header.size()) + header + data;
}

void WriteRaw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string Bytes(const TensorView& t) {
  return std::string(reinterpret_cast<const char*>(t.data), t.nbytes);
}

// Deterministic bytes for a tensor.
std::string Pattern(size_t n, int seed) {
  std::string out(n, '\0');
  uint32_t x = 2463534242u + static_cast<uint32_t>(seed) * 7919u;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    out[i] = static_cast<char>(x & 0xff);
  }
  return out;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTestTempDir(
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Writes `bytes` and expects Open to fail with `code` and `substring`; the
  // message must also name the file.
  void ExpectOpenError(const std::string& bytes, absl::StatusCode code,
                       const std::string& substring) {
    const std::string path = dir_ + "/bad.safetensors";
    WriteRaw(path, bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << "expected failure: " << substring;
    EXPECT_EQ(file.status().code(), code) << file.status();
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(substring));
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
  }

  void ExpectHeaderError(const std::string& header, const std::string& data,
                         absl::StatusCode code, const std::string& substring) {
    ExpectOpenError(Safetensors(header, data), code, substring);
  }

  std::string dir_;
};

// ---------------------------------------------------------------------------
// dtypes

TEST(SafetensorsDTypeTest, NamesSizesAndParseRoundTrip) {
  const struct {
    SafetensorsDType dtype;
    const char* name;
    size_t size;
  } kCases[] = {
      {SafetensorsDType::kBool, "BOOL", 1},
      {SafetensorsDType::kU8, "U8", 1},
      {SafetensorsDType::kI8, "I8", 1},
      {SafetensorsDType::kU16, "U16", 2},
      {SafetensorsDType::kI16, "I16", 2},
      {SafetensorsDType::kF16, "F16", 2},
      {SafetensorsDType::kBF16, "BF16", 2},
      {SafetensorsDType::kU32, "U32", 4},
      {SafetensorsDType::kI32, "I32", 4},
      {SafetensorsDType::kF32, "F32", 4},
      {SafetensorsDType::kU64, "U64", 8},
      {SafetensorsDType::kI64, "I64", 8},
      {SafetensorsDType::kF64, "F64", 8},
      {SafetensorsDType::kF8E4M3, "F8_E4M3", 1},
      {SafetensorsDType::kF8E5M2, "F8_E5M2", 1},
  };
  for (const auto& c : kCases) {
    EXPECT_EQ(SafetensorsDTypeName(c.dtype), c.name);
    EXPECT_EQ(SafetensorsDTypeSize(c.dtype), c.size) << c.name;
    absl::StatusOr<SafetensorsDType> parsed = ParseSafetensorsDType(c.name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, c.dtype) << c.name;
  }
  absl::StatusOr<SafetensorsDType> bad = ParseSafetensorsDType("bf16");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("'bf16'"));
}

// ---------------------------------------------------------------------------
// Writer -> reader

struct Spec {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
};

// Copies out of a mapping, small (one memcpy) and large (stretches on
// every core, the last one short), are the source bytes, offsets and all.
TEST(CopyFromMappingTest, CopiesEveryByteOfOddSizes) {
  for (const size_t size : {size_t{0}, size_t{5}, (size_t{64} << 20) + 4099,
                            (size_t{80} << 20) + 1}) {
    std::vector<uint8_t> source(size + 3);
    uint32_t x = 12345;
    for (uint8_t& b : source)
      b = static_cast<uint8_t>((x = x * 1103515245u + 12345u) >> 24);
    std::vector<uint8_t> copy(size, 0xAA);
    CopyFromMapping(copy.data(), source.data() + 3, size);
    EXPECT_TRUE(std::equal(copy.begin(), copy.end(), source.begin() + 3))
        << size << " bytes";
  }
}

// A large conversion (stretches on every core) gives each element's scalar
// conversion, from an offset, for BF16 and F64.
TEST(TensorViewTest, LargeConversionsMatchTheScalarOne) {
  const int64_t n = (int64_t{1} << 22) + (int64_t{1} << 16) + 5;
  std::vector<uint16_t> bf16(n);
  std::vector<double> f64(n);
  for (int64_t i = 0; i < n; ++i) {
    bf16[i] = static_cast<uint16_t>(i * 2654435761u >> 16);
    f64[i] = static_cast<double>(i) * 0.37 - 1e5;
  }
  TensorView bf16_view{"b",
                       SafetensorsDType::kBF16,
                       {n},
                       reinterpret_cast<const uint8_t*>(bf16.data()),
                       bf16.size() * 2};
  TensorView f64_view{"d",
                      SafetensorsDType::kF64,
                      {n},
                      reinterpret_cast<const uint8_t*>(f64.data()),
                      f64.size() * 8};
  std::vector<float> out(n - 3);
  ASSERT_TRUE(bf16_view.ToFloat(3, n - 3, out.data()).ok());
  int64_t wrong = 0;
  for (int64_t i = 0; i < n - 3; ++i) {
    const float want = Bf16ToFloat(bf16[i + 3]);
    wrong += std::memcmp(&out[i], &want, 4) != 0;
  }
  EXPECT_EQ(wrong, 0);
  ASSERT_TRUE(f64_view.ToFloat(3, n - 3, out.data()).ok());
  for (int64_t i = 0; i < n - 3; ++i) {
    wrong += out[i] != static_cast<float>(f64[i + 3]);
  }
  EXPECT_EQ(wrong, 0);
}

TEST_F(SafetensorsTest, RoundTripSeveralDTypesOddShapesChunksAndMetadata) {
  const std::vector<Spec> specs = {
      {"w.f32", SafetensorsDType::kF32, {3, 5}},
      {"w.bf16", SafetensorsDType::kBF16, {7}},
      {"w.f16", SafetensorsDType::kF16, {2, 3, 1}},
      {"idx.i8", SafetensorsDType::kI8, {5}},
      {"big.u64", SafetensorsDType::kU64, {1}},
      {"mask", SafetensorsDType::kBool, {3}},
      {"empty.f8", SafetensorsDType::kF8E4M3, {0, 4}},
      {"scalar.i32", SafetensorsDType::kI32, {}},
      {"d.f64", SafetensorsDType::kF64, {2}},
      {"\xc3\xbcnicode.name", SafetensorsDType::kF8E5M2, {1, 1, 1, 3}},
  };
  const std::string path = dir_ + "/model.safetensors";
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  (*writer)->SetMetadata("format", "pt");
  (*writer)->SetMetadata("note", "caf\xc3\xa9");
  std::vector<std::string> payloads;
  for (size_t i = 0; i < specs.size(); ++i) {
    ASSERT_OK(
        (*writer)->AddTensor(specs[i].name, specs[i].dtype, specs[i].shape));
    int64_t n = 1;
    for (int64_t d : specs[i].shape) n *= d;
    payloads.push_back(
        Pattern(static_cast<size_t>(n) * SafetensorsDTypeSize(specs[i].dtype),
                static_cast<int>(i)));
  }
  // Pieces of 1, 2, 3, ... bytes; the empty tensor gets no call at all.
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string& p = payloads[i];
    size_t done = 0;
    size_t piece = 1;
    while (done < p.size()) {
      const size_t n = std::min(piece++, p.size() - done);
      ASSERT_OK((*writer)->WriteTensorData(specs[i].name, p.data() + done, n));
      done += n;
    }
  }
  // Nothing visible before Finish().
  EXPECT_FALSE(fs::exists(path));
  ASSERT_OK((*writer)->Finish());
  EXPECT_THAT(ListDir(dir_), ElementsAre("model.safetensors"));
  // The header, as SafetensorsFileHeader encodes it without a file.
  std::vector<SafetensorsTensorDecl> declared;
  for (const Spec& spec : specs) {
    declared.push_back({spec.name, spec.dtype, spec.shape});
  }
  const absl::StatusOr<std::string> header = SafetensorsFileHeader(
      declared, {{"format", "pt"}, {"note", "caf\xc3\xa9"}});
  ASSERT_TRUE(header.ok()) << header.status();
  const absl::StatusOr<std::string> written = ReadFileToString(path);
  ASSERT_TRUE(written.ok());
  EXPECT_EQ(written->substr(0, header->size()), *header);
  EXPECT_FALSE(SafetensorsFileHeader({{"", SafetensorsDType::kF32, {1}}}).ok());
  EXPECT_FALSE(
      SafetensorsFileHeader({{"x", SafetensorsDType::kF32, {-1}}}).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header_size() % 8, 0u);
  EXPECT_EQ((*file)->path(), path);
  EXPECT_EQ((*file)->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"},
                                                {"note", "caf\xc3\xa9"}}));
  ASSERT_EQ((*file)->tensors().size(), specs.size());
  size_t total = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    // Data-offset order is declaration order.
    const TensorView& t = (*file)->tensors()[i];
    EXPECT_EQ(t.name, specs[i].name);
    EXPECT_EQ(t.dtype, specs[i].dtype) << t.name;
    EXPECT_EQ(t.shape, specs[i].shape) << t.name;
    EXPECT_EQ(t.nbytes, payloads[i].size()) << t.name;
    EXPECT_EQ(Bytes(t), payloads[i]) << t.name;
    EXPECT_EQ((*file)->Find(specs[i].name), &t);
    total += t.nbytes;
  }
  EXPECT_EQ((*file)->Find("scalar.i32")->num_elements(), 1);
  EXPECT_EQ((*file)->Find("empty.f8")->num_elements(), 0);
  EXPECT_EQ((*file)->Find("absent"), nullptr);
  EXPECT_EQ(fs::file_size(path), 8 + (*file)->header_size() + total);
  // The data area starts 8-aligned in the mapping.
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*file)->tensors()[0].data) % 8, 0u);
}

TEST_F(SafetensorsTest, WriterProducesExactBytes) {
  const std::string path = dir_ + "/one.safetensors";
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_OK((*writer)->AddTensor("t", SafetensorsDType::kF32, {1}));
  const float value = 1.5f;
  ASSERT_OK((*writer)->WriteTensorData("t", &value, sizeof(value)));
  ASSERT_OK((*writer)->Finish());
  auto contents = ReadFileToString(path);
  ASSERT_TRUE(contents.ok()) << contents.status();
  const std::string header =
      R"({"t":{"data_offsets":[0,4],"dtype":"F32","shape":[1]}})";
  // 54 bytes of JSON, padded to 56.
  ASSERT_EQ(header.size(), 54u);
  const std::string expected =
      LengthPrefix(56) + header + "  " + std::string("\x00\x00\xc0\x3f", 4);
  EXPECT_EQ(*contents, expected);
}

TEST_F(SafetensorsTest, ForEachWindowPassesEveryByteInOrder) {
  const std::string path = dir_ + "/windows.safetensors";
  std::vector<uint8_t> bytes(10007);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = i * 31 % 251;
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_OK((*writer)->AddTensor("t", SafetensorsDType::kU8,
                                 {static_cast<int64_t>(bytes.size())}));
  ASSERT_OK((*writer)->WriteTensorData("t", bytes.data(), bytes.size()));
  ASSERT_OK((*writer)->Finish());
  auto checkpoint = SafetensorsCheckpoint::Open(path);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const TensorView view = *(*checkpoint)->Get("t");
  std::vector<uint8_t> seen;
  int windows = 0;
  ASSERT_OK(
      (*checkpoint)
          ->ForEachWindow(view, 4096, [&](const uint8_t* data, size_t size) {
            EXPECT_LE(size, 4096u);
            seen.insert(seen.end(), data, data + size);
            ++windows;
            return absl::OkStatus();
          }));
  EXPECT_EQ(seen, bytes);
  EXPECT_EQ(windows, 3);
  // Still readable after the pages were dropped (read again from the file).
  EXPECT_EQ(view.CopyElements<uint8_t>(), bytes);
  // An error stops the pass and is returned.
  windows = 0;
  const absl::Status stopped =
      (*checkpoint)->ForEachWindow(view, 4096, [&](const uint8_t*, size_t) {
        ++windows;
        return absl::DataLossError("disk");
      });
  EXPECT_EQ(stopped.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(windows, 1);
}

TEST_F(SafetensorsTest, EmptyFileWithNoTensorsRoundTrips) {
  const std::string path = dir_ + "/empty.safetensors";
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_OK((*writer)->Finish());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

// ---------------------------------------------------------------------------
// ToFloat

TEST_F(SafetensorsTest, ToFloatMatchesHalfConversions) {
  const std::vector<float> values = {0.0f,     -0.0f,    1.0f,  -2.5f,
                                     3.14159f, 65504.0f, 1e-6f, -1e-3f,
                                     123.456f, INFINITY, 1e30f};
  std::vector<uint16_t> bf16;
  std::vector<uint16_t> f16;
  std::vector<double> f64;
  for (float v : values) {
    bf16.push_back(FloatToBf16(v));
    f16.push_back(FloatToHalf(v));
    f64.push_back(static_cast<double>(v) + 1e-12);
  }
  const std::vector<int8_t> i8 = {1, -2, 3};
  const int64_t n = static_cast<int64_t>(values.size());
  const std::string path = dir_ + "/floats.safetensors";
  {
    auto writer = SafetensorsWriter::Create(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    auto& w = **writer;
    ASSERT_OK(w.AddTensor("bf16", SafetensorsDType::kBF16, {n}));
    ASSERT_OK(w.AddTensor("f16", SafetensorsDType::kF16, {1, n}));
    ASSERT_OK(w.AddTensor("f32", SafetensorsDType::kF32, {n, 1}));
    ASSERT_OK(w.AddTensor("f64", SafetensorsDType::kF64, {n}));
    ASSERT_OK(w.AddTensor("i8", SafetensorsDType::kI8, {3}));
    ASSERT_OK(w.WriteTensorData("bf16", bf16.data(), bf16.size() * 2));
    ASSERT_OK(w.WriteTensorData("f16", f16.data(), f16.size() * 2));
    ASSERT_OK(w.WriteTensorData("f32", values.data(), values.size() * 4));
    ASSERT_OK(w.WriteTensorData("f64", f64.data(), f64.size() * 8));
    ASSERT_OK(w.WriteTensorData("i8", i8.data(), i8.size()));
    ASSERT_OK(w.Finish());
  }
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();

  auto bf = (*file)->Find("bf16")->ToFloatVector();
  auto hf = (*file)->Find("f16")->ToFloatVector();
  auto ff = (*file)->Find("f32")->ToFloatVector();
  auto df = (*file)->Find("f64")->ToFloatVector();
  ASSERT_TRUE(bf.ok() && hf.ok() && ff.ok() && df.ok());
  ASSERT_EQ(bf->size(), values.size());
  ASSERT_EQ(hf->size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(FloatBits((*bf)[i]), FloatBits(Bf16ToFloat(bf16[i]))) << i;
    EXPECT_EQ(FloatBits((*hf)[i]), FloatBits(HalfToFloat(f16[i]))) << i;
    EXPECT_EQ(FloatBits((*ff)[i]), FloatBits(values[i])) << i;
    EXPECT_EQ(FloatBits((*df)[i]), FloatBits(static_cast<float>(f64[i]))) << i;
  }
  // Spot values the conversions must get right.
  EXPECT_EQ((*bf)[2], 1.0f);
  EXPECT_EQ((*hf)[3], -2.5f);
  EXPECT_EQ((*hf)[5], 65504.0f);
  EXPECT_TRUE(std::isinf((*hf)[10]));  // 1e30 overflows half.

  // A sub-range.
  float part[3] = {};
  ASSERT_OK((*file)->Find("bf16")->ToFloat(2, 3, part));
  EXPECT_EQ(part[0], (*bf)[2]);
  EXPECT_EQ(part[1], (*bf)[3]);
  EXPECT_EQ(part[2], (*bf)[4]);
  ASSERT_OK((*file)->Find("f16")->ToFloat(n, 0, part));  // Empty at the end.

  // Out of range.
  const TensorView* t = (*file)->Find("f16");
  EXPECT_EQ(t->ToFloat(-1, 1, part).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t->ToFloat(n - 1, 2, part).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(t->ToFloat(0, -1, part).code(), absl::StatusCode::kOutOfRange);
  const absl::Status far = t->ToFloat(n + 1, 0, part);
  EXPECT_EQ(far.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(far.message()), HasSubstr("'f16'"));

  // Non-float dtypes.
  const absl::Status not_float = (*file)->Find("i8")->ToFloat(0, 1, part);
  EXPECT_EQ(not_float.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(not_float.message()), HasSubstr("'i8'"));
  EXPECT_THAT(std::string(not_float.message()), HasSubstr("I8"));
  EXPECT_EQ((*file)->Find("i8")->ToFloatVector().status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Writer errors

TEST_F(SafetensorsTest, WriterRejectsBadDeclarations) {
  const std::string path = dir_ + "/w.safetensors";
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  auto& w = **writer;
  ASSERT_OK(w.AddTensor("a", SafetensorsDType::kF32, {2}));

  absl::Status s = w.AddTensor("a", SafetensorsDType::kF32, {2});
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'a'"));

  s = w.AddTensor("", SafetensorsDType::kF32, {2});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("empty tensor name"));

  s = w.AddTensor("bad\xff", SafetensorsDType::kF32, {2});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("tensor 'bad\\xff': name is not valid UTF-8"));

  s = w.AddTensor("__metadata__", SafetensorsDType::kF32, {2});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("reserved"));

  s = w.AddTensor("neg", SafetensorsDType::kF32, {2, -3});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("negative dimension -3"));

  s = w.AddTensor("huge", SafetensorsDType::kF64, {int64_t{1} << 61});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("overflows int64"));

  s = w.WriteTensorData("nope", "x", 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'nope'"));

  const float data[2] = {1, 2};
  ASSERT_OK(w.WriteTensorData("a", data, sizeof(data)));
  s = w.AddTensor("late", SafetensorsDType::kF32, {1});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("before any data"));
  ASSERT_OK(w.Finish());
  s = w.Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);

  // The file is intact despite the rejected calls.
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 1u);
  EXPECT_EQ((*file)->tensors()[0].name, "a");
}

TEST_F(SafetensorsTest, WriterRejectsTooManyBytesAndOutOfOrder) {
  const std::string path = dir_ + "/w.safetensors";
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  auto& w = **writer;
  ASSERT_OK(w.AddTensor("first", SafetensorsDType::kF16, {4}));  // 8 bytes
  ASSERT_OK(w.AddTensor("second", SafetensorsDType::kU8, {3}));  // 3 bytes
  const std::string bytes = Pattern(16, 1);

  absl::Status s = w.WriteTensorData("second", bytes.data(), 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("out of order"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("'first'"));

  ASSERT_OK(w.WriteTensorData("first", bytes.data(), 5));
  s = w.WriteTensorData("first", bytes.data(), 4);  // 5 + 4 > 8.
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("exceed its size of 8"));
  ASSERT_OK(w.WriteTensorData("first", bytes.data() + 5, 3));

  // "first" is complete: more bytes for it are an error, not a new tensor.
  s = w.WriteTensorData("first", bytes.data(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'first'"));
  ASSERT_OK(w.WriteTensorData("second", bytes.data() + 8, 3));
  ASSERT_OK(w.Finish());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(Bytes(*(*file)->Find("first")), bytes.substr(0, 8));
  EXPECT_EQ(Bytes(*(*file)->Find("second")), bytes.substr(8, 3));
}

TEST_F(SafetensorsTest, FinishWithIncompleteTensorLeavesNoFile) {
  const std::string path = dir_ + "/w.safetensors";
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  auto& w = **writer;
  ASSERT_OK(w.AddTensor("a", SafetensorsDType::kF32, {4}));
  ASSERT_OK(w.AddTensor("b", SafetensorsDType::kF32, {1}));
  ASSERT_OK(w.WriteTensorData("a", Pattern(16, 0).data(), 16));
  ASSERT_OK(w.WriteTensorData("b", Pattern(3, 0).data(), 3));
  const absl::Status s = w.Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("'b' is incomplete: 3 of 4 bytes"));
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(ListDir(dir_).empty());  // The temporary file is gone too.
  // The failed writer refuses further use.
  EXPECT_EQ(w.WriteTensorData("b", "x", 1).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(w.Finish().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(SafetensorsTest, AbandonedWriterLeavesNoFile) {
  const std::string path = dir_ + "/w.safetensors";
  {
    auto writer = SafetensorsWriter::Create(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_OK((*writer)->AddTensor("a", SafetensorsDType::kU8, {4}));
    ASSERT_OK((*writer)->WriteTensorData("a", "abcd", 4));
    EXPECT_EQ(ListDir(dir_).size(), 1u);  // Only the temporary file.
    EXPECT_FALSE(fs::exists(path));
  }
  EXPECT_TRUE(ListDir(dir_).empty());
}

TEST_F(SafetensorsTest, WriterRejectsNonUtf8Metadata) {
  const std::string path = dir_ + "/w.safetensors";
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  (*writer)->SetMetadata("key", "bad\xc3");
  const absl::Status s = (*writer)->Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("not valid UTF-8"));
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(SafetensorsTest, CreateInMissingDirectoryFails) {
  auto writer = SafetensorsWriter::Create(dir_ + "/no/such/dir/x.safetensors");
  EXPECT_FALSE(writer.ok());
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------
// Malformed files, one case each

const absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
const absl::StatusCode kDataLoss = absl::StatusCode::kDataLoss;

TEST_F(SafetensorsTest, AcceptsHandWrittenFileWithSpacePadding) {
  const std::string header =
      R"({"__metadata__":{"k":"v"},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
      R"("a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}      )";
  const std::string path = dir_ + "/ok.safetensors";
  WriteRaw(path, Safetensors(header, "ABCDEF"));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 2u);
  EXPECT_EQ((*file)->tensors()[0].name, "a");  // Sorted by offset.
  EXPECT_EQ(Bytes((*file)->tensors()[0]), "ABCD");
  EXPECT_EQ(Bytes((*file)->tensors()[1]), "EF");
  EXPECT_EQ((*file)->metadata().at("k"), "v");
}

TEST_F(SafetensorsTest, RejectsFileShorterThanEightBytes) {
  ExpectOpenError(std::string("\x05\x00\x00", 3), kDataLoss,
                  "file is 3 bytes, shorter than the 8-byte");
  ExpectOpenError("", kDataLoss, "file is 0 bytes");
}

TEST_F(SafetensorsTest, RejectsHeaderLongerThanFile) {
  ExpectOpenError(LengthPrefix(1000) + "{}", kDataLoss,
                  "header length 1000 runs past the end of the 10-byte file");
}

TEST_F(SafetensorsTest, RejectsHeaderOverLimit) {
  ExpectOpenError(LengthPrefix(200000000) + "{}", kInvalid,
                  "header length 200000000 exceeds the limit");
  ExpectOpenError(LengthPrefix(~uint64_t{0}) + "{}", kInvalid,
                  "exceeds the limit");
}

TEST_F(SafetensorsTest, RejectsMalformedJson) {
  ExpectHeaderError(R"({"a": {"dtype": )", "", kInvalid,
                    "header is not well-formed JSON");
  ExpectHeaderError("", "", kInvalid, "not well-formed JSON");
  ExpectHeaderError(std::string("{}\0\0", 4), "", kInvalid,
                    "not well-formed JSON: NUL byte at offset 2");
  ExpectHeaderError(std::string("{}\0{\"x\":1}", 10), "", kInvalid,
                    "NUL byte at offset 2");
}

TEST_F(SafetensorsTest, RejectsNonObjectHeader) {
  ExpectHeaderError("[1, 2]", "", kInvalid,
                    "header must be a JSON object, got array");
}

TEST_F(SafetensorsTest, RejectsDuplicateKeys) {
  ExpectHeaderError(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                    R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                    "xy", kInvalid, "duplicate key 'a'");
}

TEST_F(SafetensorsTest, RejectsEntryNotObject) {
  ExpectHeaderError(R"({"t": 5})", "", kInvalid,
                    "tensor 't': entry must be an object, got number");
}

TEST_F(SafetensorsTest, RejectsMissingOrWrongTypedDtype) {
  ExpectHeaderError(R"({"t":{"shape":[1],"data_offsets":[0,1]}})", "x",
                    kInvalid, "tensor 't': missing 'dtype'");
  ExpectHeaderError(R"({"t":{"dtype":4,"shape":[1],"data_offsets":[0,1]}})",
                    "x", kInvalid, "tensor 't': 'dtype' must be a string");
}

TEST_F(SafetensorsTest, RejectsUnknownDtype) {
  ExpectHeaderError(R"({"t":{"dtype":"F12","shape":[1],"data_offsets":[0,1]}})",
                    "x", kInvalid,
                    "tensor 't': unknown safetensors dtype 'F12'");
}

TEST_F(SafetensorsTest, RejectsMissingOrWrongTypedShape) {
  ExpectHeaderError(R"({"t":{"dtype":"U8","data_offsets":[0,1]}})", "x",
                    kInvalid, "tensor 't': missing 'shape'");
  ExpectHeaderError(R"({"t":{"dtype":"U8","shape":"1","data_offsets":[0,1]}})",
                    "x", kInvalid,
                    "tensor 't': 'shape' must be an array, got string");
  ExpectHeaderError(
      R"({"t":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "x",
      kInvalid, "tensor 't': 'shape' array [1.5] must hold integers");
}

TEST_F(SafetensorsTest, RejectsNegativeDimension) {
  ExpectHeaderError(
      R"({"t":{"dtype":"U8","shape":[2,-2],"data_offsets":[0,0]}})", "",
      kInvalid, "tensor 't': negative dimension -2 in 'shape' array [2,-2]");
}

TEST_F(SafetensorsTest, RejectsDeeplyNestedHeaderWithoutCrashing) {
  // 100000 levels in 'shape': once a stack overflow when the error message
  // serialised the shape; now refused while parsing.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  ExpectHeaderError(
      R"({"t":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,0]}})",
      "", kInvalid, "header nests deeper than 64 levels");
  // Nesting within the limit still gets a short description of the shape.
  const std::string nested = std::string(60, '[') + std::string(60, ']');
  ExpectHeaderError(
      R"({"t":{"dtype":"F32","shape":)" + nested + R"(,"data_offsets":[0,0]}})",
      "", kInvalid,
      "'shape' array of 1 element [[[[[[[[[...]]]]]]]]] must "
      "hold integers");
}

TEST_F(SafetensorsTest, RejectsElementCountOverflow) {
  ExpectHeaderError(
      R"({"t":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})",
      "", kInvalid,
      "element count of shape [4294967296, 4294967296] overflows");
}

TEST_F(SafetensorsTest, RejectsByteCountOverflow) {
  ExpectHeaderError(
      R"({"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})",
      "", kInvalid,
      "byte count of shape [4611686018427387904] x F32 overflows");
  // A dimension beyond int64.
  ExpectHeaderError(
      R"({"t":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})",
      "", kInvalid, "must hold integers in [0, 2^63)");
}

TEST_F(SafetensorsTest, RejectsMissingOrWrongTypedOffsets) {
  ExpectHeaderError(R"({"t":{"dtype":"U8","shape":[1]}})", "x", kInvalid,
                    "tensor 't': missing 'data_offsets'");
  ExpectHeaderError(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0]}})",
                    "x", kInvalid, "'data_offsets' must be [begin, end]");
  ExpectHeaderError(
      R"({"t":{"dtype":"U8","shape":[1],"data_offsets":["0",1]}})", "x",
      kInvalid, "'data_offsets' must be [begin, end]");
  ExpectHeaderError(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})",
                    "x", kInvalid, "'data_offsets' must be [begin, end]");
  ExpectHeaderError(
      R"({"t":{"dtype":"U8","shape":[1],"data_offsets":{"b":0}}})", "x",
      kInvalid, "'data_offsets' must be [begin, end]");
  ExpectHeaderError(
      R"({"t":{"dtype":"U8","shape":[1],"data_offsets":{"b":0}}})", "x",
      kInvalid, "non-negative integers, got object {\"b\":0}");
  ExpectHeaderError(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0]}})",
                    "x", kInvalid, "non-negative integers, got array [0]");
}

TEST_F(SafetensorsTest, RejectsOffsetsBeginAfterEnd) {
  ExpectHeaderError(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[2,1]}})",
                    "xy", kInvalid,
                    "tensor 't': data_offsets [2, 1] has begin > end");
}

TEST_F(SafetensorsTest, RejectsOffsetsPastEndOfFile) {
  ExpectHeaderError(
      R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", "xy",
      kDataLoss,
      "tensor 't': data_offsets [0, 4] run past the end of the file");
}

TEST_F(SafetensorsTest, RejectsByteCountMismatch) {
  ExpectHeaderError(
      R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
      std::string(12, 'x'), kInvalid,
      "data_offsets [0, 12] span 12 bytes but shape [2, 2] x F32 needs 16");
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectHeaderError(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                    R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                    "abcdef", kInvalid,
                    "tensor 'b' data_offsets [2, 6] overlap tensor 'a'");
}

TEST_F(SafetensorsTest, RejectsHoles) {
  ExpectHeaderError(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                    R"("b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
                    "abcdefgh", kInvalid, "hole of 4 bytes before tensor 'b'");
  ExpectHeaderError(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})",
                    "abc", kInvalid, "hole of 1 bytes before tensor 'a'");
}

TEST_F(SafetensorsTest, RejectsTrailingBytes) {
  ExpectHeaderError(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
                    "abcd", kInvalid,
                    "2 bytes after the last tensor are not covered");
}

TEST_F(SafetensorsTest, RejectsEmptyTensorName) {
  ExpectHeaderError(R"({"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                    "x", kInvalid, "empty tensor name");
}

TEST_F(SafetensorsTest, RejectsNonUtf8TensorName) {
  ExpectHeaderError(
      "{\"bad\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
      "x", kInvalid, "header is not valid UTF-8 at byte 5");
  // An overlong encoding is caught the same way.
  ExpectHeaderError(
      "{\"a\xc0\xaf\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
      "x", kInvalid, "not valid UTF-8");
}

TEST_F(SafetensorsTest, RejectsBadMetadata) {
  ExpectHeaderError(R"({"__metadata__":["a"]})", "", kInvalid,
                    "__metadata__ must be an object, got array");
  ExpectHeaderError(R"({"__metadata__":{"n":1}})", "", kInvalid,
                    "__metadata__ value of 'n' must be a string, got number");
}

TEST_F(SafetensorsTest, EveryTruncationAndHeaderCorruptionIsHandled) {
  const std::string path = dir_ + "/good.safetensors";
  {
    auto writer = SafetensorsWriter::Create(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    (*writer)->SetMetadata("format", "pt");
    ASSERT_OK((*writer)->AddTensor("a", SafetensorsDType::kBF16, {3, 2}));
    ASSERT_OK((*writer)->AddTensor("b", SafetensorsDType::kI64, {2}));
    ASSERT_OK((*writer)->WriteTensorData("a", Pattern(12, 5).data(), 12));
    ASSERT_OK((*writer)->WriteTensorData("b", Pattern(16, 6).data(), 16));
    ASSERT_OK((*writer)->Finish());
  }
  auto good = ReadFileToString(path);
  ASSERT_TRUE(good.ok());
  const std::string bad_path = dir_ + "/bad.safetensors";
  // Every proper prefix is rejected: the data area must be fully covered.
  for (size_t n = 0; n < good->size(); ++n) {
    WriteRaw(bad_path, good->substr(0, n));
    auto file = SafetensorsFile::Open(bad_path);
    ASSERT_FALSE(file.ok()) << "prefix of " << n << " bytes";
    EXPECT_TRUE(file.status().code() == absl::StatusCode::kDataLoss ||
                file.status().code() == absl::StatusCode::kInvalidArgument)
        << file.status();
  }
  // Every single-byte corruption of the length prefix and header either
  // fails cleanly or yields tensors inside the file.
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) {
    header_size = (header_size << 8) | static_cast<uint8_t>((*good)[i]);
  }
  int accepted = 0;
  for (size_t i = 0; i < 8 + header_size; ++i) {
    for (int value : {0x00, 0x20, 0x22, 0x30, 0x39, 0x5b, 0x7b, 0x7d, 0xff}) {
      std::string bytes = *good;
      if (static_cast<uint8_t>(bytes[i]) == value) continue;
      bytes[i] = static_cast<char>(value);
      WriteRaw(bad_path, bytes);
      auto file = SafetensorsFile::Open(bad_path);
      if (!file.ok()) continue;
      ++accepted;
      for (const TensorView& t : (*file)->tensors()) {
        EXPECT_TRUE((*file)->Contains(t)) << t.name;
        EXPECT_EQ(static_cast<int64_t>(t.nbytes),
                  t.num_elements() *
                      static_cast<int64_t>(SafetensorsDTypeSize(t.dtype)));
      }
    }
  }
  // Some edits are harmless (metadata text, a renamed tensor), most are not.
  EXPECT_GT(accepted, 0);
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  auto file = SafetensorsFile::Open(dir_ + "/absent.safetensors");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()),
              HasSubstr("absent.safetensors"));
}

// ---------------------------------------------------------------------------
// Release

TEST_F(SafetensorsTest, ReleaseDoesNotBreakLaterReads) {
  const std::string path = dir_ + "/big.safetensors";
  const std::string a = Pattern(3 * 4096 + 123, 1);
  const std::string b = Pattern(5 * 4096 + 7, 2);
  {
    auto writer = SafetensorsWriter::Create(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_OK((*writer)->AddTensor("a", SafetensorsDType::kU8,
                                   {static_cast<int64_t>(a.size())}));
    ASSERT_OK((*writer)->AddTensor("b", SafetensorsDType::kU8,
                                   {static_cast<int64_t>(b.size())}));
    ASSERT_OK((*writer)->WriteTensorData("a", a.data(), a.size()));
    ASSERT_OK((*writer)->WriteTensorData("b", b.data(), b.size()));
    ASSERT_OK((*writer)->Finish());
  }
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView& ta = *(*file)->Find("a");
  const TensorView& tb = *(*file)->Find("b");
  EXPECT_EQ(Bytes(ta), a);
  EXPECT_EQ(Bytes(tb), b);
  (*file)->Release(ta);
  (*file)->Release(tb);
  EXPECT_EQ(Bytes(ta), a);
  EXPECT_EQ(Bytes(tb), b);
  (*file)->Release(ta);
  EXPECT_EQ(Bytes(tb), b);
  EXPECT_EQ(Bytes(ta), a);
  // A view of another mapping is ignored.
  TensorView foreign;
  foreign.data = reinterpret_cast<const uint8_t*>(a.data());
  foreign.nbytes = a.size();
  EXPECT_FALSE((*file)->Contains(foreign));
  (*file)->Release(foreign);
  EXPECT_EQ(Bytes(ta), a);
}

// ---------------------------------------------------------------------------
// Checkpoints

// Writes a file with U8 tensors of the given names and sizes.
void WriteU8File(const std::string& path,
                 const std::vector<std::pair<std::string, int>>& tensors) {
  auto writer = SafetensorsWriter::Create(path);
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (const auto& [name, n] : tensors) {
    ASSERT_OK((*writer)->AddTensor(name, SafetensorsDType::kU8, {n}));
  }
  for (const auto& [name, n] : tensors) {
    const std::string bytes = Pattern(n, static_cast<int>(name.size()) + n);
    ASSERT_OK((*writer)->WriteTensorData(name, bytes.data(), bytes.size()));
  }
  ASSERT_OK((*writer)->Finish());
}

class SafetensorsCheckpointTest : public SafetensorsTest {
 protected:
  // Two shards: s1 = {a.x, a.y}, s2 = {b.z}.
  void MakeShards() {
    WriteU8File(dir_ + "/s1.safetensors", {{"a.x", 3}, {"a.y", 5}});
    WriteU8File(dir_ + "/s2.safetensors", {{"b.z", 2}});
  }
  void WriteIndex(const std::string& text) {
    WriteRaw(dir_ + "/model.safetensors.index.json", text);
  }
  void ExpectCheckpointError(absl::StatusCode code,
                             const std::string& substring) {
    auto checkpoint = SafetensorsCheckpoint::Open(dir_);
    ASSERT_FALSE(checkpoint.ok()) << "expected failure: " << substring;
    EXPECT_EQ(checkpoint.status().code(), code) << checkpoint.status();
    EXPECT_THAT(std::string(checkpoint.status().message()),
                HasSubstr(substring));
  }
};

TEST_F(SafetensorsCheckpointTest, OpensTwoShardsWithIndex) {
  MakeShards();
  ASSERT_OK(WriteSafetensorsIndex(dir_,
                                  {{"a.x", "s1.safetensors"},
                                   {"a.y", "s1.safetensors"},
                                   {"b.z", "s2.safetensors"}},
                                  10));
  // The index is the HF layout.
  auto text = ReadFileToString(dir_ + "/model.safetensors.index.json");
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, HasSubstr("\"total_size\": 10"));
  EXPECT_THAT(*text, HasSubstr("\"a.x\": \"s1.safetensors\""));

  for (const std::string& path :
       {dir_, dir_ + "/model.safetensors.index.json"}) {
    auto checkpoint = SafetensorsCheckpoint::Open(path);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    const SafetensorsCheckpoint& c = **checkpoint;
    EXPECT_EQ(c.num_files(), 2u);
    EXPECT_THAT(c.TensorNames(), ElementsAre("a.x", "a.y", "b.z"));
    EXPECT_TRUE(c.Has("b.z"));
    EXPECT_FALSE(c.Has("b"));
    auto t = c.Get("a.y");
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(Bytes(*t), Pattern(5, 3 + 5));
    EXPECT_EQ(c.FileOf("b.z")->path(), dir_ + "/s2.safetensors");
    auto shape = c.Shape("b.z");
    ASSERT_TRUE(shape.ok());
    EXPECT_THAT(*shape, ElementsAre(2));
    auto missing = c.Get("c.w");
    EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(std::string(missing.status().message()), HasSubstr("'c.w'"));
    EXPECT_EQ(c.Shape("c.w").status().code(), absl::StatusCode::kNotFound);
    c.Release(*t);
    EXPECT_EQ(Bytes(*t), Pattern(5, 3 + 5));
    EXPECT_THAT(c.index_metadata_json(), HasSubstr("\"total_size\":10"));
  }
}

TEST_F(SafetensorsCheckpointTest, IndexNamesMissingShard) {
  MakeShards();
  WriteIndex(
      R"({"weight_map": {"a.x": "s1.safetensors", "a.y": "s1.safetensors",
      "b.z": "s2.safetensors", "c": "s3.safetensors"}})");
  ExpectCheckpointError(absl::StatusCode::kNotFound, "shard 's3.safetensors'");
}

TEST_F(SafetensorsCheckpointTest, IndexListsTensorMissingFromShard) {
  MakeShards();
  WriteIndex(
      R"({"weight_map": {"a.x": "s1.safetensors", "a.y": "s1.safetensors",
      "b.z": "s2.safetensors", "b.q": "s2.safetensors"}})");
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        "lists tensor 'b.q' in shard 's2.safetensors', which "
                        "does not contain it");
}

TEST_F(SafetensorsCheckpointTest, ShardTensorNotInIndex) {
  MakeShards();
  WriteIndex(R"({"weight_map": {"a.x": "s1.safetensors",
      "b.z": "s2.safetensors"}})");
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        "holds tensor 'a.y', which the index does not list");
}

TEST_F(SafetensorsCheckpointTest, TensorInTwoShards) {
  WriteU8File(dir_ + "/s1.safetensors", {{"a.x", 3}});
  WriteU8File(dir_ + "/s2.safetensors", {{"a.x", 3}, {"b.z", 2}});
  WriteIndex(R"({"weight_map": {"a.x": "s1.safetensors",
      "b.z": "s2.safetensors"}})");
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        "shard 's2.safetensors' holds tensor 'a.x', which the "
                        "index places in 's1.safetensors'");
}

TEST_F(SafetensorsCheckpointTest, RejectsPathTraversal) {
  MakeShards();
  for (const std::string& bad : {"../s1.safetensors", "sub/s1.safetensors",
                                 "/tmp/s1.safetensors", "..", "."}) {
    WriteIndex(absl::StrCat(R"({"weight_map": {"a.x": ")", bad, R"("}})"));
    ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                          "must be a plain file name");
  }
  const absl::Status s =
      WriteSafetensorsIndex(dir_, {{"a.x", "../s1.safetensors"}}, 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("must be a plain file name"));
}

TEST_F(SafetensorsCheckpointTest, RejectsMalformedIndex) {
  MakeShards();
  WriteIndex(R"({"weight_map": {"a.x": "s1.safetensors",)");
  ExpectCheckpointError(
      absl::StatusCode::kInvalidArgument,
      "model.safetensors.index.json' is not well-formed JSON");
  WriteIndex(R"({"metadata": {}})");
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        "missing 'weight_map'");
  WriteIndex(R"({"weight_map": ["s1.safetensors"]})");
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        "'weight_map' must be an object, got array");
  WriteIndex(R"({"weight_map": {"a.x": 1}})");
  ExpectCheckpointError(
      absl::StatusCode::kInvalidArgument,
      "weight_map entry for tensor 'a.x' must be a file name");
  WriteIndex(R"({"weight_map": {}})");
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        "'weight_map' is empty");
  WriteIndex(R"({"weight_map": {"a.x": "s1.safetensors",
      "a.x": "s2.safetensors"}})");
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        "duplicate key 'a.x'");
}

TEST_F(SafetensorsCheckpointTest, RejectsDeeplyNestedIndex) {
  MakeShards();
  // The index's metadata is serialised into index_metadata_json().
  WriteIndex(R"({"metadata": )" + std::string(100000, '[') +
             std::string(100000, ']') +
             R"(, "weight_map": {"a.x": "s1.safetensors"}})");
  ExpectCheckpointError(
      absl::StatusCode::kInvalidArgument,
      "model.safetensors.index.json' nests deeper than 64 levels");
}

TEST_F(SafetensorsCheckpointTest, ShardErrorsNameTheShard) {
  MakeShards();
  WriteRaw(dir_ + "/s2.safetensors", "short");
  ASSERT_OK(WriteSafetensorsIndex(dir_,
                                  {{"a.x", "s1.safetensors"},
                                   {"a.y", "s1.safetensors"},
                                   {"b.z", "s2.safetensors"}},
                                  10));
  ExpectCheckpointError(absl::StatusCode::kDataLoss, "shard 's2.safetensors'");
}

TEST_F(SafetensorsCheckpointTest, DirectoryWithoutIndex) {
  // No safetensors at all.
  ExpectCheckpointError(absl::StatusCode::kNotFound,
                        "no model.safetensors.index.json");
  // Exactly one file of any name.
  WriteU8File(dir_ + "/weights.safetensors", {{"w", 4}});
  {
    auto c = SafetensorsCheckpoint::Open(dir_);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ((*c)->num_files(), 1u);
    EXPECT_THAT((*c)->TensorNames(), ElementsAre("w"));
  }
  // Two files: ambiguous.
  WriteU8File(dir_ + "/other.safetensors", {{"v", 4}});
  ExpectCheckpointError(absl::StatusCode::kInvalidArgument,
                        "2 *.safetensors files");
  // model.safetensors wins.
  WriteU8File(dir_ + "/model.safetensors", {{"m", 1}});
  {
    auto c = SafetensorsCheckpoint::Open(dir_);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_THAT((*c)->TensorNames(), ElementsAre("m"));
  }
  // A file path opens that file.
  {
    auto c = SafetensorsCheckpoint::Open(dir_ + "/other.safetensors");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_THAT((*c)->TensorNames(), ElementsAre("v"));
  }
  auto missing = SafetensorsCheckpoint::Open(dir_ + "/nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------
// The real model

TEST(SafetensorsRealModelTest, OpensLlama29mBooks) {
  const std::string data = SharedDataDir();
  if (data.empty()) {
    GTEST_SKIP() << "shared data (QS_SHARED_DATA/llama-29m-books) is absent";
  }
  const std::string dir = data + "/llama-29m-books";
  auto checkpoint = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const SafetensorsCheckpoint& c = **checkpoint;
  EXPECT_EQ(c.num_files(), 5u);
  // 8 layers x 9 tensors + embeddings, final norm, lm_head; the index lists
  // 75 names.
  EXPECT_EQ(c.TensorNames().size(), 75u);

  auto embed = c.Get("model.embed_tokens.weight");
  ASSERT_TRUE(embed.ok()) << embed.status();
  EXPECT_EQ(embed->dtype, SafetensorsDType::kBF16);
  EXPECT_THAT(embed->shape, ElementsAre(4096, 512));
  EXPECT_EQ(embed->nbytes, 4096u * 512u * 2u);

  const struct {
    const char* suffix;
    std::vector<int64_t> shape;
  } kLayerTensors[] = {
      {"self_attn.q_proj.weight", {512, 512}},
      {"self_attn.k_proj.weight", {256, 512}},
      {"self_attn.v_proj.weight", {256, 512}},
      {"self_attn.o_proj.weight", {512, 512}},
      {"mlp.gate_proj.weight", {1536, 512}},
      {"mlp.up_proj.weight", {1536, 512}},
      {"mlp.down_proj.weight", {512, 1536}},
      {"input_layernorm.weight", {512}},
      {"post_attention_layernorm.weight", {512}},
  };
  for (int layer = 0; layer < 8; ++layer) {
    for (const auto& lt : kLayerTensors) {
      const std::string name =
          absl::StrCat("model.layers.", layer, ".", lt.suffix);
      auto shape = c.Shape(name);
      ASSERT_TRUE(shape.ok()) << shape.status();
      EXPECT_EQ(*shape, lt.shape) << name;
    }
  }
  EXPECT_FALSE(c.Has("model.layers.8.input_layernorm.weight"));
  auto lm_head = c.Shape("lm_head.weight");
  ASSERT_TRUE(lm_head.ok());
  EXPECT_THAT(*lm_head, ElementsAre(4096, 512));

  // Shard metadata.
  const SafetensorsFile* shard = c.FileOf("model.embed_tokens.weight");
  ASSERT_NE(shard, nullptr);
  EXPECT_EQ(shard->metadata().at("format"), "pt");

  // Trained RMSNorm weights are finite and not all equal; reads survive a
  // Release.
  auto norm = c.Get("model.norm.weight");
  ASSERT_TRUE(norm.ok());
  auto values = norm->ToFloatVector();
  ASSERT_TRUE(values.ok()) << values.status();
  ASSERT_EQ(values->size(), 512u);
  float lo = (*values)[0], hi = (*values)[0];
  for (float v : *values) {
    ASSERT_TRUE(std::isfinite(v));
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  EXPECT_LT(lo, hi);
  auto embed_before = embed->ToFloatVector();
  ASSERT_TRUE(embed_before.ok());
  c.Release(*embed);
  auto embed_after = embed->ToFloatVector();
  ASSERT_TRUE(embed_after.ok());
  EXPECT_EQ(std::memcmp(embed_before->data(), embed_after->data(),
                        embed_before->size() * sizeof(float)),
            0);
}

}  // namespace
}  // namespace quant
