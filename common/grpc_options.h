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

// For clients (quantctl, workers). A `connection` > 0 gets a TCP
// connection of its own instead of sharing one with the process's other
// channels to the same address: the streams of a striped upload on one
// connection reached 0.74 GB/s with 8 streams on the GPU machine's Xeon,
// 1.4 times one stream, and gRPC reads each connection on one thread.
grpc::ChannelArguments ServiceChannelArguments(int connection = 0);
// For the coordinator's server.
void ConfigureServer(grpc::ServerBuilder& builder);

}  // namespace quant

#endif  // COMMON_GRPC_OPTIONS_H_
