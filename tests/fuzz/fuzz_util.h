// Helpers shared by the fuzz targets in this folder: a scratch directory
// private to the process (the parsers read files), and inputs that hold
// several files.
//
// Every target defines LLVMFuzzerTestOneInput. Built with -DQS_FUZZ=ON and
// clang, each is a libFuzzer binary with AddressSanitizer and
// UndefinedBehaviorSanitizer; in the ordinary builds each is linked with
// replay_main.cc and replays its committed corpus as a test.
#ifndef TESTS_FUZZ_FUZZ_UTIL_H_
#define TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace quant::fuzz {

// Separates the files of a multi-file input (see SplitParts).
inline constexpr absl::string_view kPartSeparator = "\n--8<--\n";

// An empty directory made for this process (under /dev/shm where it exists,
// else $TMPDIR or /tmp), removed with its files at exit.
const std::string& ScratchDir();

// Removes every file in ScratchDir() (it holds no subdirectories).
void ClearScratchDir();

// Writes `bytes` to ScratchDir()/`name` and returns the path. A failure to
// write is the harness's, not the parser's: it aborts with a message.
std::string WriteScratchFile(absl::string_view name, absl::string_view bytes);

// The input cut at each kPartSeparator: part 0 is the text before the first
// separator, and so on. An input without a separator is one part.
std::vector<absl::string_view> SplitParts(const uint8_t* data, size_t size);

// With QS_FUZZ_VERBOSE=1 in the environment, prints what a parser said
// about the input (to see which seeds get how far); otherwise nothing.
void Note(absl::string_view what, const absl::Status& status);

// Stops the process with `message` when a property the harness checks is
// violated (a finding, like a sanitizer report).
[[noreturn]] void Fail(absl::string_view message);

}  // namespace quant::fuzz

#endif  // TESTS_FUZZ_FUZZ_UTIL_H_
