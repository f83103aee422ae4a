// The gRPC settings both ends of every service connection share: message
// size limits that fit the streams' chunks, and matching keepalives.
#ifndef COMMON_GRPC_OPTIONS_H_
#define COMMON_GRPC_OPTIONS_H_

#include "grpcpp/server_builder.h"
#include "grpcpp/support/channel_arguments.h"

namespace quant {

// The largest message either side sends or accepts; chunks are at most
// half of it.
inline constexpr int kMaxMessageBytes = 16 << 20;

// For clients (quantctl, workers).
grpc::ChannelArguments ServiceChannelArguments();
// For the coordinator's server.
void ConfigureServer(grpc::ServerBuilder& builder);

}  // namespace quant

#endif  // COMMON_GRPC_OPTIONS_H_
