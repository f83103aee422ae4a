// The coordinator process as a library: the job manager behind a gRPC
// server (the public QuantizationService and the WorkerGateway, with
// grpc.health.v1 and server reflection), and a Prometheus /metrics
// endpoint. coordinator/main.cc and `quantctl run --local` both start one
// with Create.
#ifndef COORDINATOR_COORDINATOR_H_
#define COORDINATOR_COORDINATOR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/auth.h"
#include "common/grpc_options.h"
#include "common/metrics.h"
#include "coordinator/job_manager.h"
#include "coordinator/service.h"
#include "grpcpp/grpcpp.h"

namespace quant {

struct CoordinatorOptions {
  // "host:port" to serve on (port 0: any free port); "" serves only the
  // in-process channel.
  std::string listen_address = "0.0.0.0:50051";
  // "host:port" of the /metrics endpoint; "" for none.
  std::string metrics_address;
  JobManagerOptions jobs;  // Its metrics are the coordinator's.
  // Who may call (common/auth.h). Insecure unless set: in-process servers
  // (tests, run --local) need no credentials; quant-coordinator makes its
  // operator choose.
  ServerAuthOptions auth = InsecureServerAuth();
};

class Coordinator {
 public:
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(
      CoordinatorOptions options);
  ~Coordinator();

  int port() const { return port_; }  // 0 without a TCP port.
  int metrics_port() const;           // 0 without an endpoint.
  // A channel to this server that skips the network (quantctl run --local).
  std::shared_ptr<grpc::Channel> InProcessChannel();
  JobManager& jobs() { return *manager_; }
  ServiceMetrics& metrics() { return metrics_; }

  // Health goes NOT_SERVING, then the server stops taking calls and
  // finishes the ones in flight (streams are cut after a grace period).
  void Shutdown();

 private:
  Coordinator() = default;

  ServiceMetrics metrics_;
  std::unique_ptr<ServerAuth> auth_;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint_;
  std::unique_ptr<JobManager> manager_;
  std::unique_ptr<QuantizationServiceImpl> public_service_;
  std::unique_ptr<WorkerGatewayImpl> worker_gateway_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace quant

#endif  // COORDINATOR_COORDINATOR_H_
