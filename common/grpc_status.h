// absl::Status <-> grpc::Status, the one converter every RPC handler and
// client uses (the codes are the same numbers in both).
#ifndef COMMON_GRPC_STATUS_H_
#define COMMON_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace quant {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace quant

#endif  // COMMON_GRPC_STATUS_H_
