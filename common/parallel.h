// Work split over short-lived threads, for the few large steps whose one
// core is the bottleneck (hashing, copying and converting gigabytes) and
// which run outside OpenMP's pool (gRPC handlers, the worker's threads).
#ifndef COMMON_PARALLEL_H_
#define COMMON_PARALLEL_H_

#include <cstdint>
#include <functional>

namespace quant {

// Runs body(i) for every i in [0, count) on up to `threads` threads (this
// one among them, none started for a count of 1), each taking the next i
// when it is free; returns once all are done.
void ParallelForEach(uint64_t count, int threads,
                     const std::function<void(uint64_t)>& body);

// The cores of this machine (at least 1).
int HardwareThreads();

}  // namespace quant

#endif  // COMMON_PARALLEL_H_
