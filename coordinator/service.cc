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

#define QS_AUTHORIZE(caller, audience, method)      \
  const absl::StatusOr<Principal> caller =          \
      auth_->Authorize(*context, audience, method); \
  if (!caller.ok()) return ToGrpcStatus(caller.status())

grpc::Status QuantizationServiceImpl::SubmitJob(
    grpc::ServerContext* context, const v1::SubmitJobRequest* request,
    v1::Job* response) {
  QS_AUTHORIZE(caller, Audience::kClients, "SubmitJob");
  return Reply(manager_->SubmitJob(request->spec(), caller->name), response);
}

grpc::Status QuantizationServiceImpl::GetJob(grpc::ServerContext* context,
                                             const v1::GetJobRequest* request,
                                             v1::Job* response) {
  QS_AUTHORIZE(caller, Audience::kClients, "GetJob");
  return Reply(manager_->GetJob(request->job_id(), request->include_tasks()),
               response);
}

grpc::Status QuantizationServiceImpl::ListJobs(
    grpc::ServerContext* context, const v1::ListJobsRequest* request,
    v1::ListJobsResponse* response) {
  QS_AUTHORIZE(caller, Audience::kClients, "ListJobs");
  return Reply(manager_->ListJobs(request->state()), response);
}

grpc::Status QuantizationServiceImpl::WatchJob(
    grpc::ServerContext* context, const v1::WatchJobRequest* request,
    grpc::ServerWriter<v1::JobEvent>* writer) {
  QS_AUTHORIZE(caller, Audience::kClients, "WatchJob");
  return ToGrpcStatus(manager_->WatchJob(
      request->job_id(),
      [writer](const v1::JobEvent& event) { return writer->Write(event); },
      [context] { return context->IsCancelled(); }));
}

grpc::Status QuantizationServiceImpl::CancelJob(
    grpc::ServerContext* context, const v1::CancelJobRequest* request,
    v1::Job* response) {
  QS_AUTHORIZE(caller, Audience::kClients, "CancelJob");
  return Reply(manager_->CancelJob(request->job_id(), *caller), response);
}

grpc::Status QuantizationServiceImpl::ResumeJob(
    grpc::ServerContext* context, const v1::ResumeJobRequest* request,
    v1::Job* response) {
  QS_AUTHORIZE(caller, Audience::kClients, "ResumeJob");
  return Reply(manager_->ResumeJob(request->job_id(), *caller), response);
}

grpc::Status QuantizationServiceImpl::ListWorkers(
    grpc::ServerContext* context, const v1::ListWorkersRequest*,
    v1::ListWorkersResponse* response) {
  QS_AUTHORIZE(caller, Audience::kClients, "ListWorkers");
  *response = manager_->ListWorkers();
  return grpc::Status::OK;
}

grpc::Status WorkerGatewayImpl::RegisterWorker(
    grpc::ServerContext* context, const v1::RegisterWorkerRequest* request,
    v1::RegisterWorkerResponse* response) {
  QS_AUTHORIZE(caller, Audience::kWorkers, "RegisterWorker");
  return Reply(manager_->RegisterWorker(*request), response);
}

grpc::Status WorkerGatewayImpl::LeaseTask(grpc::ServerContext* context,
                                          const v1::LeaseTaskRequest* request,
                                          v1::LeaseTaskResponse* response) {
  QS_AUTHORIZE(caller, Audience::kWorkers, "LeaseTask");
  return Reply(manager_->LeaseTask(
                   *request, [context] { return context->IsCancelled(); }),
               response);
}

grpc::Status WorkerGatewayImpl::Heartbeat(grpc::ServerContext* context,
                                          const v1::HeartbeatRequest* request,
                                          v1::HeartbeatResponse* response) {
  QS_AUTHORIZE(caller, Audience::kWorkers, "Heartbeat");
  return Reply(manager_->Heartbeat(*request), response);
}

grpc::Status WorkerGatewayImpl::FetchInputs(
    grpc::ServerContext* context, const v1::FetchInputsRequest* request,
    grpc::ServerWriter<v1::Chunk>* writer) {
  QS_AUTHORIZE(caller, Audience::kWorkers, "FetchInputs");
  return ToGrpcStatus(manager_->FetchInputs(
      *request,
      [writer](const v1::Chunk& chunk) { return writer->Write(chunk); }));
}

grpc::Status WorkerGatewayImpl::UploadResult(
    grpc::ServerContext* context,
    grpc::ServerReader<v1::UploadResultRequest>* reader,
    v1::UploadResultResponse* response) {
  QS_AUTHORIZE(caller, Audience::kWorkers, "UploadResult");
  return Reply(manager_->UploadResult([reader](v1::UploadResultRequest* m) {
    return reader->Read(m);
  }),
               response);
}

grpc::Status WorkerGatewayImpl::CompleteTask(
    grpc::ServerContext* context, const v1::CompleteTaskRequest* request,
    v1::CompleteTaskResponse*) {
  QS_AUTHORIZE(caller, Audience::kWorkers, "CompleteTask");
  return ToGrpcStatus(manager_->CompleteTask(*request));
}

grpc::Status WorkerGatewayImpl::FailTask(grpc::ServerContext* context,
                                         const v1::FailTaskRequest* request,
                                         v1::FailTaskResponse*) {
  QS_AUTHORIZE(caller, Audience::kWorkers, "FailTask");
  return ToGrpcStatus(manager_->FailTask(*request));
}

#undef QS_AUTHORIZE

}  // namespace quant
