#include "common/thread_stack.h"

#include <pthread.h>

#include <cstring>

#include "gtest/gtest.h"

namespace quant {
namespace {

// 256 KiB of static TLS, as a program linking the CUDA libraries carries:
// without the padding, a 100 KiB stack (civetweb's) cannot hold it and
// pthread_create fails.
thread_local char big_tls[256 << 10];

void* UseStackAndTls(void*) {
  volatile char on_stack[64 << 10];
  std::memset(const_cast<char*>(on_stack), 1, sizeof(on_stack));
  std::memset(big_tls, on_stack[100], sizeof(big_tls));
  return reinterpret_cast<void*>(static_cast<intptr_t>(big_tls[12345]));
}

TEST(ThreadStackTest, CountsThisProgramsStaticTls) {
  EXPECT_GE(StaticTlsBytes(), sizeof(big_tls));
  EXPECT_GE(PaddedStackSize(100 << 10), (100 << 10) + sizeof(big_tls));
}

TEST(ThreadStackTest, ASmallRequestedStackStillStartsAThread) {
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, 100 << 10), 0);
  size_t size = 0;
  ASSERT_EQ(pthread_attr_getstacksize(&attr, &size), 0);
  EXPECT_EQ(size, PaddedStackSize(100 << 10));
  pthread_t thread;
  ASSERT_EQ(pthread_create(&thread, &attr, UseStackAndTls, nullptr), 0);
  void* result = nullptr;
  ASSERT_EQ(pthread_join(thread, &result), 0);
  EXPECT_EQ(result, reinterpret_cast<void*>(1));
  pthread_attr_destroy(&attr);
}

}  // namespace
}  // namespace quant
