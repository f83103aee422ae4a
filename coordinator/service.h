// The gRPC services of the coordinator: thin adapters from each RPC to the
// JobManager call of the same name, through one status converter. Every RPC
// first asks ServerAuth who the caller is and whether it may call.
#ifndef COORDINATOR_SERVICE_H_
#define COORDINATOR_SERVICE_H_

#include <chrono>

#include "common/auth.h"
#include "coordinator/job_manager.h"
#include "proto/quant/v1/quantization_service.grpc.pb.h"
#include "proto/quant/v1/worker_service.grpc.pb.h"

namespace quant {

class QuantizationServiceImpl final : public v1::QuantizationService::Service {
 public:
  QuantizationServiceImpl(JobManager* manager, const ServerAuth* auth)
      : manager_(manager), auth_(auth) {}

  grpc::Status SubmitJob(grpc::ServerContext* context,
                         const v1::SubmitJobRequest* request,
                         v1::Job* response) override;
  grpc::Status GetJob(grpc::ServerContext* context,
                      const v1::GetJobRequest* request,
                      v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context,
                        const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context,
                        const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override;
  grpc::Status CancelJob(grpc::ServerContext* context,
                         const v1::CancelJobRequest* request,
                         v1::Job* response) override;
  grpc::Status ResumeJob(grpc::ServerContext* context,
                         const v1::ResumeJobRequest* request,
                         v1::Job* response) override;
  grpc::Status ListWorkers(grpc::ServerContext* context,
                           const v1::ListWorkersRequest* request,
                           v1::ListWorkersResponse* response) override;

 private:
  JobManager* const manager_;
  const ServerAuth* const auth_;
};

class WorkerGatewayImpl final : public v1::WorkerGateway::Service {
 public:
  WorkerGatewayImpl(JobManager* manager, const ServerAuth* auth)
      : manager_(manager), auth_(auth) {}

  grpc::Status RegisterWorker(grpc::ServerContext* context,
                              const v1::RegisterWorkerRequest* request,
                              v1::RegisterWorkerResponse* response) override;
  grpc::Status LeaseTask(grpc::ServerContext* context,
                         const v1::LeaseTaskRequest* request,
                         v1::LeaseTaskResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context,
                         const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status FetchInputs(grpc::ServerContext* context,
                           const v1::FetchInputsRequest* request,
                           grpc::ServerWriter<v1::Chunk>* writer) override;
  grpc::Status UploadResult(grpc::ServerContext* context,
                            grpc::ServerReader<v1::UploadResultRequest>* reader,
                            v1::UploadResultResponse* response) override;
  grpc::Status CompleteTask(grpc::ServerContext* context,
                            const v1::CompleteTaskRequest* request,
                            v1::CompleteTaskResponse* response) override;
  grpc::Status FailTask(grpc::ServerContext* context,
                        const v1::FailTaskRequest* request,
                        v1::FailTaskResponse* response) override;

 private:
  JobManager* const manager_;
  const ServerAuth* const auth_;
};

}  // namespace quant

#endif  // COORDINATOR_SERVICE_H_
