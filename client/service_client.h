// quantctl's service commands: submit, watch, status, list, cancel,
// resume and workers against a coordinator, and `run --local`, the
// embedded default: a coordinator with in-process workers and a temporary
// store in this process, running one job through the same code path as a
// cluster.
#ifndef CLIENT_SERVICE_CLIENT_H_
#define CLIENT_SERVICE_CLIENT_H_

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "proto/quant/v1/quantization_service.grpc.pb.h"

namespace quant {

struct ServiceClientOptions {
  std::string coordinator = "localhost:50051";  // host:port
  int64_t rpc_timeout_ms = 30'000;              // Unary calls.
  bool progress_on_tty = false;  // Redraw the progress bars in place.
};

class ServiceClient {
 public:
  // A client of the coordinator at options.coordinator, or of `channel`.
  explicit ServiceClient(const ServiceClientOptions& options,
                         std::shared_ptr<grpc::Channel> channel = nullptr);

  absl::StatusOr<v1::Job> Submit(const v1::JobSpec& spec);
  absl::StatusOr<v1::Job> Get(const std::string& job_id, bool include_tasks);
  // Draws the job's progress (one bar per stage, with ETA) until it ends;
  // OK when it succeeded, else Aborted naming the state and the error.
  absl::Status Watch(const std::string& job_id, std::ostream& out);
  absl::Status Status(const std::string& job_id, std::ostream& out);
  absl::Status List(std::ostream& out);
  absl::Status Cancel(const std::string& job_id, std::ostream& out);
  absl::Status Resume(const std::string& job_id, std::ostream& out);
  absl::Status Workers(std::ostream& out);

 private:
  std::unique_ptr<grpc::ClientContext> Context() const;

  ServiceClientOptions options_;
  std::unique_ptr<v1::QuantizationService::Stub> stub_;
};

// The progress of `job`: a header line, then one bar per stage.
std::string RenderProgress(const v1::Job& job);
const char* JobStateText(v1::JobState state);

struct LocalRunOptions {
  int workers = 2;  // In-process workers ...
  // ... on this many cores (0: all): each gets them all in a sequential
  // calibrated job (one block runs at a time), else they share them.
  int threads = 0;
  // "cuda": one worker per GPU of `devices` instead (`workers` unused), or
  // per `devices_per_task` of them (GroupDevices).
  std::string backend = "cpu";
  std::vector<int> devices = {0};
  int devices_per_task = 1;
  std::string state_dir;  // The job store; "" for a temporary one.
  bool progress_on_tty = false;
};

// Runs `spec` through a coordinator and `workers` workers in this process
// (no network: an in-process channel), prints its progress to `err` and the
// report table to `out`.
absl::Status RunLocal(const v1::JobSpec& spec, const LocalRunOptions& options,
                      std::ostream& out, std::ostream& err);

}  // namespace quant

#endif  // CLIENT_SERVICE_CLIENT_H_
