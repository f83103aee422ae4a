#include "client/service_client.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "coordinator/coordinator.h"
#include "gtest/gtest.h"
#include "proto/recipe.h"
#include "quant/quantize_model.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

TEST(RenderProgressTest, OneBarPerStageWithEta) {
  v1::Job job;
  job.set_job_id("7");
  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_tasks_total(33);
  job.set_tasks_done(11);
  job.set_tasks_leased(1);
  job.set_eta_seconds(192);
  v1::Stage* embed = job.add_stages();
  embed->set_name("embed");
  embed->set_total(1);
  embed->set_done(1);
  v1::Stage* block = job.add_stages();
  block->set_name("block");
  block->set_total(32);
  block->set_done(10);
  EXPECT_EQ(RenderProgress(job),
            "job 7 running: 11/33 tasks done, 1 running, ETA 3m12s\n"
            "  embed    [##############################] 1/1\n"
            "  block    [#########---------------------] 10/32\n");
  job.set_eta_seconds(-1);
  EXPECT_NE(RenderProgress(job).find("ETA ?"), std::string::npos);
  job.set_waiting("block task 3 (layer 2) needs 9.0 GiB; ...");
  EXPECT_NE(RenderProgress(job).find(
                "ETA ?\n  waiting: block task 3 (layer 2) needs 9.0 GiB; ...\n"
                "  embed "),
            std::string::npos);
}

class ServiceClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTestTempDir("service_client");
    model_ = dir_ + "/model";
    ASSERT_TRUE(WriteTinyLlama(model_, TinyLlamaOptions()).ok());
    std::ofstream out(dir_ + "/tokens.txt");
    std::mt19937 rng(9);
    for (int i = 0; i < 2000; ++i) out << rng() % 500 << " ";
    out.close();
    options_.model_dir = model_;
    options_.calibration.tokens_path = dir_ + "/tokens.txt";
    options_.calibration.samples = 4;
    options_.calibration.seq_len = 32;
    options_.weights = {4, 64, false};
  }
  v1::JobSpec Spec(const std::string& output) {
    v1::JobSpec spec;
    spec.set_model_dir(model_);
    spec.set_output(output);
    *spec.mutable_recipe() = RecipeFromOptions(options_);
    return spec;
  }

  std::string dir_, model_;
  QuantizeModelOptions options_;
};

TEST_F(ServiceClientTest, RunLocalMatchesTheEngine) {
  QuantizeModelOptions direct = options_;
  direct.output_format = OutputFormat::kGguf;
  direct.gguf_type = "Q4_0";
  direct.output = dir_ + "/direct.gguf";
  direct.work_dir = dir_ + "/direct.work";
  ASSERT_TRUE(QuantizeModel(direct).ok());
  options_ = direct;
  LocalRunOptions local;
  local.workers = 2;
  // The job store on another file system than the output (when /dev/shm
  // is one): the output is still renamed into place atomically.
  if (fs::is_directory("/dev/shm")) {
    local.state_dir = absl::StrCat("/dev/shm/service_client_test-", getpid());
  }
  std::ostringstream out, err;
  const absl::Status status =
      RunLocal(Spec(dir_ + "/local.gguf"), local, out, err);
  ASSERT_TRUE(status.ok()) << status << "\n" << err.str();
  EXPECT_TRUE(*ReadFileToString(dir_ + "/local.gguf") ==
              *ReadFileToString(direct.output));
  EXPECT_NE(out.str().find("proxy_loss"), std::string::npos) << out.str();
  // embed, 2 blocks, and the head (the tensors outside the blocks).
  EXPECT_NE(err.str().find("succeeded: 4/4 tasks done"), std::string::npos)
      << err.str();
  // A job the coordinator refuses is an error naming the field.
  v1::JobSpec bad = Spec(dir_ + "/bad.gguf");
  bad.mutable_recipe()->set_bits(1);
  const absl::Status refused = RunLocal(bad, local, out, err);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.message().find("recipe.bits"), absl::string_view::npos);
  fs::remove_all(local.state_dir);
}

// The temporary store is a directory of its own: one that already exists
// under the name the run once chose (another user's, with a job store
// planted in it) is neither used nor removed.
TEST_F(ServiceClientTest, RunLocalMakesItsOwnStateDirectory) {
  const std::string planted = absl::StrCat(fs::temp_directory_path().string(),
                                           "/quantctl-local-", getpid());
  fs::create_directories(planted + "/jobs");
  ASSERT_TRUE(WriteFileAtomically(planted + "/marker", "not yours").ok());
  options_.output_format = OutputFormat::kGptq;
  std::ostringstream out, err;
  const absl::Status status =
      RunLocal(Spec(dir_ + "/own-state"), LocalRunOptions(), out, err);
  ASSERT_TRUE(status.ok()) << status << "\n" << err.str();
  EXPECT_TRUE(fs::exists(planted + "/marker"));
  EXPECT_TRUE(fs::is_empty(planted + "/jobs"));
  fs::remove_all(planted);
}

TEST_F(ServiceClientTest, CommandsOverTcp) {
  CoordinatorOptions options;
  options.listen_address = "127.0.0.1:0";
  options.jobs.state_dir = dir_ + "/state";
  options.jobs.model_roots = {dir_};
  options.jobs.output_roots = {dir_};
  auto coordinator = Coordinator::Create(options);
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  ServiceClientOptions client_options;
  client_options.coordinator =
      absl::StrCat("127.0.0.1:", (*coordinator)->port());
  ServiceClient client(client_options);
  const auto job = client.Submit(Spec(dir_ + "/out"));
  ASSERT_TRUE(job.ok()) << job.status();
  std::ostringstream text;
  ASSERT_TRUE(client.List(text).ok());
  EXPECT_NE(text.str().find(absl::StrCat(job->job_id(), "      queued")),
            std::string::npos)
      << text.str();
  text.str("");
  ASSERT_TRUE(client.Status(job->job_id(), text).ok());
  EXPECT_NE(text.str().find("embed"), std::string::npos) << text.str();
  EXPECT_NE(text.str().find("pending"), std::string::npos) << text.str();
  text.str("");
  ASSERT_TRUE(client.Cancel(job->job_id(), text).ok());
  EXPECT_EQ(text.str(), absl::StrCat("job ", job->job_id(), " cancelled\n"));
  // Watching a cancelled job ends at once, as an error.
  const absl::Status watched = client.Watch(job->job_id(), text);
  EXPECT_EQ(watched.code(), absl::StatusCode::kAborted);
  EXPECT_NE(watched.message().find("cancelled"), absl::string_view::npos);
  text.str("");
  ASSERT_TRUE(client.Resume(job->job_id(), text).ok());
  EXPECT_NE(text.str().find("queued (0/3 tasks kept)"), std::string::npos)
      << text.str();
  ASSERT_TRUE(client.Workers(text).ok());
  EXPECT_EQ(client.Get("nope", false).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.Get("12345", false).status().code(),
            absl::StatusCode::kNotFound);
  // A coordinator that is not there: Unavailable, not a hang.
  ServiceClientOptions nowhere;
  nowhere.coordinator = "127.0.0.1:1";
  nowhere.rpc_timeout_ms = 2000;
  EXPECT_EQ(ServiceClient(nowhere).List(text).code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace quant
