#include "tests/fuzz/fuzz_util.h"

#include <dirent.h>
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace quant::fuzz {
namespace {

std::string* scratch_dir = nullptr;

void RemoveScratchDir() {
  if (scratch_dir == nullptr) return;
  ClearScratchDir();
  rmdir(scratch_dir->c_str());
}

}  // namespace

const std::string& ScratchDir() {
  if (scratch_dir != nullptr) return *scratch_dir;
  std::string base = "/dev/shm";
  if (access(base.c_str(), W_OK) != 0) {
    const char* tmp = std::getenv("TMPDIR");
    base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string templ = base + "/qs-fuzz-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) {
    Fail(absl::StrCat("cannot make a scratch directory under ", base, ": ",
                      std::strerror(errno)));
  }
  scratch_dir = new std::string(templ);
  std::atexit(RemoveScratchDir);
  return *scratch_dir;
}

void ClearScratchDir() {
  const std::string& dir = ScratchDir();
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return;
  while (const dirent* entry = readdir(d)) {
    if (std::strcmp(entry->d_name, ".") == 0 ||
        std::strcmp(entry->d_name, "..") == 0) {
      continue;
    }
    unlink(absl::StrCat(dir, "/", entry->d_name).c_str());
  }
  closedir(d);
}

std::string WriteScratchFile(absl::string_view name, absl::string_view bytes) {
  std::string path = absl::StrCat(ScratchDir(), "/", name);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr ||
      (!bytes.empty() &&
       std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) ||
      std::fclose(f) != 0) {
    Fail(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return path;
}

std::vector<absl::string_view> SplitParts(const uint8_t* data, size_t size) {
  absl::string_view rest(reinterpret_cast<const char*>(data), size);
  std::vector<absl::string_view> parts;
  for (;;) {
    size_t at = rest.find(kPartSeparator);
    if (at == absl::string_view::npos) break;
    parts.push_back(rest.substr(0, at));
    rest.remove_prefix(at + kPartSeparator.size());
  }
  parts.push_back(rest);
  return parts;
}

void Note(absl::string_view what, const absl::Status& status) {
  static const bool verbose = [] {
    const char* v = std::getenv("QS_FUZZ_VERBOSE");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  if (!verbose) return;
  std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(what.size()), what.data(),
               status.ToString().c_str());
}

void Fail(absl::string_view message) {
  std::fprintf(stderr, "fuzz property violated: %.*s\n",
               static_cast<int>(message.size()), message.data());
  std::abort();
}

}  // namespace quant::fuzz

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
// common/sentencepiece.cc opens libsentencepiece with RTLD_DEEPBIND, which
// AddressSanitizer refuses (google/sanitizers#611: the library would bypass
// its malloc). A fuzz binary links no libprotobuf, the reason for the flag,
// so it drops the flag and hands the call to the sanitizer's own dlopen
// (this strong definition overrides the runtime's weak alias).
extern "C" void* __interceptor_dlopen(const char* filename, int flag);
extern "C" void* dlopen(const char* filename, int flag) {
  return __interceptor_dlopen(filename, flag & ~RTLD_DEEPBIND);
}
#endif
#endif
