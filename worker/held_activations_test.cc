#include "worker/held_activations.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "common/test_data.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

std::string WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(HeldActivationsTest, FindsOnlyWhatWasPutWithTheSameChecksum) {
  const std::string dir = MakeTestTempDir("held_activations");
  std::filesystem::create_directories(dir + "/held");
  WriteFile(dir + "/held/stale.safetensors", "");  // Emptied by Create.
  ASSERT_TRUE(std::filesystem::exists(dir + "/held/stale.safetensors"));
  auto held = HeldActivations::Create(dir + "/held", 2);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_FALSE(std::filesystem::exists(dir + "/held/stale.safetensors"));

  ASSERT_TRUE(
      (*held)->Put("7", 3, 0, WriteFile(dir + "/a", "boundary 3"), "aa").ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/a"));  // Moved in.
  const auto found = (*held)->Find("7", 3, 0, "aa");
  ASSERT_TRUE(found.has_value());
  std::ifstream in(*found, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "boundary 3");
  EXPECT_FALSE((*held)->Find("7", 4, 0, "aa").has_value());
  EXPECT_FALSE((*held)->Find("8", 3, 0, "aa").has_value());
  EXPECT_FALSE((*held)->Find("7", 3, 1, "aa").has_value());  // Another shard.
  // Another checksum (the task was computed again elsewhere): dropped.
  EXPECT_FALSE((*held)->Find("7", 3, 0, "bb").has_value());
  EXPECT_FALSE((*held)->Find("7", 3, 0, "aa").has_value());
  EXPECT_FALSE(std::filesystem::exists(*found));
}

TEST(HeldActivationsTest, KeepsAtMostCapacityDroppingTheOldest) {
  const std::string dir = MakeTestTempDir("held_activations_capacity");
  auto held = HeldActivations::Create(dir + "/held", 2);
  ASSERT_TRUE(held.ok());
  for (int b = 1; b <= 3; ++b) {
    ASSERT_TRUE((*held)
                    ->Put("1", b, 0, WriteFile(dir + "/x", std::to_string(b)),
                          "s" + std::to_string(b))
                    .ok());
  }
  EXPECT_FALSE((*held)->Find("1", 1, 0, "s1").has_value());
  EXPECT_TRUE((*held)->Find("1", 2, 0, "s2").has_value());
  EXPECT_TRUE((*held)->Find("1", 3, 0, "s3").has_value());
  (*held)->Drop("1", 3, 0);
  EXPECT_FALSE((*held)->Find("1", 3, 0, "s3").has_value());
  // Capacity 0 keeps nothing, and a file is never kept without a checksum.
  auto none = HeldActivations::Create(dir + "/none", 0);
  ASSERT_TRUE(none.ok());
  ASSERT_TRUE((*none)->Put("1", 1, 0, WriteFile(dir + "/y", "y"), "s").ok());
  EXPECT_FALSE((*none)->Find("1", 1, 0, "s").has_value());
  ASSERT_TRUE((*held)->Put("1", 5, 0, WriteFile(dir + "/z", "z"), "").ok());
  EXPECT_FALSE((*held)->Find("1", 5, 0, "").has_value());
}

// Activations committed deferred are the only copy until uploaded: room is
// made by evicting others, and they go once unpinned like any other.
TEST(HeldActivationsTest, PinnedFilesAreNotEvictedUntilUnpinned) {
  const std::string dir = MakeTestTempDir("held_activations_pinned");
  auto held = HeldActivations::Create(dir + "/held", 1);
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(
      (*held)->Put("1", 1, 0, WriteFile(dir + "/x", "1"), "s1", true).ok());
  ASSERT_TRUE(
      (*held)->Put("1", 2, 0, WriteFile(dir + "/x", "2"), "s2", true).ok());
  ASSERT_TRUE((*held)->Put("1", 3, 0, WriteFile(dir + "/x", "3"), "s3").ok());
  EXPECT_TRUE((*held)->Find("1", 1, 0, "s1").has_value());
  EXPECT_TRUE((*held)->Find("1", 2, 0, "s2").has_value());
  EXPECT_TRUE((*held)->Find("1", 3, 0, "s3").has_value());
  (*held)->Unpin("1", 1, 0);
  ASSERT_TRUE((*held)->Put("1", 4, 0, WriteFile(dir + "/x", "4"), "s4").ok());
  EXPECT_FALSE((*held)->Find("1", 1, 0, "s1").has_value());  // The oldest.
  EXPECT_TRUE((*held)->Find("1", 2, 0, "s2").has_value());
  // Capacity 0 still keeps a pinned file.
  auto none = HeldActivations::Create(dir + "/none", 0);
  ASSERT_TRUE(none.ok());
  ASSERT_TRUE(
      (*none)->Put("1", 1, 0, WriteFile(dir + "/y", "y"), "s", true).ok());
  EXPECT_TRUE((*none)->Find("1", 1, 0, "s").has_value());
}

}  // namespace
}  // namespace quant
