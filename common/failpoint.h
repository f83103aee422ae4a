// Failpoints for the fault-injection suite (tests/fault_injection_test.sh):
// named places in the programs that misbehave on purpose when the
// environment asks, e.g.
//   QS_FAILPOINTS=worker.complete_reply_lost,worker.upload_flip_bit:2
// makes the first CompleteTask reply count as lost and flips a bit in the
// next two uploaded chunks. Without QS_FAILPOINTS every failpoint is off
// and costs one relaxed atomic load.
#ifndef COMMON_FAILPOINT_H_
#define COMMON_FAILPOINT_H_

#include "absl/strings/string_view.h"

namespace quant {

// True when `name` is armed and has hits left (each true uses one; a name
// without ":N" has one hit, ":0" every hit). Thread-safe.
bool Failpoint(absl::string_view name);

// Re-reads QS_FAILPOINTS (tests).
void ReloadFailpointsForTest();

}  // namespace quant

#endif  // COMMON_FAILPOINT_H_
