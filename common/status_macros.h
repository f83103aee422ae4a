// Status propagation helpers. The Debian Abseil (20220623) predates
// absl/status/status_macros.h, so the project defines its own, once.
#ifndef COMMON_STATUS_MACROS_H_
#define COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QS_STATUS_CONCAT_INNER_(a, b) a##b
#define QS_STATUS_CONCAT_(a, b) QS_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                 \
  do {                                        \
    const ::absl::Status qs_status_ = (expr); \
    if (!qs_status_.ok()) return qs_status_;  \
  } while (0)

// `lhs` = value of the StatusOr `rexpr`, or returns its status.
#define ASSIGN_OR_RETURN(lhs, rexpr)                                        \
  QS_ASSIGN_OR_RETURN_IMPL_(QS_STATUS_CONCAT_(qs_statusor_, __LINE__), lhs, \
                            rexpr)

#define QS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)    \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // COMMON_STATUS_MACROS_H_
