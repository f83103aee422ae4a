// Locates ../shared/data for tests and benchmarks that use the real model.
#ifndef COMMON_TEST_DATA_H_
#define COMMON_TEST_DATA_H_

#include <string>

namespace quant {

// The shared data folder (env QS_SHARED_DATA, set by both builds), or "" when
// it is absent so that the caller can skip with a clear message.
std::string SharedDataDir();

// A fresh, empty directory under the test's temporary directory.
std::string MakeTestTempDir(const std::string& name);

}  // namespace quant

#endif  // COMMON_TEST_DATA_H_
