#include "common/file.h"

#include <sys/stat.h>

#include <fstream>
#include <string>

#include "common/checksum.h"
#include "common/test_data.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

constexpr Durability kDurabilities[] = {Durability::kDurable,
                                        Durability::kScratch};

// Scratch files skip the fsyncs only: they are published as atomically.
TEST(AtomicFileWriterTest, CommitPublishesExactBytes) {
  for (const Durability durability : kDurabilities) {
    SCOPED_TRACE(durability == Durability::kDurable ? "durable" : "scratch");
    const std::string dir = MakeTestTempDir("file_test");
    const std::string path = dir + "/out.bin";
    auto writer = AtomicFileWriter::Create(path, durability);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE((*writer)->Write("abc").ok());
    ASSERT_TRUE((*writer)->WriteZeros(5000).ok());
    // A write larger than the internal buffer goes straight to the file.
    const std::string big(3 << 20, 'x');
    ASSERT_TRUE((*writer)->Write(big).ok());
    EXPECT_EQ((*writer)->offset(), 3u + 5000u + big.size());
    EXPECT_FALSE(Exists(path)) << "nothing may appear before Commit";
    ASSERT_TRUE((*writer)->Commit().ok());
    EXPECT_FALSE(Exists((*writer)->temp_path()));

    auto contents = ReadFileToString(path);
    ASSERT_TRUE(contents.ok()) << contents.status();
    ASSERT_EQ(contents->size(), 3u + 5000u + big.size());
    EXPECT_EQ(contents->substr(0, 3), "abc");
    EXPECT_EQ(contents->substr(3, 5000), std::string(5000, '\0'));
    EXPECT_EQ(contents->substr(5003), big);
  }
}

TEST(AtomicFileWriterTest, AbandonedWriterLeavesNothingBehind) {
  for (const Durability durability : kDurabilities) {
    const std::string dir = MakeTestTempDir("file_test");
    const std::string path = dir + "/out.bin";
    ASSERT_TRUE(WriteFileAtomically(path, "old contents").ok());
    std::string temp_path;
    {
      auto writer = AtomicFileWriter::Create(path, durability);
      ASSERT_TRUE(writer.ok());
      ASSERT_TRUE((*writer)->Write("partial").ok());
      temp_path = (*writer)->temp_path();
    }
    EXPECT_FALSE(Exists(temp_path));
    // The previous complete file is untouched.
    EXPECT_EQ(*ReadFileToString(path), "old contents");
  }
}

// The content digest computed while writing (small writes through the
// buffer, large ones hashed while they are written, across pieces) is the
// file's.
TEST(AtomicFileWriterTest, HashedContentsAreTheFilesDigest) {
  const std::string dir = MakeTestTempDir("file_test");
  const std::string path = dir + "/out.bin";
  auto writer = AtomicFileWriter::Create(path, Durability::kScratch);
  ASSERT_TRUE(writer.ok()) << writer.status();
  (*writer)->HashContents();
  std::string big(kDigestPieceBytes + (5 << 20) + 3, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31);
  ASSERT_TRUE((*writer)->Write("header").ok());
  ASSERT_TRUE((*writer)->Write(big).ok());
  ASSERT_TRUE((*writer)->WriteZeros(777).ok());
  ASSERT_TRUE((*writer)->Write(big.substr(0, 1 << 20)).ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  const absl::StatusOr<std::string> file = ContentDigestOfFile(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*writer)->digest(), *file);
  // Without HashContents there is no digest.
  auto plain = AtomicFileWriter::Create(dir + "/plain.bin");
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE((*plain)->Write(big).ok());
  ASSERT_TRUE((*plain)->Commit().ok());
  EXPECT_TRUE((*plain)->digest().empty());
}

TEST(AtomicFileWriterTest, WriteAfterCommitFails) {
  const std::string dir = MakeTestTempDir("file_test");
  auto writer = AtomicFileWriter::Create(dir + "/a");
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_EQ((*writer)->Write("x").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(AtomicFileWriterTest, UnwritableDirectoryIsAnError) {
  auto writer = AtomicFileWriter::Create("/nonexistent-dir/x/out.bin");
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(writer.status().message().find("/nonexistent-dir/x/out.bin"),
            std::string::npos);
}

TEST(MappedFileTest, MapsContentsAndSurvivesRelease) {
  const std::string dir = MakeTestTempDir("file_test");
  const std::string path = dir + "/data";
  std::string data(1 << 16, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  ASSERT_TRUE(WriteFileAtomically(path, data).ok());
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->size(), data.size());
  (*file)->Release(100, 40000);
  // Released pages are re-read from the file on the next access.
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*file)->data()),
                        (*file)->size()),
            data);
}

// Resident file-backed memory of this process, from /proc/self/status.
int64_t RssFileKb() {
  // A stream, not ReadFileToString: /proc files report a size of 0.
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("RssFile:", 0) == 0) return std::stoll(line.substr(8));
  }
  return -1;
}

TEST(MappedFileTest, ReleaseDropsPagesFromTheResidentSet) {
  const std::string dir = MakeTestTempDir("file_test");
  const std::string path = dir + "/big";
  constexpr size_t kBytes = 64 << 20;
  ASSERT_TRUE(WriteFileAtomically(path, std::string(kBytes, '\x5a')).ok());
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  const int64_t before = RssFileKb();
  if (before < 0) GTEST_SKIP() << "no RssFile in /proc/self/status";
  uint64_t sum = 0;
  for (size_t i = 0; i < kBytes; i += 4096) sum += (*file)->data()[i];
  EXPECT_EQ(sum, (kBytes / 4096) * 0x5a);
  const int64_t touched = RssFileKb();
  EXPECT_GT(touched - before, 60 << 10) << "touching 64 MiB maps it in";
  (*file)->Release(0, kBytes);
  EXPECT_LT(RssFileKb() - before, 4 << 10) << "Release hands it back";
}

TEST(AtomicFileWriterTest, TwoWritersOfOnePathDoNotCollide) {
  const std::string dir = MakeTestTempDir("file_test");
  auto a = AtomicFileWriter::Create(dir + "/out");
  auto b = AtomicFileWriter::Create(dir + "/out");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE((*a)->temp_path(), (*b)->temp_path());
  ASSERT_TRUE((*a)->Write("first").ok());
  ASSERT_TRUE((*b)->Write("second").ok());
  ASSERT_TRUE((*a)->Commit().ok());
  b->reset();  // Abandoning b must not disturb a's committed file.
  EXPECT_EQ(*ReadFileToString(dir + "/out"), "first");
}

TEST(MappedFileTest, EmptyFileAndErrors) {
  const std::string dir = MakeTestTempDir("file_test");
  ASSERT_TRUE(WriteFileAtomically(dir + "/empty", "").ok());
  auto empty = MappedFile::Open(dir + "/empty");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ((*empty)->size(), 0u);
  EXPECT_EQ(MappedFile::Open(dir + "/missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(MappedFile::Open(dir).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RenameDurablyTest, RenamesAndNamesFailures) {
  const std::string dir = MakeTestTempDir("file_test");
  ASSERT_TRUE(WriteFileAtomically(dir + "/a", "bytes").ok());
  ASSERT_TRUE(RenameDurably(dir + "/a", dir + "/b").ok());
  EXPECT_EQ(*ReadFileToString(dir + "/b"), "bytes");
  EXPECT_EQ(MappedFile::Open(dir + "/a").status().code(),
            absl::StatusCode::kNotFound);
  const absl::Status missing = RenameDurably(dir + "/a", dir + "/c");
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find(dir + "/a"), absl::string_view::npos)
      << missing.message();
  EXPECT_TRUE(SyncDirectory(dir).ok());
  EXPECT_FALSE(SyncDirectory(dir + "/b").ok());  // Not a directory.
}

// A stamp changes when the file is replaced (another inode), not when it
// is only read; a missing file has none.
TEST(FileStampTest, ChangesWithTheFileNotWithReads) {
  const std::string dir = MakeTestTempDir("file_test");
  const std::string path = dir + "/stamped";
  ASSERT_TRUE(WriteFileAtomically(path, "one").ok());
  const FileStamp first = StampOf(path);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first.size, 3);
  ASSERT_TRUE(ReadFileToString(path).ok());
  EXPECT_EQ(StampOf(path), first);
  ASSERT_TRUE(WriteFileAtomically(path, "one").ok());  // Same bytes, new file.
  EXPECT_NE(StampOf(path), first);
  EXPECT_FALSE(StampOf(dir + "/missing").ok());
}

}  // namespace
}  // namespace quant
