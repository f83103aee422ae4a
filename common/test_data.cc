#include "common/test_data.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace quant {

std::string SharedDataDir() {
  const char* env = std::getenv("QS_SHARED_DATA");
  if (env == nullptr || *env == '\0') return "";
  struct stat st;
  const std::string probe = std::string(env) + "/llama-29m-books/config.json";
  if (::stat(probe.c_str(), &st) != 0) return "";
  return env;
}

std::string MakeTestTempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  std::filesystem::path dir =
      std::filesystem::path(base != nullptr && *base != '\0'
                                ? base
                                : std::filesystem::temp_directory_path()) /
      (name + "." + std::to_string(std::rand()) + "." +
       std::to_string(static_cast<long>(::getpid())));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace quant
