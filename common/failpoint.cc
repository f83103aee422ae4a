#include "common/failpoint.h"

#include <atomic>
#include <cstdlib>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"

namespace quant {
namespace {

struct Armed {
  absl::Mutex mu;
  std::map<std::string, int64_t> hits ABSL_GUARDED_BY(mu);  // <0: always.
  std::atomic<bool> any{false};
};

void Parse(Armed& armed) {
  absl::MutexLock lock(&armed.mu);
  armed.hits.clear();
  const char* env = std::getenv("QS_FAILPOINTS");
  if (env != nullptr) {
    for (absl::string_view item :
         absl::StrSplit(env, ',', absl::SkipWhitespace())) {
      std::pair<absl::string_view, absl::string_view> parts =
          absl::StrSplit(item, absl::MaxSplits(':', 1));
      int64_t count = 1;
      if (!parts.second.empty() && !absl::SimpleAtoi(parts.second, &count)) {
        continue;
      }
      armed.hits[std::string(parts.first)] = count == 0 ? -1 : count;
    }
  }
  armed.any.store(!armed.hits.empty(), std::memory_order_relaxed);
}

Armed& State() {
  static Armed* armed = [] {
    auto* a = new Armed;
    Parse(*a);
    return a;
  }();
  return *armed;
}

}  // namespace

void ReloadFailpointsForTest() { Parse(State()); }

bool Failpoint(absl::string_view name) {
  Armed& armed = State();
  if (!armed.any.load(std::memory_order_relaxed)) return false;
  absl::MutexLock lock(&armed.mu);
  auto it = armed.hits.find(std::string(name));
  if (it == armed.hits.end() || it->second == 0) return false;
  if (it->second > 0) --it->second;
  return true;
}

}  // namespace quant
