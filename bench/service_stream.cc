// Streaming throughput of the worker protocol over loopback gRPC: a real
// Coordinator (coordinator/coordinator.h) on 127.0.0.1, driven through the
// WorkerGateway stub the way a worker drives it. Per chunk size:
//  - a data-free RTN job (GPTQ format) is submitted on the model, a worker
//    registers and leases block 0;
//  - coordinator -> worker: FetchInputs of all the task's inputs, every
//    chunk checked with ChunkVerifier (CRC-32C per chunk, content digest
//    per tensor) as a worker checks it, the bytes not stored (the first,
//    untimed fetch writes them to a local safetensors file as a worker does);
//  - the block task is run once (worker/task_runner.h RunTask) on that file
//    and its real output "result" is uploaded: worker -> coordinator is
//    UploadResult of that file in chunks (SendTensor, as the worker sends
//    it), repeated for the same lease (each call replaces the previous
//    upload; the coordinator checks every chunk and fsyncs the file), in
//    one stream and as several side by side (a striped upload, proto
//    UploadStripe, as the worker sends 256 MiB or more, each stream after
//    the first on a TCP connection of its own: each stream's
//    chunks checked and written by its own thread, each digest piece
//    hashed by the stream that completes it), then CompleteTask commits
//    the last one.
// A baseline pass over the same bytes in this process (memcpy, CRC-32C,
// SHA-256, the content digest on 1 thread and on every core, and CRC-32C +
// content digest chunk by chunk, which is what each end of one stream
// computes per byte) gives the checksum-bound ceiling.
//
// Prints markdown tables; MB = 1e6 bytes; each time is the median of --reps
// timed runs after one untimed warm-up.
//
// Usage: service_stream [--model=DIR] [--hidden=2048] [--layers=2]
//   [--bits=8] [--reps=5] [--chunks=1,4] (MiB) [--streams=1,4]
//   [--unit_mib=16] [--tmp=DIR]
// Without --model a random-weight Llama (convert/tiny_llama.h) with the
// given hidden size (intermediate 2.75x) is written to the temp directory.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/checksum.h"
#include "common/chunk_stream.h"
#include "common/file.h"
#include "common/grpc_options.h"
#include "common/status_macros.h"
#include "convert/tiny_llama.h"
#include "coordinator/coordinator.h"
#include "format/safetensors.h"
#include "grpcpp/grpcpp.h"
#include "proto/quant/v1/quantization_service.grpc.pb.h"
#include "proto/quant/v1/worker_service.grpc.pb.h"
#include "proto/recipe.h"
#include "quant/quantize_model.h"
#include "worker/task_runner.h"

namespace quant {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model;  // "": a synthetic model.
  int64_t hidden = 2048;
  int64_t layers = 2;
  int bits = 8;
  int reps = 5;
  std::vector<int> chunk_mib = {1, 4};
  std::vector<int> streams = {1, 4};
  uint64_t unit_mib = 16;
  std::string tmp;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median of `reps` timed runs of `fn` after one untimed warm-up; seconds.
// `fn` returns a status; the first error ends the benchmark.
template <typename Fn>
absl::StatusOr<double> MedianSeconds(int reps, Fn fn) {
  std::vector<double> times;
  for (int i = 0; i <= reps; ++i) {
    const Clock::time_point start = Clock::now();
    absl::Status status = fn();
    const double seconds =
        std::chrono::duration<double>(Clock::now() - start).count();
    if (!status.ok()) return status;
    if (i > 0) times.push_back(seconds);
  }
  return Median(times);
}

absl::Status FromGrpc(const grpc::Status& status, absl::string_view what) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

std::unique_ptr<grpc::ClientContext> Context(int seconds) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(seconds));
  return context;
}

// One FetchInputs stream of every input, each chunk checked as a worker
// checks it. With `writer`, the bytes are also written there (as the
// worker's input file). Returns the bytes received.
absl::StatusOr<uint64_t> Fetch(v1::WorkerGateway::Stub* stub,
                               const v1::TaskRef& ref, const v1::TaskSpec& spec,
                               SafetensorsWriter* writer) {
  v1::FetchInputsRequest request;
  *request.mutable_task() = ref;
  std::unique_ptr<grpc::ClientContext> context = Context(600);
  std::unique_ptr<grpc::ClientReader<v1::Chunk>> reader =
      stub->FetchInputs(context.get(), request);
  v1::Chunk chunk;
  int index = 0;
  std::unique_ptr<ChunkVerifier> verifier;
  uint64_t received = 0;
  absl::Status problem;
  while (reader->Read(&chunk)) {
    if (!problem.ok()) continue;
    if (index >= spec.inputs_size()) {
      problem = absl::DataLossError("a chunk after the last input");
      continue;
    }
    const v1::TensorInfo& want = spec.inputs(index);
    if (verifier == nullptr) {
      verifier =
          std::make_unique<ChunkVerifier>(want.name(), want.size_bytes());
    }
    const uint64_t before = verifier->offset();
    problem = verifier->Accept(chunk);
    const uint64_t taken = verifier->offset() - before;
    received += taken;
    if (problem.ok() && writer != nullptr && taken > 0) {
      problem =
          writer->WriteTensorData(want.name(), chunk.data().data(), taken);
    }
    if (problem.ok() && verifier->done()) {
      ++index;
      verifier.reset();
    }
  }
  RETURN_IF_ERROR(FromGrpc(reader->Finish(), "FetchInputs"));
  RETURN_IF_ERROR(problem);
  if (index != spec.inputs_size()) {
    return absl::DataLossError("the input stream ended early");
  }
  return received;
}

// One UploadResult stream of `outputs` (name, file), sent as the worker
// sends them. Returns the bytes the coordinator acknowledged.
absl::StatusOr<uint64_t> Upload(
    v1::WorkerGateway::Stub* stub, const v1::TaskRef& ref,
    const std::vector<std::pair<std::string, std::string>>& outputs,
    size_t chunk_bytes) {
  std::unique_ptr<grpc::ClientContext> context = Context(600);
  v1::UploadResultResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::UploadResultRequest>> writer =
      stub->UploadResult(context.get(), &response);
  v1::UploadResultRequest header;
  *header.mutable_task() = ref;
  bool open = writer->Write(header);
  v1::UploadResultRequest request;
  absl::Status local;
  for (size_t i = 0; open && local.ok() && i < outputs.size(); ++i) {
    ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file,
                     MappedFile::Open(outputs[i].second));
    v1::TensorInfo info;
    info.set_name(outputs[i].first);
    info.set_dtype("U8");
    info.add_shape(static_cast<int64_t>(file->size()));
    info.set_size_bytes(file->size());
    static const uint8_t kNoBytes = 0;
    const uint8_t* data = file->size() > 0 ? file->data() : &kNoBytes;
    absl::Status status =
        SendTensor(info, data, 0, chunk_bytes, [&](const v1::Chunk& chunk) {
          *request.mutable_chunk() = chunk;  // As the worker does.
          open = writer->Write(request);
          return open;
        });
    if (!status.ok() && open) local = status;
  }
  writer->WritesDone();
  const grpc::Status finished = writer->Finish();
  RETURN_IF_ERROR(local);
  RETURN_IF_ERROR(FromGrpc(finished, "UploadResult"));
  return response.bytes_received();
}

// The same upload as `streams` UploadResult streams side by side (proto
// UploadStripe), in units of `unit_bytes`, as the worker sends a large one:
// the manifest's digests are known (the worker hashes while writing).
absl::StatusOr<uint64_t> UploadStriped(
    const std::vector<v1::WorkerGateway::Stub*>& stubs, const v1::TaskRef& ref,
    const std::vector<std::pair<std::string, std::string>>& outputs,
    size_t chunk_bytes, int streams, uint64_t unit_bytes,
    const std::vector<std::string>& digest, const std::string& upload_id) {
  std::vector<std::unique_ptr<MappedFile>> files;
  std::vector<StripedTensor> tensors;
  v1::UploadStripe stripe;
  stripe.set_upload_id(upload_id);
  stripe.set_count(streams);
  stripe.set_unit_bytes(unit_bytes);
  for (size_t i = 0; i < outputs.size(); ++i) {
    ASSIGN_OR_RETURN(files.emplace_back(), MappedFile::Open(outputs[i].second));
    tensors.push_back(
        {outputs[i].first, files.back()->data(), files.back()->size()});
    v1::DeferredOutput* entry = stripe.add_outputs();
    entry->set_name(outputs[i].first);
    entry->set_digest(digest[i]);
    entry->set_size_bytes(files.back()->size());
  }
  std::vector<absl::Status> statuses(streams);
  std::vector<uint64_t> acked(streams, 0);
  const auto send = [&](int index) {
    std::unique_ptr<grpc::ClientContext> context = Context(600);
    v1::UploadResultResponse response;
    std::unique_ptr<grpc::ClientWriter<v1::UploadResultRequest>> writer =
        stubs[index]->UploadResult(context.get(), &response);
    v1::UploadResultRequest request;
    *request.mutable_task() = ref;
    *request.mutable_stripe() = stripe;
    request.mutable_stripe()->set_index(index);
    bool open = writer->Write(request);
    request.Clear();
    if (open) {
      (void)SendStripe(tensors, index, streams, unit_bytes, chunk_bytes,
                       [&](const v1::Chunk& chunk) {
                         *request.mutable_chunk() = chunk;  // As the worker.
                         open = writer->Write(request);
                         return open;
                       });
    }
    if (open) writer->WritesDone();
    statuses[index] = FromGrpc(writer->Finish(), "UploadResult");
    acked[index] = response.bytes_received();
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < streams; ++i) threads.emplace_back(send, i);
  for (std::thread& thread : threads) thread.join();
  uint64_t total = 0;
  for (int i = 0; i < streams; ++i) {
    RETURN_IF_ERROR(statuses[i]);
    total += acked[i];
  }
  return total;
}

struct Row {
  std::string direction;
  int streams = 1;
  int chunk_mib = 0;
  uint64_t bytes = 0;
  double seconds = 0;
};

struct Baseline {
  std::string pass;
  uint64_t bytes = 0;
  double seconds = 0;
};

double MBps(uint64_t bytes, double seconds) { return bytes / 1e6 / seconds; }

// memcpy, CRC-32C, SHA-256, the content digest on one thread and on every
// core, and CRC-32C + content digest (in 4 MiB chunks) over `data`.
absl::StatusOr<std::vector<Baseline>> Baselines(const std::string& data,
                                                const std::string& label,
                                                int reps) {
  std::vector<Baseline> rows;
  const size_t chunk = 4 << 20;
  std::string copy(data.size(), '\1');  // Touched: no page faults timed.
  volatile uint32_t sink = 0;
  ASSIGN_OR_RETURN(double s, MedianSeconds(reps, [&] {
                     std::memcpy(copy.data(), data.data(), data.size());
                     sink = sink + static_cast<uint8_t>(copy[copy.size() / 2]);
                     return absl::OkStatus();
                   }));
  rows.push_back({label + ": memcpy", data.size(), s});
  ASSIGN_OR_RETURN(s, MedianSeconds(reps, [&] {
                     uint32_t crc = 0;
                     for (size_t at = 0; at < data.size(); at += chunk) {
                       crc ^= Crc32c(data.data() + at,
                                     std::min(chunk, data.size() - at));
                     }
                     sink = sink + crc;
                     return absl::OkStatus();
                   }));
  rows.push_back({label + ": CRC-32C", data.size(), s});
  ASSIGN_OR_RETURN(s, MedianSeconds(reps, [&] {
                     sink = sink + static_cast<uint8_t>(Sha256Of(data)[0]);
                     return absl::OkStatus();
                   }));
  rows.push_back({label + ": SHA-256", data.size(), s});
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  for (const int threads : {1, cores}) {
    ASSIGN_OR_RETURN(
        s, MedianSeconds(reps, [&] {
          sink = sink + static_cast<uint8_t>(ContentDigestOf(data, threads)[0]);
          return absl::OkStatus();
        }));
    rows.push_back({absl::StrCat(label, ": content digest, ", threads,
                                 threads == 1 ? " thread" : " threads"),
                    data.size(), s});
  }
  // What each end of one stream computes per byte, chunk by chunk.
  ASSIGN_OR_RETURN(s, MedianSeconds(reps, [&] {
                     ContentDigest digest;
                     uint32_t crc = 0;
                     for (size_t at = 0; at < data.size(); at += chunk) {
                       const size_t n = std::min(chunk, data.size() - at);
                       crc ^= Crc32c(data.data() + at, n);
                       digest.Update(data.data() + at, n);
                     }
                     sink =
                         sink + crc + static_cast<uint8_t>(digest.Finish()[0]);
                     return absl::OkStatus();
                   }));
  rows.push_back({label + ": CRC-32C + content digest", data.size(), s});
  return rows;
}

absl::StatusOr<std::string> ReadAll(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  return std::string(reinterpret_cast<const char*>(file->data()), file->size());
}

absl::Status Run(const Options& options) {
  const std::string tmp = options.tmp.empty()
                              ? absl::StrCat(fs::temp_directory_path().string(),
                                             "/service_stream.", ::getpid())
                              : options.tmp;
  std::error_code error;
  fs::remove_all(tmp, error);
  fs::create_directories(tmp + "/out");
  std::string model = options.model;
  if (model.empty()) {
    model = tmp + "/model";
    TinyLlamaOptions tiny;
    tiny.hidden_size = options.hidden;
    tiny.intermediate_size = (options.hidden * 11 / 4 + 255) / 256 * 256;
    tiny.num_layers = options.layers;
    tiny.num_shards = 1;
    RETURN_IF_ERROR(WriteTinyLlama(model, tiny));
  }
  model = fs::absolute(model).lexically_normal().string();
  const std::string model_root = fs::path(model).parent_path().string();

  QuantizeModelOptions engine;
  engine.method = QuantMethod::kRtn;
  engine.output_format = OutputFormat::kGptq;
  engine.weights = {options.bits, 128, false};
  engine.calibration.samples = 0;

  std::vector<Row> rows;
  std::vector<std::pair<std::string, std::string>> outputs;  // Run once.
  std::string inputs_path;
  uint64_t input_bytes = 0;
  std::string task_text;
  for (size_t c = 0; c < options.chunk_mib.size(); ++c) {
    const int mib = options.chunk_mib[c];
    const size_t chunk_bytes = static_cast<size_t>(mib) << 20;
    CoordinatorOptions coordinator_options;
    coordinator_options.listen_address = "127.0.0.1:0";
    JobManagerOptions& jobs = coordinator_options.jobs;
    jobs.state_dir = absl::StrCat(tmp, "/state-", mib);
    jobs.model_roots = {model_root, tmp};
    jobs.output_roots = {tmp + "/out"};
    jobs.max_chunk_bytes = static_cast<int64_t>(chunk_bytes);
    jobs.scheduler.lease_ms = 3'600'000;  // No heartbeats here.
    ASSIGN_OR_RETURN(std::unique_ptr<Coordinator> coordinator,
                     Coordinator::Create(coordinator_options));
    const std::string target = absl::StrCat("127.0.0.1:", coordinator->port());
    std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
        target, grpc::InsecureChannelCredentials(), ServiceChannelArguments());
    auto jobs_stub = v1::QuantizationService::NewStub(channel);
    auto gateway = v1::WorkerGateway::NewStub(channel);
    // A striped upload's streams after the first go on connections of
    // their own, as the worker's do.
    std::vector<std::unique_ptr<v1::WorkerGateway::Stub>> stream_gateways;
    std::vector<v1::WorkerGateway::Stub*> stream_stubs = {gateway.get()};
    const int most_streams =
        *std::max_element(options.streams.begin(), options.streams.end());
    for (int i = 1; i < most_streams; ++i) {
      stream_gateways.push_back(v1::WorkerGateway::NewStub(
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                    ServiceChannelArguments(i))));
      stream_stubs.push_back(stream_gateways.back().get());
    }

    v1::SubmitJobRequest submit;
    submit.mutable_spec()->set_model_dir(model);
    submit.mutable_spec()->set_output(absl::StrCat(tmp, "/out/gptq-", mib));
    *submit.mutable_spec()->mutable_recipe() = RecipeFromOptions(engine);
    v1::Job job;
    RETURN_IF_ERROR(FromGrpc(
        jobs_stub->SubmitJob(Context(60).get(), submit, &job), "SubmitJob"));

    v1::RegisterWorkerRequest register_request;
    register_request.set_name("bench");
    register_request.mutable_capabilities()->set_backend(v1::BACKEND_CPU);
    register_request.mutable_capabilities()->set_threads(
        static_cast<int32_t>(std::thread::hardware_concurrency()));
    register_request.mutable_capabilities()->set_memory_bytes(int64_t{16}
                                                              << 30);
    v1::RegisterWorkerResponse registration;
    RETURN_IF_ERROR(
        FromGrpc(gateway->RegisterWorker(Context(60).get(), register_request,
                                         &registration),
                 "RegisterWorker"));
    v1::LeaseTaskRequest lease_request;
    lease_request.set_worker_id(registration.worker_id());
    lease_request.set_wait_ms(10'000);
    v1::LeaseTaskResponse lease;
    RETURN_IF_ERROR(
        FromGrpc(gateway->LeaseTask(Context(60).get(), lease_request, &lease),
                 "LeaseTask"));
    if (!lease.has_task() || lease.spec().kind() != v1::TASK_KIND_BLOCK) {
      return absl::InternalError("no block task was leased");
    }
    const v1::TaskRef ref = lease.task();
    const v1::TaskSpec& spec = lease.spec();
    uint64_t total = 0;
    for (const v1::TensorInfo& info : spec.inputs()) total += info.size_bytes();
    if (c == 0) {
      input_bytes = total;
      task_text = absl::StrFormat(
          "block %d: %d input tensors, %.1f MB; outputs:", spec.layer(),
          spec.inputs_size(), total / 1e6);
      for (const std::string& out : spec.outputs()) {
        absl::StrAppend(&task_text, " ", out);
      }
    }

    // coordinator -> worker. The warm-up fetch writes the worker's input
    // file (first chunk size only).
    bool warm = false;
    auto fetch_once = [&]() -> absl::Status {
      std::unique_ptr<SafetensorsWriter> writer;
      if (!warm && c == 0) {
        inputs_path = tmp + "/inputs.safetensors";
        ASSIGN_OR_RETURN(writer, SafetensorsWriter::Create(inputs_path));
        for (const v1::TensorInfo& info : spec.inputs()) {
          ASSIGN_OR_RETURN(const SafetensorsDType dtype,
                           ParseSafetensorsDType(info.dtype()));
          RETURN_IF_ERROR(writer->AddTensor(
              info.name(), dtype,
              std::vector<int64_t>(info.shape().begin(), info.shape().end())));
        }
      }
      warm = true;
      ASSIGN_OR_RETURN(const uint64_t got,
                       Fetch(gateway.get(), ref, spec, writer.get()));
      if (got != total) return absl::DataLossError("short fetch");
      if (writer != nullptr) RETURN_IF_ERROR(writer->Finish());
      return absl::OkStatus();
    };
    ASSIGN_OR_RETURN(const double fetch_seconds,
                     MedianSeconds(options.reps, fetch_once));
    rows.push_back(
        {"coordinator -> worker (FetchInputs)", 1, mib, total, fetch_seconds});

    // The block, run once on the fetched inputs: its real outputs.
    if (outputs.empty()) {
      const std::string run_dir = tmp + "/run";
      fs::create_directories(run_dir);
      ASSIGN_OR_RETURN(const TaskRunResult result,
                       RunTask(spec, inputs_path, run_dir));
      outputs = result.outputs;
      absl::StrAppendFormat(&task_text, " (RunTask %.1f s)", result.seconds);
    }
    uint64_t out_bytes = 0;
    for (const auto& output : outputs)
      out_bytes += fs::file_size(output.second);

    std::vector<std::string> out_digest;
    for (const auto& output : outputs) {
      ASSIGN_OR_RETURN(const std::string digest,
                       ContentDigestOfFile(output.second));
      out_digest.push_back(HexOf(digest));
    }

    // worker -> coordinator in 1 or more streams, then the commit.
    int attempt = 0;
    for (const int streams : options.streams) {
      auto upload_once = [&]() -> absl::Status {
        ASSIGN_OR_RETURN(
            const uint64_t acked,
            streams == 1
                ? Upload(gateway.get(), ref, outputs, chunk_bytes)
                : UploadStriped(stream_stubs, ref, outputs, chunk_bytes,
                                streams, options.unit_mib << 20, out_digest,
                                absl::StrCat("bench-", ++attempt)));
        if (acked != out_bytes) return absl::DataLossError("short upload");
        return absl::OkStatus();
      };
      ASSIGN_OR_RETURN(const double upload_seconds,
                       MedianSeconds(options.reps, upload_once));
      rows.push_back({"worker -> coordinator (UploadResult)", streams, mib,
                      out_bytes, upload_seconds});
    }
    v1::CompleteTaskRequest complete;
    *complete.mutable_task() = ref;
    complete.set_seconds(1);
    v1::CompleteTaskResponse completed;
    RETURN_IF_ERROR(
        FromGrpc(gateway->CompleteTask(Context(60).get(), complete, &completed),
                 "CompleteTask"));

    v1::CancelJobRequest cancel;
    cancel.set_job_id(job.job_id());
    v1::Job cancelled;
    (void)jobs_stub->CancelJob(Context(60).get(), cancel, &cancelled);
    coordinator->Shutdown();
  }

  // Baselines over the same bytes: the inputs as one buffer (the stream's
  // payload: the input file less its header) and the result file.
  ASSIGN_OR_RETURN(std::string inputs, ReadAll(inputs_path));
  inputs = inputs.substr(inputs.size() - input_bytes);
  std::string result;
  for (const auto& output : outputs) {
    ASSIGN_OR_RETURN(std::string bytes, ReadAll(output.second));
    result += bytes;
  }
  ASSIGN_OR_RETURN(std::vector<Baseline> base_in,
                   Baselines(inputs, "inputs", options.reps));
  ASSIGN_OR_RETURN(std::vector<Baseline> base_out,
                   Baselines(result, "result", options.reps));
  const double ceiling_in = MBps(base_in.back().bytes, base_in.back().seconds);
  const double ceiling_out =
      MBps(base_out.back().bytes, base_out.back().seconds);

  std::printf(
      "Model: %s; task %s. Median of %d timed runs after a warm-up.\n\n",
      model.c_str(), task_text.c_str(), options.reps);
  std::printf(
      "| direction | streams | chunk | MB | seconds (median of %d) | MB/s | of "
      "CRC-32C + digest rate |\n| --- | --- | --- | --- | --- | --- | --- "
      "|\n",
      options.reps);
  for (const Row& row : rows) {
    const double rate = MBps(row.bytes, row.seconds);
    const double ceiling = row.direction.find("Fetch") != std::string::npos
                               ? ceiling_in
                               : ceiling_out;
    std::printf("| %s | %d | %d MiB | %.1f | %.3f | %.0f | %.0f%% |\n",
                row.direction.c_str(), row.streams, row.chunk_mib,
                row.bytes / 1e6, row.seconds, rate, 100 * rate / ceiling);
  }
  std::printf(
      "\n| one pass in one thread over the same bytes | MB | seconds (median "
      "of %d) | MB/s |\n| --- | --- | --- | --- |\n",
      options.reps);
  for (const auto* base : {&base_in, &base_out}) {
    for (const Baseline& row : *base) {
      std::printf("| %s | %.1f | %.4f | %.0f |\n", row.pass.c_str(),
                  row.bytes / 1e6, row.seconds, MBps(row.bytes, row.seconds));
    }
  }
  if (options.tmp.empty()) fs::remove_all(tmp, error);
  return absl::OkStatus();
}

}  // namespace
}  // namespace quant

ABSL_FLAG(std::string, model, "", "Model directory (default: a synthetic one)");
ABSL_FLAG(int64_t, hidden, 2048, "Synthetic model: hidden size (x256)");
ABSL_FLAG(int64_t, layers, 2, "Synthetic model: decoder blocks");
ABSL_FLAG(int, bits, 8, "RTN bits of the job");
ABSL_FLAG(int, reps, 5, "Timed runs per measurement");
ABSL_FLAG(std::vector<std::string>, chunks,
          std::vector<std::string>({"1", "4"}),
          "Chunk sizes to measure, MiB (1 to 8)");
ABSL_FLAG(std::vector<std::string>, streams,
          std::vector<std::string>({"1", "4"}),
          "Upload streams side by side to measure (1 to 64; more than 1: a "
          "striped upload, as a worker sends 256 MiB or more)");
ABSL_FLAG(int, unit_mib, 16, "Striped uploads: unit, MiB");
ABSL_FLAG(std::string, tmp, "", "Temporary directory (default: under /tmp)");

namespace {

// A list flag of counts 1 to `most`; false (said on stderr) otherwise.
bool ParseCounts(const char* flag, const std::vector<std::string>& texts,
                 int most, std::vector<int>* counts) {
  counts->clear();
  for (const std::string& text : texts) {
    int count = 0;
    if (!absl::SimpleAtoi(text, &count) || count < 1 || count > most) {
      std::fprintf(stderr, "service_stream: --%s: %s is not 1 to %d\n", flag,
                   text.c_str(), most);
      return false;
    }
    counts->push_back(count);
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "service_stream [--model=DIR] [--hidden=2048] [--layers=2] [--bits=8] "
      "[--reps=5] [--chunks=1,4] [--streams=1,4] [--unit_mib=16] [--tmp=DIR]");
  absl::ParseCommandLine(argc, argv);
  quant::Options options;
  options.model = absl::GetFlag(FLAGS_model);
  options.hidden = absl::GetFlag(FLAGS_hidden);
  options.layers = absl::GetFlag(FLAGS_layers);
  options.bits = absl::GetFlag(FLAGS_bits);
  options.reps = absl::GetFlag(FLAGS_reps);
  options.tmp = absl::GetFlag(FLAGS_tmp);
  options.unit_mib = absl::GetFlag(FLAGS_unit_mib);
  if (!ParseCounts("streams", absl::GetFlag(FLAGS_streams), 64,
                   &options.streams) ||
      !ParseCounts("chunks", absl::GetFlag(FLAGS_chunks), 8,
                   &options.chunk_mib)) {
    return 2;
  }
  if (options.unit_mib < 1 || options.unit_mib > 1024) {
    std::fprintf(stderr, "service_stream: --unit_mib is 1 to 1024\n");
    return 2;
  }
  if (options.hidden <= 0 || options.hidden % 256 != 0 || options.layers < 1 ||
      options.bits < 2 || options.reps < 1) {
    std::fprintf(stderr,
                 "service_stream: bad --hidden, --layers, --bits or "
                 "--reps\n");
    return 2;
  }
  const absl::Status status = quant::Run(options);
  if (!status.ok()) {
    std::fprintf(stderr, "service_stream: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
