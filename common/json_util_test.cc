#include "common/json_util.h"

#include <string>

#include "absl/status/status.h"
#include "common/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Nested(int depth, const std::string& inner = "") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

void ExpectInvalid(absl::string_view text, const std::string& substring) {
  const absl::StatusOr<json> parsed = ParseJsonStrict(text, "thing.json");
  ASSERT_FALSE(parsed.ok()) << "expected an error containing: " << substring;
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument)
      << parsed.status();
  EXPECT_THAT(std::string(parsed.status().message()), StartsWith("thing.json"));
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(substring));
}

TEST(ParseJsonStrictTest, ParsesValidJson) {
  absl::StatusOr<json> parsed = ParseJsonStrict(
      R"({"a": [1, -2, 3.5, "x\u00e9", true, null], "b": {"c": {}}})", "t");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)["a"][0], 1);
  EXPECT_EQ((*parsed)["a"][1], -2);
  EXPECT_EQ((*parsed)["a"][2], 3.5);
  EXPECT_EQ((*parsed)["a"][3], "x\xc3\xa9");
  EXPECT_TRUE((*parsed)["a"][5].is_null());
  EXPECT_TRUE((*parsed)["b"]["c"].is_object());
  // Scalars at the top, and the same key in different objects, are fine.
  parsed = ParseJsonStrict(" 42 ", "t");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, 42);
  parsed = ParseJsonStrict(R"({"a": {"a": 1}, "b": {"a": 2}})", "t");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)["b"]["a"], 2);
}

TEST(ParseJsonStrictTest, RejectsDuplicateKeys) {
  ExpectInvalid(R"({"a": 1, "a": 2})", "thing.json has duplicate key 'a'");
  // Nested, and after an inner object with the same key closed.
  ExpectInvalid(R"({"x": {"k": 1, "y": {"k": 2}, "k": 3}})",
                "has duplicate key 'k'");
  ExpectInvalid(R"([{"ok": 1}, {"b": 1, "b": 1}])", "duplicate key 'b'");
  // The key is quoted safely in the message.
  ExpectInvalid("{\"it's\": 1, \"it's\": 2}", "duplicate key 'it\\'s'");
}

TEST(ParseJsonStrictTest, RejectsNulByte) {
  ExpectInvalid(std::string("{}\0\0", 4),
                "thing.json is not well-formed JSON: NUL byte at offset 2");
  ExpectInvalid(std::string("{\"a\": \"x\0y\"}", 12), "NUL byte at offset 8");
}

TEST(ParseJsonStrictTest, RejectsInvalidUtf8WithOffsetAndContext) {
  ExpectInvalid("{\"bad\xff\": 1}",
                "thing.json is not valid UTF-8 at byte 5 (near "
                "'{\"bad\\xff\": 1}')");
  // Context starts on a character boundary, 16 bytes or less before: "€" is
  // 3 bytes, so byte 20 - 16 = 4 is inside the first one and 5 starts one.
  std::string euros;
  for (int i = 0; i < 6; ++i) euros += "\xe2\x82\xac";
  ExpectInvalid("[\"" + euros + "\xc0\xaf\"]",
                "is not valid UTF-8 at byte 20 (near '" + euros.substr(3) +
                    "\\xc0\\xaf\"]')");
  ExpectInvalid("\"\xed\xa0\x80\"", "not valid UTF-8 at byte 1");  // Surrogate.
}

TEST(ParseJsonStrictTest, RejectsMalformedJsonWithPosition) {
  ExpectInvalid("",
                "thing.json is not well-formed JSON: parse error at line "
                "1, column 1");
  ExpectInvalid(R"({"a": {"dtype": )", "is not well-formed JSON");
  ExpectInvalid("{\"a\": 1,\n \"b\" 2}", "line 2, column 6");
  ExpectInvalid("{\"a\": 1,\n \"b\" 2}", "(byte 15)");
  ExpectInvalid("{} {}", "expected end of input");
  ExpectInvalid("[1e999]", "number overflow");
  ExpectInvalid("[01]", "is not well-formed JSON");
}

TEST(ParseJsonStrictTest, BoundsTheParserExplanation) {
  // An unterminated 1 MB string: nlohmann quotes the whole token it read.
  const std::string text = "[\"" + std::string(1 << 20, 'z');
  const absl::StatusOr<json> parsed = ParseJsonStrict(text, "t");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(parsed.status().message()),
              HasSubstr("t is not well-formed JSON: parse error"));
  EXPECT_LT(parsed.status().message().size(), 300u);
  EXPECT_TRUE(IsValidUtf8(parsed.status().message()));
}

TEST(ParseJsonStrictTest, DepthLimit) {
  static_assert(kMaxJsonDepth == 64, "messages below assume 64");
  absl::StatusOr<json> parsed = ParseJsonStrict(Nested(64, "7"), "t");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const json* inner = &*parsed;
  for (int i = 0; i < 64; ++i) {
    ASSERT_TRUE(inner->is_array());
    inner = &(*inner)[0];
  }
  EXPECT_EQ(*inner, 7);
  ExpectInvalid(Nested(65), "thing.json nests deeper than 64 levels");
  // Objects count too, mixed with arrays.
  std::string objects;
  for (int i = 0; i < 32; ++i) objects += "{\"k\":[";
  objects += "1";
  for (int i = 0; i < 32; ++i) objects += "]}";
  EXPECT_TRUE(ParseJsonStrict(objects, "t").ok());
  ExpectInvalid("[" + objects + "]", "nests deeper than 64 levels");
  // Depth is checked before the rest of the text is looked at.
  ExpectInvalid(std::string(65, '['), "nests deeper than 64 levels");
}

TEST(ParseJsonStrictTest, RejectsHugeNestingWithoutCrashing) {
  const std::string deep = R"({"t":{"dtype":"F32","shape":)" + Nested(200000) +
                           R"(,"data_offsets":[0,0]}})";
  ExpectInvalid(deep, "nests deeper than 64 levels");
  ExpectInvalid(std::string(10 << 20, '['), "nests deeper than 64 levels");
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  ExpectInvalid(objects, "nests deeper than 64 levels");
}

TEST(DescribeJsonTest, Scalars) {
  EXPECT_EQ(DescribeJson(json(5)), "number 5");
  EXPECT_EQ(DescribeJson(json(-3)), "number -3");
  EXPECT_EQ(DescribeJson(json(2.5)), "number 2.5");
  EXPECT_EQ(DescribeJson(json(true)), "boolean true");
  EXPECT_EQ(DescribeJson(json(nullptr)), "null");
  EXPECT_EQ(DescribeJson(json("64")), "string \"64\"");
  EXPECT_EQ(DescribeJson(json("a\"b\n")), "string \"a\\\"b\\n\"");
  EXPECT_EQ(DescribeJson(json("caf\xc3\xa9")), "string \"caf\xc3\xa9\"");
}

TEST(DescribeJsonTest, LongAndInvalidStrings) {
  const std::string s(100000, 'a');
  EXPECT_EQ(DescribeJson(json(s)),
            "string \"" + std::string(63, 'a') + "... (100000 bytes)");
  // Not cut inside "é" (2 bytes) even when the cut lands on it.
  const std::string accents = std::string(63, 'a') + "\xc3\xa9\xc3\xa9";
  const std::string d = DescribeJson(json(accents));
  EXPECT_TRUE(IsValidUtf8(d)) << d;
  EXPECT_THAT(d, HasSubstr("... (67 bytes)"));
  // A json built in code may hold invalid UTF-8: replaced, not thrown.
  const std::string bad = DescribeJson(json("x\xffy"));
  EXPECT_EQ(bad, "string \"x\xef\xbf\xbdy\"");
}

TEST(DescribeJsonTest, ArraysAndObjects) {
  EXPECT_EQ(DescribeJson(json::array()), "array []");
  EXPECT_EQ(DescribeJson(json::object()), "object {}");
  EXPECT_EQ(DescribeJson(json::parse("[1, [2, 3], \"x\"]")),
            "array [1,[2,3],\"x\"]");
  EXPECT_EQ(DescribeJson(json::parse(R"({"a": 1, "b": [true]})")),
            "object {\"a\":1,\"b\":[true]}");
  json big = json::array();
  for (int i = 0; i < 100000; ++i) big.push_back(i);
  const std::string d = DescribeJson(big);
  EXPECT_THAT(d, StartsWith("array of 100000 elements [0,1,2,3,"));
  EXPECT_THAT(d, testing::EndsWith("..."));
  EXPECT_LT(d.size(), 100u);
  json members = json::object();
  for (int i = 0; i < 1000; ++i) members[std::to_string(i)] = i;
  EXPECT_THAT(DescribeJson(members),
              StartsWith("object of 1000 members {\"0\":0,\"1\":1,"));
  // A huge key or element is not serialised whole.
  json huge_key = json::object();
  huge_key[std::string(1 << 20, 'k')] = 1;
  EXPECT_THAT(DescribeJson(huge_key), StartsWith("object of 1 member {\"kkkk"));
  EXPECT_LT(DescribeJson(huge_key).size(), 100u);
}

TEST(DescribeJsonTest, DeepValuesAreBounded) {
  // 9 levels: the preview shows 8 and elides the rest.
  EXPECT_EQ(DescribeJson(json::parse(Nested(9, "1"))),
            "array of 1 element [[[[[[[[[...]]]]]]]]]");
  EXPECT_EQ(DescribeJson(json::parse(Nested(8, "1"))),
            "array [[[[[[[[1]]]]]]]]");
  // 200000 levels, built in code (the parser would refuse it): no recursion
  // through the whole value.
  json root = json::array();
  json* cur = &root;
  for (int i = 0; i < 200000; ++i) {
    cur->push_back(json::object());
    cur = &cur->back();
    (*cur)["k"] = json::array();
    cur = &(*cur)["k"];
  }
  const std::string d = DescribeJson(root);
  EXPECT_EQ(d,
            "array of 1 element [{\"k\":[{\"k\":[{\"k\":[{\"k\":[...]}]}]}]}]");
}

}  // namespace
}  // namespace quant
