#include "coordinator/planner.h"

#include <string>
#include <vector>

#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "gtest/gtest.h"
#include "proto/task_tensors.h"

namespace quant {
namespace {

class PlannerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = MakeTestTempDir("planner") + "/model";
    TinyLlamaOptions tiny;
    tiny.num_layers = 3;
    ASSERT_TRUE(WriteTinyLlama(model_, tiny).ok());
    options_.model_dir = model_;
    options_.output = "unused";
    options_.work_dir = "unused";
    options_.calibration.text_path = "calib.txt";
    options_.calibration.samples = 8;
    options_.calibration.seq_len = 64;
  }
  PlannedJob Plan(v1::Mode mode) {
    auto engine = PlanQuantization(options_);
    EXPECT_TRUE(engine.ok()) << engine.status();
    auto planned = PlanJob(mode, options_, *engine);
    EXPECT_TRUE(planned.ok()) << planned.status();
    return *planned;
  }

  std::string model_;
  QuantizeModelOptions options_;
};

struct Expected {
  const char* kind;
  int layer;
  std::vector<int32_t> deps;
};

void ExpectTasks(const std::vector<TaskRow>& tasks,
                 const std::vector<Expected>& expected) {
  ASSERT_EQ(tasks.size(), expected.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    EXPECT_EQ(tasks[i].index, static_cast<int>(i));
    EXPECT_EQ(tasks[i].kind, expected[i].kind) << i;
    EXPECT_EQ(tasks[i].layer, expected[i].layer) << i;
    EXPECT_EQ(tasks[i].deps, expected[i].deps) << i;
  }
}

TEST_F(PlannerTest, SequentialIsAChain) {
  const PlannedJob job = Plan(v1::MODE_SEQUENTIAL);
  ExpectTasks(job.tasks, {{kEmbedTask, -1, {}},
                          {kBlockTask, 0, {0}},
                          {kBlockTask, 1, {1}},
                          {kBlockTask, 2, {2}}});
  EXPECT_EQ(TaskOutputs(job.plan, job.tasks[0]),
            std::vector<std::string>{kActivationsTensor});
  EXPECT_EQ(TaskOutputs(job.plan, job.tasks[1]),
            (std::vector<std::string>{kResultTensor, kActivationsTensor}));
  // The last block's outputs feed nothing.
  EXPECT_EQ(TaskOutputs(job.plan, job.tasks[3]),
            std::vector<std::string>{kResultTensor});
  EXPECT_EQ(OutputPath("/j", job.tasks[0], kActivationsTensor),
            "/j/activations-0.safetensors");
  EXPECT_EQ(OutputPath("/j", job.tasks[2], kResultTensor),
            "/j/block-1.safetensors");
  EXPECT_EQ(OutputPath("/j", job.tasks[2], kActivationsTensor),
            "/j/activations-2.safetensors");
  EXPECT_FALSE(ReadsActivations(job.plan, job.tasks[0]));
  EXPECT_TRUE(ReadsActivations(job.plan, job.tasks[1]));
  EXPECT_GT(TaskMemoryBytes(job.plan, job.tasks[1]),
            TaskMemoryBytes(job.plan, job.tasks[0]) / 100);
}

TEST_F(PlannerTest, ParallelBlocksDependOnlyOnTheirInputs) {
  const PlannedJob job = Plan(v1::MODE_PARALLEL);
  ExpectTasks(job.tasks, {{kEmbedTask, -1, {}},
                          {kForwardTask, 0, {0}},
                          {kForwardTask, 1, {1}},
                          {kBlockTask, 0, {0}},
                          {kBlockTask, 1, {1}},
                          {kBlockTask, 2, {2}}});
  EXPECT_EQ(TaskOutputs(job.plan, job.tasks[1]),
            std::vector<std::string>{kActivationsTensor});
  EXPECT_EQ(TaskOutputs(job.plan, job.tasks[3]),
            std::vector<std::string>{kResultTensor});
}

TEST_F(PlannerTest, DataFreeTasksAreIndependent) {
  options_.method = QuantMethod::kRtn;
  options_.calibration.samples = 0;
  const PlannedJob job = Plan(v1::MODE_SEQUENTIAL);
  ExpectTasks(job.tasks,
              {{kBlockTask, 0, {}}, {kBlockTask, 1, {}}, {kBlockTask, 2, {}}});
  EXPECT_FALSE(ReadsActivations(job.plan, job.tasks[0]));
  EXPECT_EQ(TaskOutputs(job.plan, job.tasks[0]),
            std::vector<std::string>{kResultTensor});
}

TEST_F(PlannerTest, PlanJsonRoundTripsWithGgufTypes) {
  options_.output_format = OutputFormat::kGguf;
  options_.gguf_type = "Q4_K_M";
  const PlannedJob job = Plan(v1::MODE_PARALLEL);
  ASSERT_EQ(job.plan.linear_types.size(), 3u);
  ASSERT_EQ(job.plan.linear_types[0].size(), 7u);
  // Q4_K_M: attn_v and ffn_down in Q6_K on the "more bits" layers (the
  // last of three), Q4_K elsewhere; by ggml's names.
  EXPECT_EQ(job.plan.linear_types[0][2], "q4_K");
  EXPECT_EQ(job.plan.linear_types[2][2], "q6_K");
  EXPECT_EQ(job.plan.linear_types[2][6], "q6_K");
  EXPECT_EQ(job.plan.linear_types[2][0], "q4_K");
  const auto back = JobPlan::FromJson(job.plan.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(), job.plan.ToJson());
  EXPECT_EQ(back->mode, v1::MODE_PARALLEL);
  EXPECT_EQ(back->sequences, 8);
  EXPECT_EQ(back->norm_dtype, job.plan.norm_dtype);
  // The tensors outside the blocks: one head task, last, no dependencies.
  EXPECT_EQ(back->head_types, job.plan.head_types);
  EXPECT_EQ(job.plan.head_types.at("lm_head.weight"), "q6_K");
  EXPECT_EQ(job.plan.head_types.at("model.norm.weight"), "f32");
  EXPECT_EQ(job.plan.head_types.count("model.embed_tokens.weight"), 1u);
  const TaskRow& head = job.tasks.back();
  EXPECT_EQ(head.kind, kHeadTask);
  EXPECT_EQ(head.index, 6);
  EXPECT_TRUE(head.deps.empty());
  EXPECT_EQ(TaskOutputs(job.plan, head), std::vector<std::string>{kHeadTensor});
  EXPECT_EQ(OutputPath("/j", head, kHeadTensor), "/j/head.safetensors");
  EXPECT_FALSE(ReadsActivations(job.plan, head));
  EXPECT_EQ(JobPlan::FromJson("{\"mode\": 3}").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_FALSE(JobPlan::FromJson("not json").ok());
}

}  // namespace
}  // namespace quant
