#include "common/grpc_status.h"

#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(GrpcStatusTest, CodesAndMessagesRoundTrip) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  const absl::Status bad = absl::InvalidArgumentError("recipe.bits: 9");
  const grpc::Status wire = ToGrpcStatus(bad);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(wire.error_message(), "recipe.bits: 9");
  EXPECT_EQ(FromGrpcStatus(wire), bad);
  EXPECT_EQ(FromGrpcStatus(
                grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "stale"))
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ToGrpcStatus(absl::UnavailableError("x")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace quant
