#include "common/failpoint.h"

#include <cstdlib>

#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(FailpointTest, OffUnlessArmedAndEachHitCounts) {
  unsetenv("QS_FAILPOINTS");
  ReloadFailpointsForTest();
  EXPECT_FALSE(Failpoint("a"));
  setenv("QS_FAILPOINTS", "a,b:2,c:0,d:x", 1);
  ReloadFailpointsForTest();
  EXPECT_TRUE(Failpoint("a"));
  EXPECT_FALSE(Failpoint("a"));
  EXPECT_TRUE(Failpoint("b"));
  EXPECT_TRUE(Failpoint("b"));
  EXPECT_FALSE(Failpoint("b"));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(Failpoint("c"));
  EXPECT_FALSE(Failpoint("d"));  // A malformed count arms nothing.
  EXPECT_FALSE(Failpoint("e"));
  unsetenv("QS_FAILPOINTS");
  ReloadFailpointsForTest();
  EXPECT_FALSE(Failpoint("c"));
}

}  // namespace
}  // namespace quant
