#include "worker/held_activations.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

// The last set kept is also in memory, found under its key and digest;
// taken, or another task's set asked for, it is released.
TEST(HeldActivationsTest, KeepsTheLastSetInMemory) {
  const std::string dir = MakeTestTempDir("held_activations_memory");
  auto remover = BackgroundRemover::Create(dir + "/trash");
  ASSERT_TRUE(remover.ok());
  auto held = HeldActivations::Create(dir + "/held", 2, remover->get());
  ASSERT_TRUE(held.ok());
  const auto values = [](float v) {
    return std::make_shared<std::vector<float>>(3, v);
  };
  ASSERT_TRUE((*held)->Put("1", 1, 0, WriteFile(dir + "/x", "1"), "s1").ok());
  (*held)->KeepInMemory("1", 1, 0, "s1", values(1));
  ASSERT_NE((*held)->FindInMemory("1", 1, 0, "s1", /*take=*/false), nullptr);
  EXPECT_EQ((*held)->FindInMemory("1", 1, 0, "s1", false)->at(2), 1.0f);
  const auto taken = (*held)->FindInMemory("1", 1, 0, "s1", /*take=*/true);
  ASSERT_NE(taken, nullptr);
  EXPECT_EQ(taken.use_count(), 1);  // The caller's alone to overwrite.
  EXPECT_EQ((*held)->FindInMemory("1", 1, 0, "s1", false), nullptr);
  EXPECT_TRUE((*held)->Find("1", 1, 0, "s1").has_value());  // The file stays.

  // Another key or digest finds nothing and releases the set.
  (*held)->KeepInMemory("1", 2, 0, "s2", values(2));
  EXPECT_EQ((*held)->FindInMemory("1", 2, 0, "other", false), nullptr);
  EXPECT_EQ((*held)->FindInMemory("1", 2, 0, "s2", false), nullptr);
  (*held)->KeepInMemory("1", 2, 0, "s2", values(2));
  EXPECT_EQ((*held)->FindInMemory("1", 3, 0, "s2", false), nullptr);
  EXPECT_EQ((*held)->FindInMemory("1", 2, 0, "s2", false), nullptr);
  // Only the last set is kept; a drop or a release lets it go.
  (*held)->KeepInMemory("1", 2, 0, "s2", values(2));
  (*held)->KeepInMemory("1", 3, 0, "s3", values(3));
  EXPECT_NE((*held)->FindInMemory("1", 3, 0, "s3", false), nullptr);
  (*held)->Drop("1", 3, 0);
  EXPECT_EQ((*held)->FindInMemory("1", 3, 0, "s3", false), nullptr);
  (*held)->KeepInMemory("1", 4, 0, "s4", values(4));
  (*held)->ReleaseMemory();
  EXPECT_EQ((*held)->FindInMemory("1", 4, 0, "s4", false), nullptr);
  // Put again under the key (a new digest): the old values go.
  (*held)->KeepInMemory("1", 5, 0, "s5", values(5));
  ASSERT_TRUE((*held)->Put("1", 5, 0, WriteFile(dir + "/x", "5"), "t5").ok());
  EXPECT_EQ((*held)->FindInMemory("1", 5, 0, "s5", false), nullptr);
  // Dropped files went through the remover.
  (*remover)->Wait();
  EXPECT_TRUE(std::filesystem::is_empty(dir + "/trash"));
  EXPECT_FALSE((*held)->Find("1", 3, 0, "s3").has_value());

  // Capacity 0 keeps nothing in memory either.
  auto none = HeldActivations::Create(dir + "/none", 0);
  ASSERT_TRUE(none.ok());
  (*none)->KeepInMemory("1", 1, 0, "s1", values(1));
  EXPECT_EQ((*none)->FindInMemory("1", 1, 0, "s1", false), nullptr);
}

// A file written from memory on a thread of its own: found (and dropped)
// only once written; a failed write is dropped; the values stay in memory
// for the next task, which learns the write's future with them.
TEST(HeldActivationsTest, PutWritingWritesInTheBackground) {
  const std::string dir = MakeTestTempDir("held_activations_writing");
  auto held = HeldActivations::Create(dir + "/held", 2);
  ASSERT_TRUE(held.ok());
  std::promise<void> go;
  std::shared_future<void> gate = go.get_future().share();
  const auto values = std::make_shared<std::vector<float>>(4, 2.5f);
  const auto write_bytes = [gate](const std::string& path,
                                  const std::vector<float>& v) {
    gate.wait();
    WriteFile(path, std::string(reinterpret_cast<const char*>(v.data()),
                                v.size() * sizeof(float)));
    return absl::OkStatus();
  };
  std::shared_future<absl::Status> written = (*held)->PutWriting(
      "1", 1, 0, "s1", /*pinned=*/true, values, write_bytes);
  std::shared_future<absl::Status> seen;
  const auto in_memory =
      (*held)->FindInMemory("1", 1, 0, "s1", /*take=*/false, &seen);
  EXPECT_EQ(in_memory, values);
  ASSERT_TRUE(seen.valid());
  EXPECT_EQ(seen.wait_for(std::chrono::milliseconds(0)),
            std::future_status::timeout);
  // Find waits for the write.
  std::thread finder([&] {
    const auto found = (*held)->Find("1", 1, 0, "s1");
    ASSERT_TRUE(found.has_value());
    std::ifstream in(*found, std::ios::binary);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}).size(),
              4 * sizeof(float));
  });
  go.set_value();
  finder.join();
  EXPECT_TRUE(written.get().ok());
  // Here twice (values, in_memory) and in memory: the writer let go.
  EXPECT_EQ(values.use_count(), 3);

  // A failed write: no file to find, and the upload learns why.
  const auto failed =
      (*held)->PutWriting("1", 2, 0, "s2", /*pinned=*/true, values,
                          [](const std::string&, const std::vector<float>&) {
                            return absl::InternalError("disk full");
                          });
  EXPECT_EQ(failed.get().message(), "disk full");
  EXPECT_FALSE((*held)->Find("1", 2, 0, "s2").has_value());
  // Nothing kept (capacity 0, not pinned): nothing written.
  auto none = HeldActivations::Create(dir + "/none", 0);
  ASSERT_TRUE(none.ok());
  bool called = false;
  const auto skipped =
      (*none)->PutWriting("1", 1, 0, "s1", /*pinned=*/false, values,
                          [&](const std::string&, const std::vector<float>&) {
                            called = true;
                            return absl::OkStatus();
                          });
  EXPECT_EQ(skipped.get().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace quant
