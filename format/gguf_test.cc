#include "format/gguf.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/test_data.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Little-endian byte builder for hand-made files, independent of the writer.
class Bytes {
 public:
  Bytes& Raw(absl::string_view s) {
    out_.append(s.data(), s.size());
    return *this;
  }
  template <typename T>
  Bytes& Le(T v) {
    char buf[sizeof(T)];
    std::memcpy(buf, &v, sizeof(T));
    out_.append(buf, sizeof(T));
    return *this;
  }
  Bytes& U8(uint8_t v) { return Le(v); }
  Bytes& U32(uint32_t v) { return Le(v); }
  Bytes& U64(uint64_t v) { return Le(v); }
  Bytes& Str(absl::string_view s) { return U64(s.size()).Raw(s); }
  Bytes& Header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
    return Raw("GGUF").U32(version).U64(tensors).U64(kvs);
  }
  Bytes& KvU32(absl::string_view key, uint32_t v) {
    return Str(key).U32(4).U32(v);
  }
  Bytes& TensorInfo(absl::string_view name, std::vector<uint64_t> dims,
                    uint32_t type, uint64_t offset) {
    Str(name).U32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) U64(d);
    return U32(type).U64(offset);
  }
  Bytes& PadTo(size_t alignment) {
    out_.resize((out_.size() + alignment - 1) / alignment * alignment, '\0');
    return *this;
  }
  Bytes& Zeros(size_t n) {
    out_.append(n, '\0');
    return *this;
  }
  const std::string& str() const { return out_; }
  size_t size() const { return out_.size(); }

 private:
  std::string out_;
};

class GgufTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTestTempDir("gguf_test"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(absl::string_view name) const {
    return absl::StrCat(dir_, "/", name);
  }

  std::vector<std::string> DirEntries() const {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  }

  absl::StatusOr<std::unique_ptr<GgufReader>> OpenBytes(
      const std::string& bytes) {
    const std::string path = Path("crafted.gguf");
    absl::Status status = WriteFileAtomically(path, bytes);
    if (!status.ok()) return status;
    return GgufReader::Open(path);
  }

  // Expects InvalidArgument mentioning every substring.
  void ExpectInvalid(const std::string& bytes,
                     std::vector<std::string> substrings) {
    absl::StatusOr<std::unique_ptr<GgufReader>> reader = OpenBytes(bytes);
    ASSERT_FALSE(reader.ok()) << "file unexpectedly accepted";
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kInvalidArgument)
        << reader.status();
    for (const std::string& s : substrings) {
      EXPECT_THAT(reader.status().message(), HasSubstr(s));
    }
  }

  std::string dir_;
};

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// ---------------------------------------------------------------- GgufValue

TEST(GgufValueTest, AccessorsConvertAndRejectMismatches) {
  EXPECT_EQ(*GgufValue::U8(200).AsUint(), 200u);
  EXPECT_EQ(*GgufValue::I32(7).AsUint(), 7u);
  EXPECT_EQ(*GgufValue::U64(5).AsInt(), 5);
  EXPECT_EQ(*GgufValue::I8(-3).AsInt(), -3);
  EXPECT_EQ(*GgufValue::I64(std::numeric_limits<int64_t>::min()).AsInt(),
            std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*GgufValue::F32(1.5f).AsFloat(), 1.5);
  EXPECT_EQ(*GgufValue::F64(-2.25).AsFloat(), -2.25);
  EXPECT_EQ(*GgufValue::U32(3).AsFloat(), 3.0);
  EXPECT_TRUE(*GgufValue::Bool(true).AsBool());
  EXPECT_EQ(*GgufValue::String("llama").AsString(), "llama");

  absl::StatusOr<uint64_t> neg = GgufValue::I32(-5).AsUint();
  EXPECT_EQ(neg.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(neg.status().message(), HasSubstr("non-negative"));
  EXPECT_THAT(neg.status().message(), HasSubstr("-5"));
  absl::StatusOr<int64_t> big =
      GgufValue::U64(std::numeric_limits<uint64_t>::max()).AsInt();
  EXPECT_THAT(big.status().message(), HasSubstr("does not fit"));
  EXPECT_THAT(GgufValue::U32(1).AsString().status().message(),
              HasSubstr("expected a string, got uint32"));
  EXPECT_THAT(GgufValue::String("x").AsUint().status().message(),
              HasSubstr("got string"));
  EXPECT_THAT(GgufValue::String("x").AsInt().status().message(),
              HasSubstr("got string"));
  EXPECT_THAT(GgufValue::Bool(true).AsFloat().status().message(),
              HasSubstr("expected a number, got bool"));
  EXPECT_THAT(GgufValue::U8(1).AsBool().status().message(),
              HasSubstr("expected a bool, got uint8"));
  EXPECT_THAT(GgufValue::F32(1).AsInt().status().message(),
              HasSubstr("got float32"));
  EXPECT_FALSE(GgufValue::I32Array({1}).AsInt().ok());
}

TEST(GgufValueTest, TypesAndArrays) {
  const GgufValue a = GgufValue::StringArray({"a", "b"});
  EXPECT_EQ(a.type(), GgufValueType::kArray);
  EXPECT_EQ(a.array_type(), GgufValueType::kString);
  ASSERT_EQ(a.array().size(), 2u);
  EXPECT_EQ(*a.array()[1].AsString(), "b");
  EXPECT_EQ(GgufValue::F32Array({1, 2}).array_type(), GgufValueType::kFloat32);
  EXPECT_EQ(GgufValue::I32Array({}).array_type(), GgufValueType::kInt32);
  EXPECT_THAT(GgufValue::U32(3).array(), IsEmpty());
  EXPECT_EQ(GgufValue::I16(-1).type(), GgufValueType::kInt16);
}

TEST(GgufValueTest, Equality) {
  EXPECT_EQ(GgufValue::U32(1), GgufValue::U32(1));
  EXPECT_NE(GgufValue::U32(1), GgufValue::I32(1));  // Type matters.
  EXPECT_NE(GgufValue::U32(1), GgufValue::U32(2));
  EXPECT_EQ(GgufValue::F32(std::nanf("")), GgufValue::F32(std::nanf("")));
  EXPECT_NE(GgufValue::F64(0.0), GgufValue::F64(-0.0));  // Bitwise.
  EXPECT_EQ(GgufValue::String("x"), GgufValue::String("x"));
  EXPECT_NE(GgufValue::String("x"), GgufValue::String("y"));
  EXPECT_EQ(GgufValue::I32Array({1, 2}), GgufValue::I32Array({1, 2}));
  EXPECT_NE(GgufValue::I32Array({1, 2}), GgufValue::I32Array({1, 3}));
  EXPECT_NE(GgufValue::I32Array({}),
            GgufValue::Array(GgufValueType::kUint32, {}));
}

TEST(GgufValueTest, DebugString) {
  EXPECT_EQ(GgufValue::U32(42).DebugString(), "42");
  EXPECT_EQ(GgufValue::I64(-7).DebugString(), "-7");
  EXPECT_EQ(GgufValue::F32(1.5f).DebugString(), "1.5");
  EXPECT_EQ(GgufValue::F32(1e-5f).DebugString(), "1e-05");
  EXPECT_EQ(GgufValue::Bool(false).DebugString(), "false");
  EXPECT_EQ(GgufValue::String("a\"b\n").DebugString(), "\"a\\\"b\\n\"");
  EXPECT_EQ(GgufValue::String("\xC3\xA9").DebugString(), "\"\xC3\xA9\"");
  EXPECT_EQ(GgufValue::I32Array({1, 2, 3}).DebugString(), "[1, 2, 3]");
  EXPECT_EQ(GgufValue::I32Array({1, 2, 3, 4, 5}).DebugString(2),
            "[1, 2, ... (5 x int32)]");
  EXPECT_EQ(GgufValue::StringArray({"x", "y"}).DebugString(0),
            "[... (2 x string)]");
  EXPECT_EQ(GgufValue::Array(GgufValueType::kArray, {GgufValue::I32Array({1}),
                                                     GgufValue::I32Array({})})
                .DebugString(),
            "[[1], []]");
  const std::string long_string(500, 'z');
  const std::string shown = GgufValue::String(long_string).DebugString();
  EXPECT_THAT(shown, HasSubstr("...\" (500 bytes)"));
  EXPECT_LT(shown.size(), 160u);
}

// ---------------------------------------------------------------- Round trips

TEST_F(GgufTest, RoundTripsEveryValueType) {
  std::vector<std::pair<std::string, GgufValue>> expected = {
      {"u8", GgufValue::U8(255)},
      {"i8", GgufValue::I8(-128)},
      {"u16", GgufValue::U16(65535)},
      {"i16", GgufValue::I16(-32768)},
      {"u32", GgufValue::U32(4000000000u)},
      {"i32", GgufValue::I32(std::numeric_limits<int32_t>::min())},
      {"f32", GgufValue::F32(3.14159f)},
      {"f32.nan", GgufValue::F32(std::nanf(""))},
      {"f32.inf", GgufValue::F32(-std::numeric_limits<float>::infinity())},
      {"bool.t", GgufValue::Bool(true)},
      {"bool.f", GgufValue::Bool(false)},
      {"str", GgufValue::String("h\xC3\xA9llo")},
      {"str.empty", GgufValue::String("")},
      {"str.nul", GgufValue::String(std::string("a\0b", 3))},
      {"u64", GgufValue::U64(std::numeric_limits<uint64_t>::max())},
      {"i64", GgufValue::I64(std::numeric_limits<int64_t>::min())},
      {"f64", GgufValue::F64(-0.0)},
      {"f64.tiny", GgufValue::F64(4.9e-324)},
      {"arr.str", GgufValue::StringArray({"<s>", "", "\xE2\x96\x81the"})},
      {"arr.f32", GgufValue::F32Array({0.5f, -1.0f, 1e30f})},
      {"arr.i32", GgufValue::I32Array({-1, 0, 1})},
      {"arr.bool",
       GgufValue::Array(GgufValueType::kBool,
                        {GgufValue::Bool(true), GgufValue::Bool(false)})},
      {"arr.u64", GgufValue::Array(GgufValueType::kUint64,
                                   {GgufValue::U64(1), GgufValue::U64(2)})},
      {"arr.i8", GgufValue::Array(GgufValueType::kInt8, {GgufValue::I8(-1)})},
      {"arr.f64",
       GgufValue::Array(GgufValueType::kFloat64, {GgufValue::F64(2.5)})},
      {"arr.empty.u8", GgufValue::Array(GgufValueType::kUint8, {})},
      {"arr.empty.str", GgufValue::StringArray({})},
      {"arr.empty.arr", GgufValue::Array(GgufValueType::kArray, {})},
      {"arr.nested",
       GgufValue::Array(
           GgufValueType::kArray,
           {GgufValue::I32Array({1, 2}), GgufValue::StringArray({"x"}),
            GgufValue::Array(GgufValueType::kUint16, {})})},
      // Four array levels, the most the format allows here.
      {"arr.depth4",
       GgufValue::Array(
           GgufValueType::kArray,
           {GgufValue::Array(GgufValueType::kArray,
                             {GgufValue::Array(GgufValueType::kArray,
                                               {GgufValue::I32Array({7})})})})},
  };
  const std::string path = Path("values.gguf");
  {
    auto writer = GgufWriter::Create(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    (*writer)->Set("u8", GgufValue::String("replaced below"));
    for (const auto& [key, value] : expected) (*writer)->Set(key, value);
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  auto reader = GgufReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const GgufReader& r = **reader;
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.alignment(), 32u);
  EXPECT_THAT(r.tensors(), IsEmpty());
  EXPECT_EQ(r.data_offset() % 32, 0u);
  EXPECT_EQ(r.file_size(), r.data_offset());
  ASSERT_EQ(r.metadata().size(), expected.size() + 1);
  EXPECT_EQ(r.metadata()[0].first, "general.alignment");
  EXPECT_EQ(r.metadata()[0].second, GgufValue::U32(32));
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(r.metadata()[i + 1].first, expected[i].first);
    EXPECT_EQ(r.metadata()[i + 1].second, expected[i].second)
        << expected[i].first << ": got "
        << r.metadata()[i + 1].second.DebugString() << ", want "
        << expected[i].second.DebugString();
    const GgufValue* found = r.Find(expected[i].first);
    ASSERT_NE(found, nullptr);
    EXPECT_EQ(found, &r.metadata()[i + 1].second);
  }
  EXPECT_EQ(r.Find("missing"), nullptr);
  EXPECT_EQ(r.Find("arr.nested")->array()[1].array_type(),
            GgufValueType::kString);
  EXPECT_TRUE(std::isnan(*r.Find("f32.nan")->AsFloat()));
}

TEST_F(GgufTest, RoundTripsTensorsWrittenInPieces) {
  struct Spec {
    std::string name;
    std::vector<uint64_t> dims;
    GgmlType type;
    uint64_t nbytes;
  };
  const std::vector<Spec> specs = {
      {"tok_embd.weight", {3, 2}, GgmlType::kF32, 24},
      {"norm.weight", {5}, GgmlType::kF16, 10},
      {"blk.0.attn_q.weight", {64, 3}, GgmlType::kQ8_0, 2 * 34 * 3},
      {"blk.0.ffn_up.weight", {32, 2, 2}, GgmlType::kQ4_0, 18 * 4},
      {"blk.0.ffn_down.weight", {256, 1}, GgmlType::kQ4_K, 144},
      {"empty", {0, 4}, GgmlType::kF32, 0},
      {"ids", {7}, GgmlType::kI8, 7},
      {"bf", {1, 1, 1, 3}, GgmlType::kBF16, 6},
  };
  const std::string path = Path("tensors.gguf");
  {
    auto writer = GgufWriter::Create(path);
    ASSERT_TRUE(writer.ok()) << writer.status();
    (*writer)->Set("general.architecture", GgufValue::String("llama"));
    for (const Spec& s : specs) {
      ASSERT_TRUE((*writer)->AddTensor(s.name, s.dims, s.type).ok()) << s.name;
    }
    for (size_t t = 0; t < specs.size(); ++t) {
      const std::string data = Pattern(specs[t].nbytes, t);
      // Pieces of 7 bytes, the last one shorter.
      for (size_t pos = 0; pos < data.size(); pos += 7) {
        const size_t n = std::min<size_t>(7, data.size() - pos);
        ASSERT_TRUE((*writer)
                        ->WriteTensorData(specs[t].name, data.data() + pos, n)
                        .ok())
            << specs[t].name;
      }
    }
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  EXPECT_THAT(DirEntries(), ElementsAre("tensors.gguf"));
  auto reader = GgufReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const GgufReader& r = **reader;
  ASSERT_EQ(r.tensors().size(), specs.size());
  EXPECT_EQ(r.data_offset() % 32, 0u);
  uint64_t expected_offset = 0;
  for (size_t t = 0; t < specs.size(); ++t) {
    const GgufTensorInfo& info = r.tensors()[t];
    EXPECT_EQ(info.name, specs[t].name);
    EXPECT_EQ(info.dims, specs[t].dims);
    EXPECT_EQ(info.type, specs[t].type);
    EXPECT_EQ(info.nbytes, specs[t].nbytes) << info.name;
    EXPECT_EQ(info.offset, expected_offset) << info.name;
    expected_offset = AlignUp(expected_offset + info.nbytes, 32);
    EXPECT_EQ(r.FindTensor(specs[t].name), &info);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.TensorData(info)),
                          info.nbytes),
              Pattern(specs[t].nbytes, t))
        << info.name;
  }
  EXPECT_EQ(r.file_size(), r.data_offset() + expected_offset);
  EXPECT_EQ(r.FindTensor("nope"), nullptr);
  EXPECT_EQ(r.FindTensor("blk.0.attn_q.weight")->num_elements(), 192);
  EXPECT_EQ(r.FindTensor("empty")->num_elements(), 0);
  EXPECT_EQ(*r.Find("general.architecture")->AsString(), "llama");
}

TEST_F(GgufTest, CustomAlignment) {
  const std::string path = Path("align64.gguf");
  {
    auto writer = GgufWriter::Create(path, 64);
    ASSERT_TRUE(writer.ok());
    (*writer)->Set("general.name", GgufValue::String("tiny"));
    ASSERT_TRUE((*writer)->AddTensor("a", {40}, GgmlType::kF32).ok());
    ASSERT_TRUE((*writer)->AddTensor("b", {32}, GgmlType::kQ8_0).ok());
    EXPECT_EQ((*writer)->tensors()[1].offset, 192u);  // 160 rounded up to 64.
    const std::string a = Pattern(160, 1), b = Pattern(34, 2);
    ASSERT_TRUE((*writer)->WriteTensorData("a", a.data(), a.size()).ok());
    ASSERT_TRUE((*writer)->WriteTensorData("b", b.data(), b.size()).ok());
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  auto reader = GgufReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->alignment(), 64u);
  EXPECT_EQ(*(*reader)->Find("general.alignment")->AsUint(), 64u);
  EXPECT_EQ((*reader)->data_offset() % 64, 0u);
  EXPECT_EQ((*reader)->FindTensor("b")->offset, 192u);
  EXPECT_EQ((*reader)->file_size(), (*reader)->data_offset() + 256);
  EXPECT_EQ(std::memcmp((*reader)->TensorData(*(*reader)->FindTensor("b")),
                        Pattern(34, 2).data(), 34),
            0);
}

TEST_F(GgufTest, AlignmentSetByCallerIsIgnored) {
  const std::string path = Path("a.gguf");
  {
    auto writer = GgufWriter::Create(path, 32);
    ASSERT_TRUE(writer.ok());
    (*writer)->Set("general.alignment", GgufValue::U32(64));
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  auto reader = GgufReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->alignment(), 32u);
  EXPECT_EQ((*reader)->metadata().size(), 1u);
}

TEST_F(GgufTest, ByteLayoutMatchesHandComputedBytes) {
  const std::string path = Path("layout.gguf");
  const float data[2] = {1.0f, -2.0f};
  {
    auto writer = GgufWriter::Create(path);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->AddTensor("w", {2}, GgmlType::kF32).ok());
    ASSERT_TRUE((*writer)->WriteTensorData("w", data, sizeof(data)).ok());
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  const std::string expected =
      std::string("GGUF", 4) +
      std::string("\x03\x00\x00\x00", 4) +                  // version 3
      std::string("\x01\x00\x00\x00\x00\x00\x00\x00", 8) +  // 1 tensor
      std::string("\x01\x00\x00\x00\x00\x00\x00\x00", 8) +  // 1 kv
      std::string("\x11\x00\x00\x00\x00\x00\x00\x00", 8) +  // key length 17
      "general.alignment" +                                 //
      std::string("\x04\x00\x00\x00", 4) +                  // uint32
      std::string("\x20\x00\x00\x00", 4) +                  // 32
      std::string("\x01\x00\x00\x00\x00\x00\x00\x00", 8) +  // name length 1
      "w" +                                                 //
      std::string("\x01\x00\x00\x00", 4) +                  // n_dims 1
      std::string("\x02\x00\x00\x00\x00\x00\x00\x00", 8) +  // dims[0] 2
      std::string("\x00\x00\x00\x00", 4) +                  // f32
      std::string("\x00\x00\x00\x00\x00\x00\x00\x00", 8) +  // offset 0
      std::string(6, '\0') +                                // 90 -> 96
      std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8) +  // 1.0f, -2.0f
      std::string(24, '\0');                                // 104 -> 128
  ASSERT_EQ(expected.size(), 128u);
  auto bytes = ReadFileToString(path);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, expected);
}

TEST_F(GgufTest, ValueEncodingMatchesHandComputedBytes) {
  const std::string path = Path("values_layout.gguf");
  {
    auto writer = GgufWriter::Create(path);
    ASSERT_TRUE(writer.ok());
    (*writer)->Set("s", GgufValue::String("xy"));
    (*writer)->Set("a",
                   GgufValue::Array(GgufValueType::kInt16,
                                    {GgufValue::I16(1), GgufValue::I16(-1)}));
    (*writer)->Set("b", GgufValue::Bool(true));
    (*writer)->Set("n", GgufValue::Array(GgufValueType::kArray,
                                         {GgufValue::StringArray({"z"})}));
    ASSERT_TRUE((*writer)->Finish().ok());
  }
  Bytes expected;
  expected.Header(0, 5).KvU32("general.alignment", 32);
  expected.Str("s").U32(8).Str("xy");
  expected.Str("a").U32(9).U32(3).U64(2).Raw(
      std::string("\x01\x00\xff\xff", 4));
  expected.Str("b").U32(7).U8(1);
  expected.Str("n").U32(9).U32(9).U64(1).U32(8).U64(1).Str("z");
  expected.PadTo(32);
  auto bytes = ReadFileToString(path);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, expected.str());
}

TEST_F(GgufTest, ReadsVersion2AndUnpaddedFileWithoutTensors) {
  Bytes b;
  b.Header(0, 1, 2).KvU32("k", 9);  // No padding after the header.
  auto reader = OpenBytes(b.str());
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->version(), 2u);
  EXPECT_EQ(*(*reader)->Find("k")->AsUint(), 9u);
}

TEST_F(GgufTest, OpenMissingFileIsNotFound) {
  EXPECT_EQ(GgufReader::Open(Path("absent.gguf")).status().code(),
            absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------- Writer
// errors

TEST_F(GgufTest, WriterRejectsBadAlignment) {
  for (uint32_t alignment : {0u, 48u, 3u}) {
    auto writer = GgufWriter::Create(Path("x.gguf"), alignment);
    EXPECT_EQ(writer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(writer.status().message(), HasSubstr("power of two"));
  }
  EXPECT_THAT(DirEntries(), IsEmpty());
}

TEST_F(GgufTest, WriterRejectsBadTensorDeclarations) {
  auto writer = GgufWriter::Create(Path("x.gguf"));
  ASSERT_TRUE(writer.ok());
  GgufWriter& w = **writer;
  absl::Status s = w.AddTensor("q", {33, 2}, GgmlType::kQ8_0);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'q'"));
  EXPECT_THAT(s.message(),
              HasSubstr("not a multiple of the q8_0 block size 32"));
  s = w.AddTensor("k", {255}, GgmlType::kQ4_K);
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(GgmlTypeName(GgmlType::kQ4_K),
                                                  " block size 256")));
  EXPECT_THAT(w.AddTensor("none", {}, GgmlType::kF32).message(),
              HasSubstr("n_dims 0 is not in [1, 4]"));
  EXPECT_THAT(w.AddTensor("five", {1, 1, 1, 1, 1}, GgmlType::kF32).message(),
              HasSubstr("n_dims 5"));
  EXPECT_THAT(w.AddTensor("huge", {uint64_t{1} << 32, uint64_t{1} << 32},
                          GgmlType::kF32)
                  .message(),
              HasSubstr("overflow"));
  EXPECT_THAT(w.AddTensor("", {1}, GgmlType::kF32).message(),
              HasSubstr("tensor name is empty"));
  EXPECT_THAT(w.AddTensor("bad\xff", {1}, GgmlType::kF32).message(),
              HasSubstr("tensor name 'bad\\xff' is not valid UTF-8"));
  EXPECT_THAT(w.AddTensor(std::string(64, 'n'), {1}, GgmlType::kF32).message(),
              HasSubstr("at most 63"));
  ASSERT_TRUE(w.AddTensor(std::string(63, 'n'), {1}, GgmlType::kF32).ok());
  ASSERT_TRUE(w.AddTensor("t", {1}, GgmlType::kF32).ok());
  s = w.AddTensor("t", {2}, GgmlType::kF32);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("duplicate tensor name 't'"));
  EXPECT_EQ(w.tensors().size(), 2u);
}

TEST_F(GgufTest, WriterRejectsWrongByteCountsAndOrder) {
  const std::string path = Path("x.gguf");
  auto writer = GgufWriter::Create(path);
  ASSERT_TRUE(writer.ok());
  GgufWriter& w = **writer;
  ASSERT_TRUE(w.AddTensor("a", {2}, GgmlType::kF32).ok());
  ASSERT_TRUE(w.AddTensor("b", {1}, GgmlType::kF32).ok());
  const std::string data = Pattern(16, 0);

  absl::Status s = w.WriteTensorData("b", data.data(), 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("out of order"));
  EXPECT_THAT(s.message(), HasSubstr("expected 'a'"));
  s = w.WriteTensorData("c", data.data(), 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'c' was not declared"));
  s = w.WriteTensorData("a", data.data(), 12);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("writing 12 bytes exceeds its size of 8"));
  ASSERT_TRUE(w.WriteTensorData("a", data.data(), 4).ok());
  s = w.WriteTensorData("a", data.data(), 5);
  EXPECT_THAT(s.message(), HasSubstr("(4 already written)"));
  EXPECT_EQ(w.AddTensor("late", {1}, GgmlType::kF32).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(w.WriteTensorData("a", data.data(), 4).ok());
  s = w.WriteTensorData("a", data.data(), 1);  // "a" is complete: "b" is next.
  EXPECT_THAT(s.message(), HasSubstr("expected 'b'"));
  ASSERT_TRUE(w.WriteTensorData("b", data.data(), 4).ok());
  s = w.WriteTensorData("b", data.data(), 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("already complete"));
  // The rejected calls wrote nothing: the file is still valid.
  ASSERT_TRUE(w.Finish().ok());
  EXPECT_EQ(w.Finish().code(), absl::StatusCode::kFailedPrecondition);
  auto reader = GgufReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(std::memcmp((*reader)->TensorData((*reader)->tensors()[1]),
                        data.data(), 4),
            0);
}

TEST_F(GgufTest, FinishWithIncompleteTensorLeavesNoFile) {
  const std::string path = Path("x.gguf");
  auto writer = GgufWriter::Create(path);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->AddTensor("a", {2}, GgmlType::kF32).ok());
  ASSERT_TRUE((*writer)->AddTensor("b", {2}, GgmlType::kF32).ok());
  const float half = 1.0f;
  ASSERT_TRUE((*writer)->WriteTensorData("a", &half, 4).ok());
  absl::Status s = (*writer)->Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'a' is incomplete: 4 of 8 bytes written"));
  EXPECT_THAT(s.message(), HasSubstr("2 of 2 tensors unfinished"));
  EXPECT_THAT(DirEntries(), IsEmpty());  // Temp file removed at once.
  writer->reset();
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST_F(GgufTest, FinishWithoutAnyDataFailsForDeclaredTensors) {
  auto writer = GgufWriter::Create(Path("x.gguf"));
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->AddTensor("a", {32}, GgmlType::kQ4_0).ok());
  EXPECT_THAT((*writer)->Finish().message(),
              HasSubstr("tensor 'a' is incomplete: 0 of 18 bytes"));
  EXPECT_THAT(DirEntries(), IsEmpty());
}

TEST_F(GgufTest, AbandonedWriterLeavesNoFile) {
  {
    auto writer = GgufWriter::Create(Path("x.gguf"));
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->AddTensor("a", {1}, GgmlType::kF32).ok());
    const float v = 1;
    ASSERT_TRUE((*writer)->WriteTensorData("a", &v, 4).ok());
    EXPECT_FALSE(DirEntries().empty());  // The temporary file.
  }
  EXPECT_THAT(DirEntries(), IsEmpty());
}

TEST_F(GgufTest, WriterRejectsInvalidMetadata) {
  struct Case {
    std::string key;
    GgufValue value;
    std::string message;
  };
  GgufValue deep = GgufValue::I32Array({1});
  for (int i = 0; i < 4; ++i) {
    deep = GgufValue::Array(GgufValueType::kArray, {deep});
  }
  const std::vector<Case> cases = {
      {"mixed",
       GgufValue::Array(GgufValueType::kUint32,
                        {GgufValue::U32(1), GgufValue::String("x")}),
       "metadata key 'mixed': array item 1 has type string, expected uint32"},
      {"nested.mixed",
       GgufValue::Array(
           GgufValueType::kArray,
           {GgufValue::Array(GgufValueType::kInt8, {GgufValue::U8(1)})}),
       "array item 0: array item 0 has type uint8, expected int8"},
      {"deep", deep, "nested deeper than 4 levels"},
      {"", GgufValue::U8(1), "metadata key is empty"},
      {"k\xc0\x80", GgufValue::U8(1), "not valid UTF-8"},
  };
  for (const Case& c : cases) {
    const std::string path = Path("m.gguf");
    auto writer = GgufWriter::Create(path);
    ASSERT_TRUE(writer.ok());
    (*writer)->Set(c.key, c.value);
    absl::Status s = (*writer)->Finish();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
    EXPECT_THAT(DirEntries(), IsEmpty());
  }
}

TEST_F(GgufTest, SetAfterHeaderMakesFinishFail) {
  auto writer = GgufWriter::Create(Path("x.gguf"));
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->AddTensor("a", {1}, GgmlType::kF32).ok());
  const float v = 1;
  ASSERT_TRUE((*writer)->WriteTensorData("a", &v, 4).ok());
  (*writer)->Set("late", GgufValue::U8(1));
  absl::Status s = (*writer)->Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("Set after the GGUF header"));
  EXPECT_THAT(DirEntries(), IsEmpty());
}

TEST_F(GgufTest, HeaderValidationFailureIsNotWrittenAndCanBeFixed) {
  const std::string path = Path("x.gguf");
  auto writer = GgufWriter::Create(path);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->AddTensor("a", {1}, GgmlType::kF32).ok());
  (*writer)->Set("bad",
                 GgufValue::Array(GgufValueType::kUint8, {GgufValue::I8(1)}));
  const float v = 1;
  EXPECT_THAT((*writer)->WriteTensorData("a", &v, 4).message(),
              HasSubstr("metadata key 'bad'"));
  (*writer)->Set("bad", GgufValue::U8(1));
  ASSERT_TRUE((*writer)->WriteTensorData("a", &v, 4).ok());
  ASSERT_TRUE((*writer)->Finish().ok());
  auto reader = GgufReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(*(*reader)->Find("bad"), GgufValue::U8(1));
}

// ---------------------------------------------------------------- Malformed

// A valid file with several kvs (string, array, nested array) and tensors.
std::string SmallValidFile(const std::string& path) {
  auto writer = GgufWriter::Create(path);
  EXPECT_TRUE(writer.ok());
  (*writer)->Set("general.architecture", GgufValue::String("llama"));
  (*writer)->Set("tokens", GgufValue::StringArray({"a", "bc", ""}));
  (*writer)->Set("nested", GgufValue::Array(GgufValueType::kArray,
                                            {GgufValue::I32Array({1, 2})}));
  (*writer)->Set("eps", GgufValue::F32(1e-5f));
  EXPECT_TRUE((*writer)->AddTensor("q", {32, 2}, GgmlType::kQ8_0).ok());
  EXPECT_TRUE((*writer)->AddTensor("n", {3}, GgmlType::kF32).ok());
  const std::string q = Pattern(68, 1), n = Pattern(12, 2);
  EXPECT_TRUE((*writer)->WriteTensorData("q", q.data(), q.size()).ok());
  EXPECT_TRUE((*writer)->WriteTensorData("n", n.data(), n.size()).ok());
  EXPECT_TRUE((*writer)->Finish().ok());
  return *ReadFileToString(path);
}

TEST_F(GgufTest, EveryTruncationFailsCleanly) {
  const std::string full = SmallValidFile(Path("valid.gguf"));
  auto reader = GgufReader::Open(Path("valid.gguf"));
  ASSERT_TRUE(reader.ok()) << reader.status();
  const GgufTensorInfo& last = (*reader)->tensors().back();
  const uint64_t data_end =
      (*reader)->data_offset() + last.offset + last.nbytes;
  ASSERT_LT(data_end, full.size());  // The last tensor is followed by padding.
  for (size_t len = 0; len < full.size(); ++len) {
    auto r = OpenBytes(full.substr(0, len));
    if (len < data_end) {
      ASSERT_FALSE(r.ok()) << "prefix of " << len << " bytes accepted";
      ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
          << len << ": " << r.status();
    } else {
      // Only the last tensor's trailing padding is missing: still readable.
      ASSERT_TRUE(r.ok()) << len << ": " << r.status();
    }
  }
  EXPECT_THAT(OpenBytes(full.substr(0, 2)).status().message(),
              HasSubstr("file truncated: magic at offset 0 needs 4 bytes"));
  EXPECT_THAT(OpenBytes(full.substr(0, data_end - 1)).status().message(),
              HasSubstr("tensor 'n': data of 12 bytes"));
}

TEST_F(GgufTest, RejectsBadMagicAndVersion) {
  ExpectInvalid(Bytes().Raw("GGML").U32(3).U64(0).U64(0).str(),
                {"bad magic \"GGML\"", "not a GGUF file"});
  ExpectInvalid(Bytes().Header(0, 0, 1).str(), {"unsupported GGUF version 1"});
  ExpectInvalid(Bytes().Header(0, 0, 4).str(), {"unsupported GGUF version 4"});
  ExpectInvalid(Bytes().Header(0, 0, 0x03000000).str(), {"big-endian"});
  ExpectInvalid("", {"file truncated: magic"});
}

TEST_F(GgufTest, RejectsImpossibleCounts) {
  ExpectInvalid(
      Bytes().Header(uint64_t{1} << 60, 0).Zeros(64).str(),
      {"tensor_count 1152921504606846976 cannot fit in the 64 bytes"});
  ExpectInvalid(Bytes().Header(0, ~uint64_t{0}).Zeros(64).str(),
                {"metadata_kv_count 18446744073709551615 cannot fit"});
  // Each fits alone, not together: 3 * 14 + 1 * 33 > 64.
  ExpectInvalid(Bytes().Header(1, 3).Zeros(64).str(),
                {"metadata_kv_count 3 and tensor_count 1 cannot fit"});
}

TEST_F(GgufTest, RejectsHugeLengths) {
  ExpectInvalid(Bytes().Header(0, 1).U64(uint64_t{1} << 62).Zeros(20).str(),
                {"string length 4611686018427387904 of the key of metadata "
                 "pair 0",
                 "exceeds the 20 bytes left"});
  ExpectInvalid(
      Bytes().Header(0, 1).Str("k").U32(8).U64(~uint64_t{0}).Zeros(8).str(),
      {"metadata key 'k'", "string length 18446744073709551615"});
  ExpectInvalid(Bytes()
                    .Header(0, 1)
                    .Str("k")
                    .U32(9)
                    .U32(4)
                    .U64(uint64_t{1} << 61)
                    .Zeros(16)
                    .str(),
                {"metadata key 'k'", "array of 2305843009213693952 uint32",
                 "only 16 bytes left"});
  // Strings need at least 8 bytes each: 3 of them do not fit in 16 bytes.
  ExpectInvalid(
      Bytes().Header(0, 1).Str("k").U32(9).U32(8).U64(3).Zeros(16).str(),
      {"array of 3 string elements"});
  // Nested array count with an inner string length past the end.
  ExpectInvalid(Bytes()
                    .Header(0, 1)
                    .Str("k")
                    .U32(9)
                    .U32(9)
                    .U64(1)
                    .U32(8)
                    .U64(1)
                    .U64(1000)
                    .str(),
                {"metadata key 'k': array item 0: array item 0: string length "
                 "1000"});
  // A tensor name whose length runs past the end.
  ExpectInvalid(Bytes().Header(1, 0).U64(1 << 20).Zeros(40).str(),
                {"the name of tensor 0", "exceeds"});
}

TEST_F(GgufTest, RejectsTooManyMetadataValues) {
  const uint64_t n = kGgufMaxMetadataValues;  // One more with the array.
  Bytes b;
  b.Header(0, 1).Str("big").U32(9).U32(0).U64(n).Zeros(n);
  ExpectInvalid(
      b.str(), {"metadata key 'big'",
                absl::StrCat("exceeds the limit of ", kGgufMaxMetadataValues)});
}

TEST_F(GgufTest, RejectsDeepNesting) {
  Bytes b;
  b.Header(0, 1).Str("deep").U32(9);
  for (int i = 0; i < 4; ++i) b.U32(9).U64(1);
  b.U32(0).U64(1).U8(0);
  ExpectInvalid(b.str(), {"metadata key 'deep'", "nested deeper than 4"});
}

TEST_F(GgufTest, RejectsBadValues) {
  ExpectInvalid(Bytes().Header(0, 1).Str("k").U32(13).U32(0).str(),
                {"metadata key 'k': unknown value type 13"});
  ExpectInvalid(Bytes().Header(0, 1).Str("k").U32(9).U32(77).U64(0).str(),
                {"metadata key 'k': unknown array element type 77"});
  ExpectInvalid(Bytes().Header(0, 1).Str("k").U32(7).U8(2).Zeros(8).str(),
                {"metadata key 'k': bool value", "is 2, expected 0 or 1"});
  ExpectInvalid(Bytes().Header(0, 2).KvU32("dup", 1).KvU32("dup", 2).str(),
                {"duplicate metadata key 'dup'"});
  // Valid UTF-8 stays readable in messages; quotes are escaped.
  ExpectInvalid(Bytes()
                    .Header(0, 2)
                    .KvU32("caf\xc3\xa9's", 1)
                    .KvU32("caf\xc3\xa9's", 2)
                    .str(),
                {"duplicate metadata key 'caf\xc3\xa9\\'s'"});
  ExpectInvalid(Bytes().Header(0, 1).KvU32("\xff", 1).Zeros(8).str(),
                {"key of metadata pair 0 '\\xff' is not valid UTF-8"});
  ExpectInvalid(Bytes().Header(0, 1).KvU32("a\xed\xa0\x80", 1).Zeros(8).str(),
                {"not valid UTF-8"});  // A surrogate.
  ExpectInvalid(Bytes().Header(0, 1).KvU32("\xe2\x82", 1).Zeros(8).str(),
                {"not valid UTF-8"});  // Cut short.
  ExpectInvalid(Bytes().Header(0, 1).KvU32("", 1).Zeros(8).str(),
                {"key of metadata pair 0 is empty"});
}

TEST_F(GgufTest, RejectsBadAlignmentKey) {
  ExpectInvalid(
      Bytes().Header(0, 1).Str("general.alignment").U32(10).U64(32).str(),
      {"general.alignment must be uint32, got uint64"});
  ExpectInvalid(Bytes().Header(0, 1).KvU32("general.alignment", 48).str(),
                {"general.alignment 48 is not a nonzero power of two"});
  ExpectInvalid(Bytes().Header(0, 1).KvU32("general.alignment", 0).str(),
                {"general.alignment 0 is not a nonzero power of two"});
}

TEST_F(GgufTest, RejectsBadTensorInfos) {
  auto one = [](std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    return Bytes()
        .Header(1, 0)
        .TensorInfo("t", std::move(dims), type, offset)
        .PadTo(32)
        .Zeros(4096)
        .str();
  };
  ExpectInvalid(one({4}, 4, 0), {"tensor 't': unknown ggml type 4"});
  ExpectInvalid(one({4}, 99, 0), {"tensor 't': unknown ggml type 99"});
  ExpectInvalid(one({1, 1, 1, 1, 1}, 0, 0),
                {"tensor 't': n_dims 5 is not in [1, 4]"});
  ExpectInvalid(
      Bytes().Header(1, 0).Str("t").U32(0).U32(0).U64(0).Zeros(64).str(),
      {"tensor 't': n_dims 0"});
  ExpectInvalid(one({uint64_t{1} << 32, uint64_t{1} << 31}, 0, 0),
                {"tensor 't': dims [4294967296, 2147483648] overflow"});
  ExpectInvalid(one({~uint64_t{0}}, 0, 0), {"tensor 't'", "overflow"});
  // Element count fits, byte size does not.
  ExpectInvalid(one({uint64_t{1} << 62}, 0, 0),
                {"tensor 't'", "overflows 64 bits"});
  ExpectInvalid(one({33}, 8, 0),
                {"tensor 't': dims[0] = 33 is not a multiple of the q8_0 "
                 "block size 32"});
  ExpectInvalid(one({4}, 0, 16),
                {"tensor 't': data offset 16 is not a multiple of the "
                 "alignment 32"});
  ExpectInvalid(one({4096}, 0, 0),
                {"tensor 't': data of 16384 bytes at data offset 0 extends "
                 "past the end of the file"});
  ExpectInvalid(one({4}, 0, uint64_t{1} << 63),
                {"tensor 't'", "extends past the end"});
  ExpectInvalid(
      Bytes().Header(1, 0).TensorInfo("\xc3", {4}, 0, 0).Zeros(64).str(),
      {"name of tensor 0 '\\xc3' is not valid UTF-8"});
  ExpectInvalid(Bytes().Header(1, 0).TensorInfo("", {4}, 0, 0).Zeros(64).str(),
                {"name of tensor 0 is empty"});
}

TEST_F(GgufTest, RejectsDuplicateAndOverlappingTensors) {
  ExpectInvalid(Bytes()
                    .Header(2, 0)
                    .TensorInfo("t", {4}, 0, 0)
                    .TensorInfo("t", {4}, 0, 32)
                    .PadTo(32)
                    .Zeros(64)
                    .str(),
                {"duplicate tensor name 't'"});
  ExpectInvalid(Bytes()
                    .Header(2, 0)
                    .TensorInfo("a", {16}, 0, 0)  // Bytes [0, 64).
                    .TensorInfo("b", {8}, 0, 32)  // Bytes [32, 64).
                    .PadTo(32)
                    .Zeros(128)
                    .str(),
                {"tensors 'a' (data offset 0, 64 bytes) and 'b' (data offset "
                 "32, 32 bytes) overlap"});
  // Declared out of order and touching but not overlapping: accepted.
  auto reader = OpenBytes(Bytes()
                              .Header(2, 0)
                              .TensorInfo("b", {8}, 0, 64)
                              .TensorInfo("a", {16}, 0, 0)
                              .PadTo(32)
                              .Zeros(96)
                              .str());
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->FindTensor("b")->offset, 64u);
  // A zero-byte tensor may share an offset.
  EXPECT_TRUE(OpenBytes(Bytes()
                            .Header(2, 0)
                            .TensorInfo("a", {16}, 0, 0)
                            .TensorInfo("z", {0}, 0, 0)
                            .PadTo(32)
                            .Zeros(64)
                            .str())
                  .ok());
}

TEST_F(GgufTest, ErrorsNameTheFile) {
  const std::string path = Path("crafted.gguf");
  auto r = OpenBytes(Bytes().Raw("NOPE").str());
  EXPECT_THAT(r.status().message(), HasSubstr(absl::StrCat("'", path, "'")));
}

}  // namespace
}  // namespace quant
