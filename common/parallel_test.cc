#include "common/parallel.h"

#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(ParallelForEachTest, RunsEveryIndexOnceOnAtMostTheThreadsAsked) {
  for (const uint64_t count : {0u, 1u, 2u, 7u, 1000u}) {
    for (const int threads : {-1, 0, 1, 3, 16}) {
      std::vector<std::atomic<int>> runs(count);
      std::mutex mu;
      std::set<std::thread::id> ids;
      ParallelForEach(count, threads, [&](uint64_t i) {
        runs[i].fetch_add(1);
        std::lock_guard<std::mutex> lock(mu);
        ids.insert(std::this_thread::get_id());
      });
      for (uint64_t i = 0; i < count; ++i) {
        EXPECT_EQ(runs[i].load(), 1) << count << " " << threads << " " << i;
      }
      EXPECT_LE(ids.size(), static_cast<size_t>(std::max(threads, 1)));
      // One index runs here, on the caller's thread.
      if (count == 1) {
        EXPECT_EQ(*ids.begin(), std::this_thread::get_id());
      }
    }
  }
}

TEST(ParallelForEachTest, HardwareThreadsIsPositive) {
  EXPECT_GE(HardwareThreads(), 1);
}

}  // namespace
}  // namespace quant
