// Process plumbing shared by the service's programs: timestamped log lines
// on stderr, and SIGTERM / SIGINT turned into a graceful stop (drain) with
// a second signal exiting at once.
#ifndef COMMON_PROCESS_H_
#define COMMON_PROCESS_H_

#include <functional>
#include <string>

#include "absl/strings/string_view.h"

namespace quant {

// "2026-11-29T12:00:00Z <program>: <line>" on stderr, one line at a time.
void LogLine(absl::string_view program, const std::string& line);

// Call first in main, before any thread is started: blocks SIGTERM and
// SIGINT in this thread and every thread it starts. Then OnStopSignal
// starts the thread that waits for them: the first calls `stop` (from that
// thread), a second exits the process with code 130. Threads libraries
// started before main() (OpenBLAS's pool) do not have the signals blocked;
// a handler forwards the signals they receive to the waiting thread.
void BlockStopSignals();
void OnStopSignal(std::function<void(int signal)> stop);

}  // namespace quant

#endif  // COMMON_PROCESS_H_
