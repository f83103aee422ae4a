// Thread stacks that leave room for static thread-local storage.
//
// glibc carves a thread's static TLS (the PT_TLS segments of the program and
// of every library loaded at start) out of the stack that
// pthread_attr_setstacksize asked for (glibc bug 11787). The CUDA libraries
// bring over 200 KiB of it (with OpenBLAS), more than the 100 KiB civetweb
// gives the metrics server's threads, so in a program that links CUDA their
// pthread_create failed and the metrics endpoint could not start. Linking
// this component replaces pthread_attr_setstacksize in the program: a
// requested size grows by the static TLS, so each thread gets the stack it
// asked for after its TLS. Sizes no library asks for explicitly are
// unaffected.
#ifndef COMMON_THREAD_STACK_H_
#define COMMON_THREAD_STACK_H_

#include <cstddef>

namespace quant {

// Bytes of static TLS each thread of this process carries: the PT_TLS
// segments of the objects loaded at start, each rounded up to its alignment.
size_t StaticTlsBytes();

// The stack size that pthread_attr_setstacksize(`requested`) sets in a
// program that links this component.
size_t PaddedStackSize(size_t requested);

}  // namespace quant

#endif  // COMMON_THREAD_STACK_H_
