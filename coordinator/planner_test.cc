#include "coordinator/planner.h"

#include <string>
#include <vector>

#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
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
  PlannedJob Plan(v1::Mode mode, bool shards_in_task = false) {
    auto engine = PlanQuantization(options_);
    EXPECT_TRUE(engine.ok()) << engine.status();
    auto planned = PlanJob(mode, options_, *engine, shards_in_task);
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
  EXPECT_EQ(OutputPath(job.plan, "/j", job.tasks[0], kActivationsTensor),
            "/j/activations-0.safetensors");
  EXPECT_EQ(OutputPath(job.plan, "/j", job.tasks[2], kResultTensor),
            "/j/block-1.safetensors");
  EXPECT_EQ(OutputPath(job.plan, "/j", job.tasks[2], kActivationsTensor),
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

// Two shards, GPTQ true-sequential (4 stages), 2 layers: per shard an
// embed; per layer and stage two captures then a solve; forwards between
// the layers. Each shard's chain reads its own activations.
TEST_F(PlannerTest, DataParallelCalibrationSplitsEachStage) {
  options_.calibration_shards = 2;
  options_.sequences_per_pass = 3;  // 8 sequences: passes 3 3 2; shards 3, 5.
  TinyLlamaOptions tiny;
  tiny.num_layers = 2;
  options_.model_dir = MakeTestTempDir("planner_dp") + "/model";
  ASSERT_TRUE(WriteTinyLlama(options_.model_dir, tiny).ok());
  const PlannedJob job = Plan(v1::MODE_SEQUENTIAL);
  ASSERT_TRUE(DataParallel(job.plan));
  std::vector<Expected> want = {{kEmbedTask, -1, {}}, {kEmbedTask, -1, {}}};
  int index = 2;
  std::vector<int32_t> shard_input = {0, 1};  // Who made shard k's input.
  for (int layer = 0; layer < 2; ++layer) {
    int32_t solved = -1;
    for (int stage = 0; stage < 4; ++stage) {
      std::vector<int32_t> captures;
      for (int k = 0; k < 2; ++k) {
        std::vector<int32_t> deps = {shard_input[k]};
        if (solved >= 0) deps.push_back(solved);
        want.push_back({kCaptureTask, layer, deps});
        captures.push_back(index++);
      }
      if (solved >= 0) captures.push_back(solved);
      want.push_back({kSolveTask, layer, captures});
      solved = index++;
    }
    if (layer == 1) break;
    for (int k = 0; k < 2; ++k) {
      want.push_back({kForwardTask, layer, {shard_input[k], solved}});
      shard_input[k] = index++;
    }
  }
  ExpectTasks(job.tasks, want);
  const JobPlan& plan = job.plan;
  const std::vector<TaskRow>& tasks = job.tasks;
  EXPECT_EQ(TaskShard(plan, tasks[1]), 1);
  EXPECT_EQ(TaskSequences(plan, tasks[1]).first, 3);
  EXPECT_EQ(TaskSequences(plan, tasks[1]).count, 5);
  // Layer 0, stage 1: captures 5 and 6, solve 7.
  EXPECT_EQ(TaskShard(plan, tasks[6]), 1);
  EXPECT_EQ(TaskStage(plan, tasks[6]), 1);
  EXPECT_EQ(TaskStage(plan, tasks[7]), 1);
  EXPECT_EQ(ActivationsMaker(plan, tasks, tasks[6]), 1);
  EXPECT_EQ(OutputPath(plan, "/j", tasks[6], kStatisticsTensor),
            "/j/statistics-0-stage-1-shard-1.safetensors");
  EXPECT_EQ(ActivationsInputPath(plan, "/j", tasks[6]),
            "/j/activations-0-shard-1.safetensors");
  EXPECT_EQ(ResultInputPath(plan, "/j", tasks[6]),
            "/j/partial-0-stage-0.safetensors");
  EXPECT_EQ(StatisticsInputPaths(plan, "/j", tasks[7]).size(), 2u);
  EXPECT_FALSE(AssembledOutput(plan, tasks[7], kResultTensor));
  // The last stage's solve writes the block's result; the forwards read it.
  EXPECT_EQ(OutputPath(plan, "/j", tasks[13], kResultTensor),
            "/j/block-0.safetensors");
  EXPECT_TRUE(AssembledOutput(plan, tasks[13], kResultTensor));
  EXPECT_EQ(tasks[15].kind, kForwardTask);
  EXPECT_EQ(TaskShard(plan, tasks[15]), 1);
  EXPECT_EQ(ResultInputPath(plan, "/j", tasks[15]), "/j/block-0.safetensors");
  EXPECT_EQ(OutputPath(plan, "/j", tasks[15], kActivationsTensor),
            "/j/activations-1-shard-1.safetensors");
  EXPECT_EQ(ActivationsMaker(plan, tasks, tasks[17]), 15);  // Layer 1's.
  // Memory: a capture holds its shard's activations (5 of 8 sequences), a
  // solve none.
  const int64_t activations = plan.activation_bytes;
  ASSERT_GT(activations, 0);
  EXPECT_EQ(TaskMemoryBytes(plan, tasks[6]),
            plan.block_bytes - activations + activations * 5 / 8);
  EXPECT_EQ(TaskMemoryBytes(plan, tasks[7]), plan.block_bytes - activations);
  EXPECT_EQ(TaskMemoryBytes(plan, tasks[0]),
            plan.embed_bytes - activations + activations * 3 / 8);
  const auto back = JobPlan::FromJson(plan.ToJson());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->ToJson(), plan.ToJson());
  // A damaged store's plan: no stages, more shards than passes, a field of
  // the wrong type.
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, nlohmann::json>>{
           {"calibration_stages", 0},
           {"calibration_shards", 4},
           {"sequences_per_pass", "3"}}) {
    nlohmann::json damaged = nlohmann::json::parse(plan.ToJson());
    damaged[key] = value;
    EXPECT_EQ(JobPlan::FromJson(damaged.dump()).status().code(),
              absl::StatusCode::kDataLoss)
        << key;
  }
  // Parallel mode and one shard keep the block tasks.
  EXPECT_EQ(Plan(v1::MODE_PARALLEL).tasks.back().kind, kBlockTask);

  // Shards kept in the block task: the sequential chain, whose block tasks
  // read every sequence; the choice survives the store.
  const PlannedJob in_task = Plan(v1::MODE_SEQUENTIAL, true);
  EXPECT_FALSE(DataParallel(in_task.plan));
  ExpectTasks(
      in_task.tasks,
      {{kEmbedTask, -1, {}}, {kBlockTask, 0, {0}}, {kBlockTask, 1, {1}}});
  EXPECT_EQ(TaskSequences(in_task.plan, in_task.tasks[2]).count, 8);
  EXPECT_EQ(in_task.plan.calibration_shards, 2);
  const auto stored = JobPlan::FromJson(in_task.plan.ToJson());
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_TRUE(stored->shards_in_task);
  EXPECT_FALSE(DataParallel(*stored));

  options_.calibration_shards = 1;
  EXPECT_FALSE(DataParallel(Plan(v1::MODE_SEQUENTIAL).plan));
  EXPECT_FALSE(Plan(v1::MODE_SEQUENTIAL, true).plan.shards_in_task);
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
  EXPECT_EQ(OutputPath(job.plan, "/j", head, kHeadTensor),
            "/j/head.safetensors");
  EXPECT_FALSE(ReadsActivations(job.plan, head));
  EXPECT_EQ(JobPlan::FromJson("{\"mode\": 3}").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_FALSE(JobPlan::FromJson("not json").ok());
}

}  // namespace
}  // namespace quant
