#include "common/utf8.h"

#include <cstdint>
#include <random>
#include <string>

#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(IsValidUtf8Test, AcceptsValidRejectsInvalid) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("model.layers.0"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // é € 😀
  size_t bad = 0;
  EXPECT_FALSE(IsValidUtf8("ab\xff", &bad));
  EXPECT_EQ(bad, 2u);
  EXPECT_FALSE(IsValidUtf8("\xc3", &bad));              // Truncated.
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf", &bad));          // Overlong '/'.
  EXPECT_FALSE(IsValidUtf8("\xe0\x80\xaf", &bad));      // Overlong.
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80", &bad));      // Surrogate.
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80", &bad));  // > U+10FFFF.
  EXPECT_FALSE(IsValidUtf8("x\x80", &bad));             // Lone continuation.
  EXPECT_EQ(bad, 1u);
}

TEST(IsValidUtf8Test, Boundaries) {
  EXPECT_TRUE(IsValidUtf8("\x7f"));
  EXPECT_TRUE(IsValidUtf8("\xc2\x80"));          // U+0080, smallest 2-byte.
  EXPECT_TRUE(IsValidUtf8("\xe0\xa0\x80"));      // U+0800, smallest 3-byte.
  EXPECT_TRUE(IsValidUtf8("\xed\x9f\xbf"));      // U+D7FF, below surrogates.
  EXPECT_TRUE(IsValidUtf8("\xee\x80\x80"));      // U+E000, above surrogates.
  EXPECT_TRUE(IsValidUtf8("\xf0\x90\x80\x80"));  // U+10000.
  EXPECT_TRUE(IsValidUtf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF.
  EXPECT_TRUE(IsValidUtf8(std::string("a\0b", 3)));  // NUL is valid UTF-8.
  size_t bad = 99;
  EXPECT_FALSE(IsValidUtf8("\xc1\xbf", &bad));  // Overlong U+007F.
  EXPECT_EQ(bad, 0u);
  EXPECT_FALSE(IsValidUtf8("ok\xf8\x88\x80\x80\x80", &bad));  // 5-byte form.
  EXPECT_EQ(bad, 2u);
  EXPECT_FALSE(IsValidUtf8("\xc3\xa9\xe2\x82", &bad));  // Cut short at 2.
  EXPECT_EQ(bad, 2u);
  EXPECT_FALSE(IsValidUtf8("\xe2\x28\xa1", &bad));  // Bad continuation.
  EXPECT_EQ(bad, 0u);
  // The offset is left alone on success.
  bad = 42;
  EXPECT_TRUE(IsValidUtf8("fine", &bad));
  EXPECT_EQ(bad, 42u);
}

TEST(QuoteForMessageTest, KeepsPrintableAndValidUtf8) {
  EXPECT_EQ(QuoteForMessage(""), "''");
  EXPECT_EQ(QuoteForMessage("model.layers.0.weight"),
            "'model.layers.0.weight'");
  EXPECT_EQ(QuoteForMessage("caf\xc3\xa9 \xe2\x96\x81the \xf0\x9f\x98\x80"),
            "'caf\xc3\xa9 \xe2\x96\x81the \xf0\x9f\x98\x80'");
  EXPECT_EQ(QuoteForMessage("say \"hi\""), "'say \"hi\"'");
}

TEST(QuoteForMessageTest, EscapesQuotesControlAndInvalidBytes) {
  EXPECT_EQ(QuoteForMessage("it's a\\b"), "'it\\'s a\\\\b'");
  EXPECT_EQ(QuoteForMessage("a\nb\rc\td"), "'a\\nb\\rc\\td'");
  EXPECT_EQ(QuoteForMessage(std::string("a\0b\x01\x7f", 5)),
            "'a\\x00b\\x01\\x7f'");
  EXPECT_EQ(QuoteForMessage("bad\xff"), "'bad\\xff'");
  EXPECT_EQ(QuoteForMessage("\xc3"), "'\\xc3'");
  // Each byte of an invalid sequence is escaped; a valid one after it stays.
  EXPECT_EQ(QuoteForMessage("\xc0\xaf\xc3\xa9"), "'\\xc0\\xaf\xc3\xa9'");
  EXPECT_EQ(QuoteForMessage("a\xed\xa0\x80"), "'a\\xed\\xa0\\x80'");
}

TEST(QuoteForMessageTest, BoundsLengthWithoutSplittingSequences) {
  EXPECT_EQ(QuoteForMessage("abcdef", 6), "'abcdef'");
  EXPECT_EQ(QuoteForMessage("abcdefg", 6), "'abcdef...'");
  EXPECT_EQ(QuoteForMessage("abc", 0), "'...'");
  // "é" is two bytes; with a limit of 4 the second one does not fit.
  EXPECT_EQ(QuoteForMessage("ab\xc3\xa9\xc3\xa9", 5), "'ab\xc3\xa9...'");
  EXPECT_EQ(QuoteForMessage("abc\xc3\xa9", 4), "'abc...'");
  // The default bound is 128 input bytes.
  const std::string long_name(1000, 'n');
  EXPECT_EQ(QuoteForMessage(long_name), "'" + std::string(128, 'n') + "...'");
  EXPECT_EQ(QuoteForMessage(std::string(128, 'n')),
            "'" + std::string(128, 'n') + "'");
  // A long string costs no more than its first bytes.
  const std::string huge(16u << 20, '\xff');
  EXPECT_EQ(QuoteForMessage(huge, 2), "'\\xff\\xff...'");
}

TEST(QuoteForMessageTest, OutputIsAlwaysValidUtf8) {
  std::mt19937 rng(1234);
  for (int round = 0; round < 2000; ++round) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = static_cast<char>(rng() & 0xff);
    const size_t max_bytes = rng() % 48;
    const std::string q = QuoteForMessage(s, max_bytes);
    EXPECT_TRUE(IsValidUtf8(q)) << q;
    ASSERT_GE(q.size(), 2u);
    EXPECT_EQ(q.front(), '\'');
    EXPECT_EQ(q.back(), '\'');
    // No raw control bytes survive.
    for (char c : q) {
      EXPECT_FALSE(static_cast<unsigned char>(c) < 0x20 || c == 0x7f) << q;
    }
    // Each input byte becomes at most 4 output bytes.
    EXPECT_LE(q.size(), 2 + 4 * max_bytes + 3);
  }
}

TEST(BoundedTextTest, PlainTextAsItIsAnythingElseQuotedAndBounded) {
  EXPECT_EQ(BoundedText("CUDA error: out of memory\n\tat block 3", 64),
            "CUDA error: out of memory\n\tat block 3");
  EXPECT_EQ(BoundedText("gr\xc3\xbc\xc3\x9f", 8), "gr\xc3\xbc\xc3\x9f");
  EXPECT_EQ(BoundedText("abcdef", 4), "'abcd...' (6 bytes)");
  EXPECT_EQ(BoundedText("a\rb", 8), "'a\\rb' (3 bytes)");
  EXPECT_EQ(BoundedText("x\xff", 8), "'x\\xff' (2 bytes)");
  // A 16 MiB error is stored as 4 KiB and a note of its size.
  const std::string huge(16u << 20, 'e');
  const std::string bounded = BoundedText(huge, 4096);
  EXPECT_LE(bounded.size(), 4096u + 32);
  EXPECT_NE(bounded.find("(16777216 bytes)"), std::string::npos);
}

}  // namespace
}  // namespace quant
