#include "common/thread_stack.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <cerrno>
#include <cstdint>

namespace quant {
namespace {

size_t ComputeStaticTlsBytes() {
  size_t total = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& header = info->dlpi_phdr[i];
          if (header.p_type != PT_TLS) continue;
          const size_t align = header.p_align > 0 ? header.p_align : 1;
          *static_cast<size_t*>(data) +=
              (header.p_memsz + align - 1) / align * align;
        }
        return 0;
      },
      &total);
  return total;
}

using SetStackSize = int (*)(pthread_attr_t*, size_t);

SetStackSize LibcSetStackSize() {
  // The version libraries built against glibc 2.34 and later bind to.
  void* found = dlvsym(RTLD_NEXT, "pthread_attr_setstacksize", "GLIBC_2.34");
  if (found == nullptr) found = dlsym(RTLD_NEXT, "pthread_attr_setstacksize");
  return reinterpret_cast<SetStackSize>(found);
}

}  // namespace

size_t StaticTlsBytes() {
  // Libraries opened later get dynamic TLS, allocated apart from the stack.
  static const size_t bytes = ComputeStaticTlsBytes();
  return bytes;
}

size_t PaddedStackSize(size_t requested) {
  // A page of slack for the TCB and the alignment glibc adds.
  return requested + StaticTlsBytes() + 4096;
}

}  // namespace quant

// Exported from the program (see the build files) so that the libraries'
// calls bind here before libc.
extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr,
                                         size_t stacksize) {
  static const quant::SetStackSize libc = quant::LibcSetStackSize();
  if (libc == nullptr) return ENOSYS;
  return libc(attr, quant::PaddedStackSize(stacksize));
}
