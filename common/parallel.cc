#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace quant {

void ParallelForEach(uint64_t count, int threads,
                     const std::function<void(uint64_t)>& body) {
  std::atomic<uint64_t> next{0};
  const auto work = [&] {
    for (uint64_t i; (i = next.fetch_add(1)) < count;) body(i);
  };
  const uint64_t helpers =
      std::min<uint64_t>(count, static_cast<uint64_t>(std::max(threads, 1))) -
      std::min<uint64_t>(count, 1);
  std::vector<std::thread> started;
  for (uint64_t t = 0; t < helpers; ++t) started.emplace_back(work);
  work();
  for (std::thread& thread : started) thread.join();
}

int HardwareThreads() {
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace quant
