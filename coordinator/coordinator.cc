#include "coordinator/coordinator.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/grpc_options.h"
#include "common/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

namespace quant {

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    CoordinatorOptions options) {
  std::unique_ptr<Coordinator> c(new Coordinator);
  if (options.jobs.max_chunk_bytes <= 0 ||
      options.jobs.max_chunk_bytes > kMaxMessageBytes / 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_chunk_bytes must be in (0, ", kMaxMessageBytes / 2, "]"));
  }
  if (!options.metrics_address.empty()) {
    ASSIGN_OR_RETURN(c->metrics_endpoint_,
                     MetricsEndpoint::Start(options.metrics_address,
                                            c->metrics_.registry()));
  }
  ASSIGN_OR_RETURN(c->auth_, ServerAuth::Create(options.auth));
  if (c->auth_->insecure() && !options.listen_address.empty() &&
      !IsLoopbackAddress(options.listen_address) && options.jobs.log) {
    // Loud: anyone who can reach the port may submit, cancel, or register as
    // a worker and receive model weights.
    for (int i = 0; i < 3; ++i) {
      options.jobs.log(absl::StrCat(
          "WARNING: INSECURE: serving ", options.listen_address,
          " without TLS or authentication; anyone who can reach it may "
          "submit or cancel jobs and receive model weights as a worker. Give "
          "--tls_cert, --tls_key, --tls_client_ca and --principals, or listen "
          "on 127.0.0.1 only."));
    }
  }
  options.jobs.metrics = &c->metrics_;
  ASSIGN_OR_RETURN(c->manager_, JobManager::Create(options.jobs));
  c->public_service_ = std::make_unique<QuantizationServiceImpl>(
      c->manager_.get(), c->auth_.get());
  c->worker_gateway_ =
      std::make_unique<WorkerGatewayImpl>(c->manager_.get(), c->auth_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!options.listen_address.empty()) {
    builder.AddListeningPort(options.listen_address, c->auth_->credentials(),
                             &c->port_);
  }
  ConfigureServer(builder);
  builder.RegisterService(c->public_service_.get());
  builder.RegisterService(c->worker_gateway_.get());
  c->server_ = builder.BuildAndStart();
  if (c->server_ == nullptr ||
      (!options.listen_address.empty() && c->port_ == 0)) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve on ", options.listen_address));
  }
  c->server_->GetHealthCheckService()->SetServingStatus(true);
  return c;
}

Coordinator::~Coordinator() { Shutdown(); }

int Coordinator::metrics_port() const {
  return metrics_endpoint_ == nullptr ? 0 : metrics_endpoint_->port();
}

std::shared_ptr<grpc::Channel> Coordinator::InProcessChannel() {
  grpc::ChannelArguments args = ServiceChannelArguments();
  return server_->InProcessChannel(args);
}

void Coordinator::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ == nullptr) {  // Create failed before the server started.
    manager_.reset();
    return;
  }
  server_->GetHealthCheckService()->SetServingStatus(false);
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server_->Wait();
  manager_.reset();  // Joins the background threads.
}

}  // namespace quant
