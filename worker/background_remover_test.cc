#include "worker/background_remover.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "common/test_data.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

bool IsEmptyDir(const std::string& dir) {
  return fs::is_directory(dir) && fs::is_empty(dir);
}

TEST(BackgroundRemoverTest, FreesTheNameAtOnceAndRemovesTheContentsLater) {
  const std::string dir = MakeTestTempDir("background_remover");
  fs::create_directories(dir + "/trash/left-by-a-crash");
  auto remover = BackgroundRemover::Create(dir + "/trash");
  ASSERT_TRUE(remover.ok()) << remover.status();
  EXPECT_TRUE(IsEmptyDir(dir + "/trash"));

  std::ofstream(dir + "/file") << "activations";
  fs::create_directories(dir + "/task/out");
  std::ofstream(dir + "/task/out/result") << "result";
  (*remover)->Remove(dir + "/file");
  (*remover)->Remove(dir + "/task");
  (*remover)->Remove(dir + "/absent");  // No error, nothing queued.
  EXPECT_FALSE(fs::exists(dir + "/file"));
  EXPECT_FALSE(fs::exists(dir + "/task"));
  // The names are free: a new file of the same name stays.
  std::ofstream(dir + "/file") << "the next block's";
  (*remover)->Wait();
  EXPECT_TRUE(IsEmptyDir(dir + "/trash"));
  std::ifstream in(dir + "/file");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}),
            "the next block's");
}

TEST(BackgroundRemoverTest, DestructionRemovesWhatIsQueued) {
  const std::string dir = MakeTestTempDir("background_remover_destroy");
  {
    auto remover = BackgroundRemover::Create(dir + "/trash");
    ASSERT_TRUE(remover.ok());
    for (int i = 0; i < 20; ++i) {
      const std::string path = dir + "/d" + std::to_string(i);
      fs::create_directories(path + "/sub");
      std::ofstream(path + "/sub/f") << i;
      (*remover)->Remove(path);
    }
  }
  EXPECT_TRUE(IsEmptyDir(dir + "/trash"));
  for (int i = 0; i < 20; ++i) {
    EXPECT_FALSE(fs::exists(dir + "/d" + std::to_string(i)));
  }
}

TEST(BackgroundRemoverTest, RefusesATrashItCannotCreate) {
  const std::string dir = MakeTestTempDir("background_remover_bad");
  std::ofstream(dir + "/a-file") << "x";
  const auto remover = BackgroundRemover::Create(dir + "/a-file/trash");
  ASSERT_FALSE(remover.ok());
  EXPECT_NE(remover.status().message().find("a-file/trash"), std::string::npos);
}

}  // namespace
}  // namespace quant
