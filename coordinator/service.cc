#include "coordinator/service.h"

#include <utility>

#include "common/grpc_status.h"

namespace quant {
namespace {

// Stores a StatusOr's value in *response, or converts its error.
template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = std::move(*result);
  return grpc::Status::OK;
}

}  // namespace

grpc::Status QuantizationServiceImpl::SubmitJob(
    grpc::ServerContext*, const v1::SubmitJobRequest* request,
    v1::Job* response) {
  return Reply(manager_->SubmitJob(request->spec()), response);
}

grpc::Status QuantizationServiceImpl::GetJob(grpc::ServerContext*,
                                             const v1::GetJobRequest* request,
                                             v1::Job* response) {
  return Reply(manager_->GetJob(request->job_id(), request->include_tasks()),
               response);
}

grpc::Status QuantizationServiceImpl::ListJobs(
    grpc::ServerContext*, const v1::ListJobsRequest* request,
    v1::ListJobsResponse* response) {
  return Reply(manager_->ListJobs(request->state()), response);
}

grpc::Status QuantizationServiceImpl::WatchJob(
    grpc::ServerContext* context, const v1::WatchJobRequest* request,
    grpc::ServerWriter<v1::JobEvent>* writer) {
  return ToGrpcStatus(manager_->WatchJob(
      request->job_id(),
      [writer](const v1::JobEvent& event) { return writer->Write(event); },
      [context] { return context->IsCancelled(); }));
}

grpc::Status QuantizationServiceImpl::CancelJob(
    grpc::ServerContext*, const v1::CancelJobRequest* request,
    v1::Job* response) {
  return Reply(manager_->CancelJob(request->job_id()), response);
}

grpc::Status QuantizationServiceImpl::ResumeJob(
    grpc::ServerContext*, const v1::ResumeJobRequest* request,
    v1::Job* response) {
  return Reply(manager_->ResumeJob(request->job_id()), response);
}

grpc::Status QuantizationServiceImpl::ListWorkers(
    grpc::ServerContext*, const v1::ListWorkersRequest*,
    v1::ListWorkersResponse* response) {
  *response = manager_->ListWorkers();
  return grpc::Status::OK;
}

grpc::Status WorkerGatewayImpl::RegisterWorker(
    grpc::ServerContext*, const v1::RegisterWorkerRequest* request,
    v1::RegisterWorkerResponse* response) {
  return Reply(manager_->RegisterWorker(*request), response);
}

grpc::Status WorkerGatewayImpl::LeaseTask(grpc::ServerContext* context,
                                          const v1::LeaseTaskRequest* request,
                                          v1::LeaseTaskResponse* response) {
  return Reply(manager_->LeaseTask(
                   *request, [context] { return context->IsCancelled(); }),
               response);
}

grpc::Status WorkerGatewayImpl::Heartbeat(grpc::ServerContext*,
                                          const v1::HeartbeatRequest* request,
                                          v1::HeartbeatResponse* response) {
  return Reply(manager_->Heartbeat(*request), response);
}

grpc::Status WorkerGatewayImpl::FetchInputs(
    grpc::ServerContext*, const v1::FetchInputsRequest* request,
    grpc::ServerWriter<v1::Chunk>* writer) {
  return ToGrpcStatus(manager_->FetchInputs(
      *request,
      [writer](const v1::Chunk& chunk) { return writer->Write(chunk); }));
}

grpc::Status WorkerGatewayImpl::UploadResult(
    grpc::ServerContext*, grpc::ServerReader<v1::UploadResultRequest>* reader,
    v1::UploadResultResponse* response) {
  return Reply(manager_->UploadResult([reader](v1::UploadResultRequest* m) {
    return reader->Read(m);
  }),
               response);
}

grpc::Status WorkerGatewayImpl::CompleteTask(
    grpc::ServerContext*, const v1::CompleteTaskRequest* request,
    v1::CompleteTaskResponse*) {
  return ToGrpcStatus(manager_->CompleteTask(*request));
}

grpc::Status WorkerGatewayImpl::FailTask(grpc::ServerContext*,
                                         const v1::FailTaskRequest* request,
                                         v1::FailTaskResponse*) {
  return ToGrpcStatus(manager_->FailTask(*request));
}

}  // namespace quant
