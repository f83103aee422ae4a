// A client that misbehaves on purpose, for tests/fault_injection_test.sh
// (plaintext, against a coordinator started with --insecure):
//   fault_client oversized --coordinator=H:P --bytes=N
//     sends one SubmitJob of about N bytes (its channel allows that much);
//     prints the coordinator's answer ("status CODE: message").
//   fault_client watchers --coordinator=H:P --job=ID --count=N --seconds=S
//     holds N WatchJob streams open at once for S seconds; prints how many
//     were answered with the job, and how many ended early and why.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/grpc_options.h"
#include "grpcpp/grpcpp.h"
#include "proto/quant/v1/quantization_service.grpc.pb.h"

ABSL_FLAG(std::string, coordinator, "localhost:50051", "host:port");
ABSL_FLAG(int64_t, bytes, 20 << 20, "oversized: bytes of the message");
ABSL_FLAG(std::string, job, "1", "watchers: the job to watch");
ABSL_FLAG(int, count, 1000, "watchers: streams at once");
ABSL_FLAG(int, seconds, 5, "watchers: how long to hold them");

namespace {

using quant::v1::QuantizationService;

int Oversized() {
  const int64_t bytes = absl::GetFlag(FLAGS_bytes);
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(static_cast<int>(bytes + (1 << 20)));
  auto stub = QuantizationService::NewStub(
      grpc::CreateCustomChannel(absl::GetFlag(FLAGS_coordinator),
                                grpc::InsecureChannelCredentials(), args));
  quant::v1::SubmitJobRequest request;
  request.mutable_spec()->set_name(std::string(bytes, 'x'));
  quant::v1::Job job;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
  const grpc::Status status = stub->SubmitJob(&context, request, &job);
  std::cout << "status " << status.error_code() << ": "
            << status.error_message() << "\n";
  return 0;
}

int Watchers() {
  const int count = absl::GetFlag(FLAGS_count);
  auto stub = QuantizationService::NewStub(grpc::CreateCustomChannel(
      absl::GetFlag(FLAGS_coordinator), grpc::InsecureChannelCredentials(),
      quant::ServiceChannelArguments()));
  struct Watch {
    grpc::ClientContext context;
    quant::v1::JobEvent event;
    std::unique_ptr<grpc::ClientAsyncReader<quant::v1::JobEvent>> reader;
    grpc::Status status;
    bool answered = false;
    bool ended = false;
  };
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<Watch>> watches;
  quant::v1::WatchJobRequest request;
  request.set_job_id(absl::GetFlag(FLAGS_job));
  // Tags: index * 4 + {0 started, 1 read, 2 finished}.
  for (int i = 0; i < count; ++i) {
    auto watch = std::make_unique<Watch>();
    watch->reader = stub->PrepareAsyncWatchJob(&watch->context, request, &cq);
    watch->reader->StartCall(reinterpret_cast<void*>(intptr_t{i} * 4));
    watches.push_back(std::move(watch));
  }
  const auto until = std::chrono::system_clock::now() +
                     std::chrono::seconds(absl::GetFlag(FLAGS_seconds));
  int answered = 0, ended = 0, outstanding = count;
  std::map<std::string, int> reasons;
  bool cancelled = false;
  while (outstanding > 0) {
    void* tag;
    bool ok;
    const auto deadline =
        cancelled ? std::chrono::system_clock::now() + std::chrono::seconds(30)
                  : until;
    const grpc::CompletionQueue::NextStatus next =
        cq.AsyncNext(&tag, &ok, deadline);
    if (next == grpc::CompletionQueue::SHUTDOWN) break;
    if (next == grpc::CompletionQueue::TIMEOUT) {
      if (cancelled) break;
      // Time is up: every stream is cancelled, then drained.
      for (auto& watch : watches) watch->context.TryCancel();
      cancelled = true;
      continue;
    }
    const intptr_t value = reinterpret_cast<intptr_t>(tag);
    Watch& watch = *watches[value / 4];
    switch (value % 4) {
      case 0:
      case 1:
        if (value % 4 == 1 && ok && !watch.answered) {
          watch.answered = true;
          ++answered;
        }
        if (ok) {
          watch.reader->Read(&watch.event,
                             reinterpret_cast<void*>((value / 4) * 4 + 1));
        } else {
          watch.reader->Finish(&watch.status,
                               reinterpret_cast<void*>((value / 4) * 4 + 2));
        }
        break;
      case 2:
        --outstanding;
        if (!cancelled) {
          ++ended;
          ++reasons[std::to_string(watch.status.error_code()) + " " +
                    watch.status.error_message()];
        }
        break;
    }
  }
  std::cout << "watchers " << count << " answered " << answered
            << " ended_early " << ended << "\n";
  for (const auto& [reason, n] : reasons) {
    std::cout << "  " << n << " ended: " << reason << "\n";
  }
  // Streams still in flight are the process's to drop.
  std::cout.flush();
  std::_Exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const std::string command = args.size() > 1 ? args[1] : "";
  if (command == "oversized") return Oversized();
  if (command == "watchers") return Watchers();
  std::cerr << "usage: fault_client oversized|watchers [flags]\n";
  return 2;
}
