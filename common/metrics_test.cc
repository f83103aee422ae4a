#include "common/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// GET `path` from 127.0.0.1:`port` over HTTP/1.0; the whole response
// (status line, headers, body), or an error.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n =
        send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      close(fd);
      return absl::UnavailableError("send failed");
    }
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buffer[4096];
  while (true) {
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0) {
      close(fd);
      return absl::UnavailableError("recv failed");
    }
    if (n == 0) break;
    response.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return response;
}

// prometheus-cpp leaves a family out of the exposition until it has a
// series: one call of each method, so every family shows up.
void TouchEveryFamily(ServiceMetrics& m) {
  m.SetJobs("running", 1);
  m.TaskCompleted("block");
  m.TaskFailed("block", /*task_fault=*/true);
  m.TaskRetried("block");
  m.TaskReleased("block");
  m.ObserveTaskDuration("gptq", "cpu", 1);
  m.AddBytesStreamed("to_worker", 1);
  m.AddLocalInputBytes("held", 1);
  m.SetActiveWorkers("cpu", 1);
  m.SetQueueDepth(1);
  m.SetJobProgress("job-0", 0.5);
  m.WorkerTaskFinished("block", "done");
  m.SetWorkerBusy(false);
}

TEST(ServiceMetricsTest, CountersAndGauges) {
  ServiceMetrics m;
  m.SetJobs("running", 3);
  m.SetJobs("queued", 1);
  m.SetJobs("running", 2);
  m.TaskCompleted("block");
  m.TaskCompleted("block");
  m.TaskCompleted("lm_head");
  m.TaskFailed("block", /*task_fault=*/true);
  m.TaskFailed("block", /*task_fault=*/false);
  m.TaskFailed("block", /*task_fault=*/false);
  m.TaskRetried("block");
  m.TaskReleased("embedding");
  m.AddBytesStreamed("to_worker", 1000);
  m.AddBytesStreamed("to_worker", 24);
  m.AddBytesStreamed("from_worker", 512);
  m.AddLocalInputBytes("held", 4096);
  m.AddLocalInputBytes("model_root", 8192);
  m.SetActiveWorkers("cuda", 4);
  m.SetActiveWorkers("cpu", 1);
  m.SetQueueDepth(17);
  m.SetJobProgress("job-1", 0.25);
  m.WorkerTaskFinished("block", "done");
  m.WorkerTaskFinished("block", "done");
  m.WorkerTaskFinished("block", "released");
  m.SetWorkerBusy(true);

  const std::string text = m.TextExposition();
  for (const char* line : {
           "quant_jobs{state=\"running\"} 2\n",
           "quant_jobs{state=\"queued\"} 1\n",
           "quant_tasks_completed_total{kind=\"block\"} 2\n",
           "quant_tasks_completed_total{kind=\"lm_head\"} 1\n",
           "quant_tasks_failed_total{fault=\"task\",kind=\"block\"} 1\n",
           "quant_tasks_failed_total{fault=\"infra\",kind=\"block\"} 2\n",
           "quant_tasks_retried_total{kind=\"block\"} 1\n",
           "quant_tasks_released_total{kind=\"embedding\"} 1\n",
           "quant_bytes_streamed_total{direction=\"to_worker\"} 1024\n",
           "quant_bytes_streamed_total{direction=\"from_worker\"} 512\n",
           "quant_worker_local_input_bytes_total{source=\"held\"} 4096\n",
           "quant_worker_local_input_bytes_total{source=\"model_root\"} "
           "8192\n",
           "quant_workers_active{backend=\"cuda\"} 4\n",
           "quant_workers_active{backend=\"cpu\"} 1\n",
           "quant_queue_depth 17\n",
           "quant_job_progress_ratio{job_id=\"job-1\"} 0.25\n",
           "quant_worker_tasks_total{kind=\"block\",outcome=\"done\"} 2\n",
           "quant_worker_tasks_total{kind=\"block\",outcome=\"released\"} 1\n",
           "quant_worker_busy 1\n",
           "# TYPE quant_tasks_completed_total counter\n",
           "# TYPE quant_jobs gauge\n",
       }) {
    EXPECT_THAT(text, HasSubstr(line)) << text;
  }
  m.SetWorkerBusy(false);
  EXPECT_THAT(m.TextExposition(), HasSubstr("quant_worker_busy 0\n"));
}

TEST(ServiceMetricsTest, JobProgressIsClampedAndRemovable) {
  ServiceMetrics m;
  m.SetJobProgress("a", 0.5);
  m.SetJobProgress("b", 1.5);
  m.SetJobProgress("c", -1);
  m.SetJobProgress("a", 0.75);
  std::string text = m.TextExposition();
  EXPECT_THAT(text, HasSubstr("quant_job_progress_ratio{job_id=\"a\"} 0.75\n"));
  EXPECT_THAT(text, HasSubstr("quant_job_progress_ratio{job_id=\"b\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("quant_job_progress_ratio{job_id=\"c\"} 0\n"));

  m.RemoveJobProgress("a");
  m.RemoveJobProgress("never-set");  // No-op.
  text = m.TextExposition();
  EXPECT_THAT(text, Not(HasSubstr("job=\"a\"")));
  EXPECT_THAT(text, HasSubstr("quant_job_progress_ratio{job_id=\"b\"} 1\n"));
  m.RemoveJobProgress("b");
  m.RemoveJobProgress("c");
  EXPECT_THAT(m.TextExposition(), Not(HasSubstr("quant_job_progress_ratio{")));

  // A removed job can come back.
  m.SetJobProgress("a", 0.1);
  EXPECT_THAT(m.TextExposition(),
              HasSubstr("quant_job_progress_ratio{job_id=\"a\"} 0.1\n"));
}

TEST(ServiceMetricsTest, JobEtaAndWaitingSeriesComeAndGo) {
  ServiceMetrics m;
  m.SetJobEta("4", 95.5);
  m.SetJobWaiting("4", "memory");
  std::string text = m.TextExposition();
  EXPECT_THAT(text, HasSubstr("quant_job_eta_seconds{job_id=\"4\"} 95.5\n"));
  EXPECT_THAT(
      text, HasSubstr("quant_job_waiting{job_id=\"4\",reason=\"memory\"} 1\n"));
  // Another reason replaces the first; unknown ETA and no reason remove.
  m.SetJobWaiting("4", "no_worker");
  text = m.TextExposition();
  EXPECT_THAT(text, HasSubstr("reason=\"no_worker\"} 1\n"));
  EXPECT_THAT(text, Not(HasSubstr("reason=\"memory\"")));
  m.SetJobEta("4", std::nullopt);
  m.SetJobWaiting("4", "");
  m.SetJobWaiting("never-set", "");  // No-op.
  text = m.TextExposition();
  EXPECT_THAT(text, Not(HasSubstr("quant_job_eta_seconds{")));
  EXPECT_THAT(text, Not(HasSubstr("quant_job_waiting{")));
}

TEST(ServiceMetricsTest, BlockSeriesPerJobAndTheirRemoval) {
  ServiceMetrics m;
  m.SetBlockError("3", 0, "mlp.down_proj", 0.0625);
  m.SetBlockError("3", 1, "mlp.down_proj", 0.125);
  m.SetBlockSeconds("3", 1, 2.5);
  m.SetBlockSeconds("4", 0, 1.5);
  std::string text = m.TextExposition();
  EXPECT_THAT(text, HasSubstr("quant_block_relative_error{job_id=\"3\",layer="
                              "\"1\",linear=\"mlp.down_proj\"} 0.125\n"));
  EXPECT_THAT(text,
              HasSubstr("quant_block_seconds{job_id=\"3\",layer=\"1\"} 2.5\n"));
  m.RemoveJobBlocks("3");
  m.RemoveJobBlocks("never-set");  // No-op.
  text = m.TextExposition();
  EXPECT_THAT(text, Not(HasSubstr("job_id=\"3\"")));
  EXPECT_THAT(text,
              HasSubstr("quant_block_seconds{job_id=\"4\",layer=\"0\"} 1.5\n"));
}

TEST(ServiceMetricsTest, GpuReadings) {
  ServiceMetrics m;
  EXPECT_THAT(m.TextExposition(), Not(HasSubstr("quant_gpu_")));
  m.SetGpuReading("0", "NVIDIA H200", 2048, 4096, 0.25);
  m.SetGpuReading("1", "NVIDIA H200", 1024, 4096, std::nullopt);  // Under MIG.
  m.SetGpuReading("0", "NVIDIA H200", 3072, 4096, 0.5);
  const std::string text = m.TextExposition();
  EXPECT_THAT(text, HasSubstr("quant_gpu_memory_used_bytes{device=\"0\","
                              "gpu=\"NVIDIA H200\"} 3072\n"));
  EXPECT_THAT(text, HasSubstr("quant_gpu_memory_total_bytes{device=\"1\","
                              "gpu=\"NVIDIA H200\"} 4096\n"));
  EXPECT_THAT(text, HasSubstr("quant_gpu_utilization_ratio{device=\"0\","
                              "gpu=\"NVIDIA H200\"} 0.5\n"));
  EXPECT_THAT(text, Not(HasSubstr("quant_gpu_utilization_ratio{device=\"1\"")));
}

TEST(ServiceMetricsTest, TaskDurationHistogram) {
  ServiceMetrics m;
  m.ObserveTaskDuration("gptq", "cuda", 0.05);
  m.ObserveTaskDuration("gptq", "cuda", 3);
  m.ObserveTaskDuration("gptq", "cuda", 3);
  m.ObserveTaskDuration("gptq", "cuda", 7200);
  m.ObserveTaskDuration("rtn", "cpu", 20000);
  const std::string text = m.TextExposition();
  const std::string gptq = "{backend=\"cuda\",method=\"gptq\"";
  for (const std::string& line : {
           absl::StrCat("quant_task_duration_seconds_count", gptq, "} 4\n"),
           absl::StrCat("quant_task_duration_seconds_sum", gptq, "} 7206.05\n"),
           absl::StrCat("quant_task_duration_seconds_bucket", gptq,
                        ",le=\"0.1\"} 1\n"),
           absl::StrCat("quant_task_duration_seconds_bucket", gptq,
                        ",le=\"2.5\"} 1\n"),
           absl::StrCat("quant_task_duration_seconds_bucket", gptq,
                        ",le=\"5\"} 3\n"),
           absl::StrCat("quant_task_duration_seconds_bucket", gptq,
                        ",le=\"5000\"} 3\n"),
           absl::StrCat("quant_task_duration_seconds_bucket", gptq,
                        ",le=\"10000\"} 4\n"),
           absl::StrCat("quant_task_duration_seconds_bucket", gptq,
                        ",le=\"+Inf\"} 4\n"),
           std::string("quant_task_duration_seconds_bucket{backend=\"cpu\","
                       "method=\"rtn\",le=\"10000\"} 0\n"),
           std::string("quant_task_duration_seconds_bucket{backend=\"cpu\","
                       "method=\"rtn\",le=\"+Inf\"} 1\n"),
       }) {
    EXPECT_THAT(text, HasSubstr(line)) << text;
  }
}

TEST(ServiceMetricsTest, ConcurrentUpdates) {
  ServiceMetrics m;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&m, t] {
      for (int i = 0; i < 1000; ++i) {
        m.TaskCompleted("block");
        m.AddBytesStreamed("to_worker", 1);
        const std::string job = absl::StrCat("job-", t, "-", i % 3);
        m.SetJobProgress(job, 0.5);
        m.RemoveJobProgress(job);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const std::string text = m.TextExposition();
  EXPECT_THAT(text, HasSubstr("quant_tasks_completed_total{kind=\"block\"} "
                              "4000\n"));
  EXPECT_THAT(text, HasSubstr("quant_bytes_streamed_total{direction=\""
                              "to_worker\"} 4000\n"));
  EXPECT_THAT(text, Not(HasSubstr("quant_job_progress_ratio{")));
}

// One endpoint for the whole binary: stopping an Exposer takes ~2 s.
class MetricsEndpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    metrics_ = new ServiceMetrics();
    auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", metrics_->registry());
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoint_ = endpoint->release();
  }

  static void TearDownTestSuite() {
    delete endpoint_;
    endpoint_ = nullptr;
    delete metrics_;
    metrics_ = nullptr;
  }

  void SetUp() override { ASSERT_NE(endpoint_, nullptr); }

  static ServiceMetrics* metrics_;
  static MetricsEndpoint* endpoint_;
};

ServiceMetrics* MetricsEndpointTest::metrics_ = nullptr;
MetricsEndpoint* MetricsEndpointTest::endpoint_ = nullptr;

TEST_F(MetricsEndpointTest, ServesMetricsOverHttp) {
  ASSERT_GT(endpoint_->port(), 0);
  TouchEveryFamily(*metrics_);
  metrics_->SetQueueDepth(5);
  absl::StatusOr<std::string> response = HttpGet(endpoint_->port(), "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_TRUE(absl::StartsWith(*response, "HTTP/1.1 200") ||
              absl::StartsWith(*response, "HTTP/1.0 200"))
      << *response;
  for (const char* family : {
           "# TYPE quant_jobs gauge",
           "# TYPE quant_tasks_completed_total counter",
           "# TYPE quant_tasks_failed_total counter",
           "# TYPE quant_tasks_retried_total counter",
           "# TYPE quant_tasks_released_total counter",
           "# TYPE quant_task_duration_seconds histogram",
           "# TYPE quant_bytes_streamed_total counter",
           "# TYPE quant_worker_local_input_bytes_total counter",
           "# TYPE quant_workers_active gauge",
           "# TYPE quant_queue_depth gauge",
           "# TYPE quant_job_progress_ratio gauge",
           "# TYPE quant_worker_tasks_total counter",
           "# TYPE quant_worker_busy gauge",
           "quant_tasks_completed_total{kind=\"block\"} 1\n",
           "quant_queue_depth 5\n",
           "quant_task_duration_seconds_count{backend=\"cpu\",method=\"gptq\"} "
           "1\n",
       }) {
    EXPECT_THAT(*response, HasSubstr(family)) << *response;
  }
}

TEST_F(MetricsEndpointTest, SecondEndpointOnSamePortFails) {
  const std::string address = absl::StrCat("127.0.0.1:", endpoint_->port());
  auto second = MetricsEndpoint::Start(address, metrics_->registry());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(address));
}

TEST(MetricsEndpointStartTest, NullRegistryIsInvalid) {
  auto endpoint = MetricsEndpoint::Start("127.0.0.1:0", nullptr);
  EXPECT_EQ(endpoint.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quant
