#include "coordinator/assembler.h"

#include <filesystem>
#include <string>
#include <vector>

#include "common/checksum.h"
#include "common/file.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "coordinator/planner.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/recipe.h"
#include "proto/task_tensors.h"
#include "quant/block_store.h"
#include "quant/quantize_model.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

JobPlan SequentialPlan() {
  JobPlan plan;
  plan.num_layers = 2;
  plan.sequences = 2;
  plan.seq_len = 3;
  return plan;
}

TaskRow Block(int layer) {
  TaskRow task;
  task.index = layer + 1;
  task.kind = kBlockTask;
  task.layer = layer;
  return task;
}

// A block result of width 4 whose linears were all kept in floating point:
// small, and everything the assembly reads.
BlockResult KeptResult() {
  BlockResult result;
  for (int i = 0; i < kBlockLinears; ++i) {
    LinearWeights& linear = BlockLinear(result.weights, i);
    linear.rows = linear.cols = 4;
    linear.weight.assign(16, 0.25f * i);
    result.reports[i].name = std::string(kBlockLinearNames[i]);
    result.reports[i].kept_fp = "kept for the test";
  }
  result.weights.attn_norm.assign(4, 1.0f);
  result.weights.ffn_norm.assign(4, 1.0f);
  return result;
}

TEST(AssemblerTest, UploadsAreFoundOnDiskAndDroppedPerTask) {
  const std::string job = MakeTestTempDir("assembler");
  const std::string dir = UploadDir(job, 1, 4);
  fs::create_directories(dir);
  fs::create_directories(UploadDir(job, 1, 3));
  fs::create_directories(UploadDir(job, 2, 4));
  ASSERT_TRUE(WriteFileAtomically(dir + "/result", "result bytes").ok());
  auto found = ReadUploads(dir, {kResultTensor});
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->at(kResultTensor).bytes, 12u);
  EXPECT_EQ(found->at(kResultTensor).digest, ContentDigestOf("result bytes"));
  EXPECT_EQ(
      ReadUploads(dir, {kResultTensor, kActivationsTensor}).status().code(),
      absl::StatusCode::kFailedPrecondition);
  DropUploads(job, 1);
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_FALSE(fs::exists(UploadDir(job, 1, 3)));
  EXPECT_TRUE(fs::exists(UploadDir(job, 2, 4)));  // Another task's.
}

TEST(AssemblerTest, CleanJobDirRemovesOnlyUnfinishedWrites) {
  const std::string job = MakeTestTempDir("assembler");
  fs::create_directories(UploadDir(job, 1, 1));
  ASSERT_TRUE(WriteFileAtomically(UploadDir(job, 1, 1) + "/result", "x").ok());
  ASSERT_TRUE(WriteFileAtomically(job + "/block-0.safetensors", "y").ok());
  ASSERT_TRUE(
      WriteFileAtomically(job + "/block-1.safetensors.tmp.AbC123", "z").ok());
  ASSERT_TRUE(
      WriteFileAtomically(UploadDir(job, 1, 1) + "/activations.tmp.q", "w")
          .ok());
  CleanJobDir(job);
  EXPECT_TRUE(fs::exists(UploadDir(job, 1, 1) + "/result"));
  EXPECT_TRUE(fs::exists(job + "/block-0.safetensors"));
  EXPECT_FALSE(fs::exists(job + "/block-1.safetensors.tmp.AbC123"));
  EXPECT_FALSE(fs::exists(UploadDir(job, 1, 1) + "/activations.tmp.q"));
}

TEST(AssemblerTest, CommittedOutputsAreCheckedAndMovedIntoPlace) {
  const std::string job = MakeTestTempDir("assembler");
  const std::string upload = UploadDir(job, 1, 1);
  fs::create_directories(upload);
  // Activations of the planned shape [2, 3, 4], and a result that is not
  // a safetensors file.
  const std::vector<float> hidden(2 * 3 * 4, 0.5f);
  ASSERT_TRUE(SaveActivations(upload + "/activations", hidden, 2, 3, 4).ok());
  ASSERT_TRUE(WriteFileAtomically(upload + "/result", "garbage").ok());
  auto received = ReadUploads(upload, {kResultTensor, kActivationsTensor});
  ASSERT_TRUE(received.ok());
  absl::StatusOr<std::string> refused =
      CommitTaskOutputs(job, SequentialPlan(), Block(0), 4, "", *received);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("result"), absl::string_view::npos);
  // A safetensors file, but not a block result (the assembly could not
  // read it: refused now, not after the job's tasks are done).
  ASSERT_TRUE(SaveActivations(upload + "/result", hidden, 2, 3, 4).ok());
  received = ReadUploads(upload, {kResultTensor, kActivationsTensor});
  refused =
      CommitTaskOutputs(job, SequentialPlan(), Block(0), 4, "", *received);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("not a block result"),
            absl::string_view::npos)
      << refused.status();
  EXPECT_FALSE(fs::exists(BlockResultPath(job, 0)));
  // A real result, but activations of another width.
  ASSERT_TRUE(SaveBlockResult(upload + "/result", KeptResult()).ok());
  received = ReadUploads(upload, {kResultTensor, kActivationsTensor});
  EXPECT_EQ(CommitTaskOutputs(job, SequentialPlan(), Block(0), 8, "", *received)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // The right width: both files move into the job directory.
  const absl::StatusOr<std::string> outputs =
      CommitTaskOutputs(job, SequentialPlan(), Block(0), 4, "", *received);
  ASSERT_TRUE(outputs.ok()) << outputs.status();
  EXPECT_TRUE(fs::exists(BlockResultPath(job, 0)));
  EXPECT_TRUE(fs::exists(ActivationsPath(job, 1)));
  EXPECT_NE(outputs->find(HexOf(received->at(kResultTensor).digest)),
            std::string::npos);
  // Committed again, as after a store that could not record the commit (a
  // full disk): the files moved then are in place, and nothing moves.
  const absl::StatusOr<std::string> again =
      CommitTaskOutputs(job, SequentialPlan(), Block(0), 4, "", *received);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *outputs);
  // Not the uploaded bytes in place: not committed.
  ASSERT_TRUE(
      SaveActivations(ActivationsPath(job, 1), std::vector<float>(24), 2, 3, 4)
          .ok());
  EXPECT_EQ(CommitTaskOutputs(job, SequentialPlan(), Block(0), 4, "", *received)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

// Activations committed deferred: recorded by digest with their holder,
// nothing moved; their later upload must be those bytes and of the planned
// shape, then it moves into place. The inputs of a task whose outputs are
// held stay until they are uploaded.
TEST(AssemblerTest, DeferredActivationsAreRecordedThenUploadedIntoPlace) {
  const std::string job = MakeTestTempDir("assembler_deferred");
  const JobPlan plan = SequentialPlan();
  const std::string upload = UploadDir(job, 1, 1);
  fs::create_directories(upload);
  ASSERT_TRUE(SaveBlockResult(upload + "/result", KeptResult()).ok());
  const std::vector<float> hidden(2 * 3 * 4, 0.5f);
  const std::string made = job + "/made.safetensors";
  ASSERT_TRUE(SaveActivations(made, hidden, 2, 3, 4).ok());
  const std::string digest = HexOf(*ContentDigestOfFile(made));
  auto received = ReadUploads(upload, {kResultTensor});
  ASSERT_TRUE(received.ok());
  // Only activations wait on their worker, with a digest, and a holder.
  EXPECT_EQ(CommitTaskOutputs(job, plan, Block(0), 4, "", *received,
                              {{kResultTensor, {digest, 1}}}, "w-1")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CommitTaskOutputs(job, plan, Block(0), 4, "", *received,
                              {{kActivationsTensor, {"00ff", 1}}}, "w-1")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CommitTaskOutputs(job, plan, Block(0), 4, "", *received,
                              {{kActivationsTensor, {digest, 1}}}, "")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  const absl::StatusOr<std::string> outputs =
      CommitTaskOutputs(job, plan, Block(0), 4, "", *received,
                        {{kActivationsTensor, {digest, 99}}}, "w-1");
  ASSERT_TRUE(outputs.ok()) << outputs.status();
  EXPECT_TRUE(fs::exists(BlockResultPath(job, 0)));
  EXPECT_FALSE(fs::exists(ActivationsPath(job, 1)));
  TaskRow maker = Block(0);
  maker.state = TaskState::kDone;
  maker.epoch = 1;
  maker.outputs = *outputs;
  EXPECT_EQ(DeferredHolder(maker, kActivationsTensor), "w-1");
  EXPECT_EQ(CommittedDigest(maker, kActivationsTensor), digest);
  EXPECT_TRUE(HoldsDeferredOutputs(plan, maker));

  // Block 0's input stays while its output is held, though block 0 is done.
  TaskRow embed;
  embed.index = 0;
  embed.kind = kEmbedTask;
  embed.layer = -1;
  embed.state = TaskState::kDone;
  TaskRow reader = Block(1);
  reader.deps = {1};
  reader.state = TaskState::kDone;
  maker.deps = {0};
  ASSERT_TRUE(SaveActivations(ActivationsPath(job, 0), hidden, 2, 3, 4).ok());
  DropConsumedInputs(job, plan, {embed, maker, reader});
  EXPECT_TRUE(fs::exists(ActivationsPath(job, 0)));

  // The upload: other bytes are refused, the committed ones move in.
  UploadReceiver::Received other;
  ASSERT_TRUE(SaveActivations(job + "/other.safetensors",
                              std::vector<float>(24), 2, 3, 4)
                  .ok());
  other.path = job + "/other.safetensors";
  other.digest = *ContentDigestOfFile(other.path);
  EXPECT_EQ(
      CommitDeferredOutput(job, plan, maker, 4, "", kActivationsTensor, other)
          .code(),
      absl::StatusCode::kInvalidArgument);
  UploadReceiver::Received file;
  file.path = made;
  file.digest = *ContentDigestOfFile(made);
  EXPECT_EQ(
      CommitDeferredOutput(job, plan, maker, 8, "", kActivationsTensor, file)
          .code(),
      absl::StatusCode::kInvalidArgument);  // Not the planned width.
  ASSERT_TRUE(
      CommitDeferredOutput(job, plan, maker, 4, "", kActivationsTensor, file)
          .ok());
  EXPECT_TRUE(fs::exists(ActivationsPath(job, 1)));
  EXPECT_FALSE(fs::exists(made));
  // Recorded as on disk: block 0's input goes.
  nlohmann::json record = nlohmann::json::parse(maker.outputs);
  record[kActivationsTensor].erase("held_by");
  maker.outputs = record.dump();
  EXPECT_EQ(
      CommitDeferredOutput(job, plan, maker, 4, "", kActivationsTensor, file)
          .code(),
      absl::StatusCode::kFailedPrecondition);
  DropConsumedInputs(job, plan, {embed, maker, reader});
  EXPECT_FALSE(fs::exists(ActivationsPath(job, 0)));
}

// A data-parallel job's uploads are checked for what each task makes:
// statistics, a partial result before the last stage (a whole one at it),
// a shard's activations.
TEST(AssemblerTest, DataParallelUploadsAreCheckedForTheirTask) {
  const std::string job = MakeTestTempDir("assembler");
  JobPlan plan = SequentialPlan();
  plan.num_layers = 1;
  plan.sequences = 4;
  plan.sequences_per_pass = 2;
  plan.calibration_shards = 2;
  plan.calibration_stages = 2;
  // Embeds 0, 1; stage 0: captures 2, 3, solve 4; stage 1: 5, 6, solve 7.
  auto task = [](int index, const char* kind) {
    TaskRow row;
    row.index = index;
    row.kind = kind;
    row.layer = index < 2 ? -1 : 0;
    return row;
  };
  const std::string upload = UploadDir(job, 2, 1);
  fs::create_directories(upload);
  auto commit = [&](const TaskRow& row, const std::string& name) {
    const auto received = ReadUploads(upload, {name});
    EXPECT_TRUE(received.ok()) << received.status();
    return CommitTaskOutputs(job, plan, row, 4, "", *received);
  };
  // Activations where statistics belong.
  const std::vector<float> hidden(4 * 3 * 4, 0.5f);
  ASSERT_TRUE(SaveActivations(upload + "/statistics", hidden, 4, 3, 4).ok());
  absl::StatusOr<std::string> done =
      commit(task(2, kCaptureTask), kStatisticsTensor);
  EXPECT_EQ(done.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(done.status().message().find("statistics are malformed"),
            absl::string_view::npos)
      << done.status();
  BlockStatistics statistics;
  statistics[0].emplace(4);
  statistics[0]->Add(hidden.data(), 3);
  ASSERT_TRUE(SaveBlockStatistics(upload + "/statistics", statistics).ok());
  ASSERT_TRUE(commit(task(2, kCaptureTask), kStatisticsTensor).ok());
  // A result with o_proj not solved yet: stage 0's, not the block's.
  BlockResult partial = KeptResult();
  partial.reports[3].kept_fp.clear();
  ASSERT_TRUE(SaveBlockResult(upload + "/result", partial).ok());
  done = commit(task(7, kSolveTask), kResultTensor);
  EXPECT_EQ(done.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(done.status().message().find("not solved yet"),
            absl::string_view::npos)
      << done.status();
  ASSERT_TRUE(commit(task(4, kSolveTask), kResultTensor).ok());
  EXPECT_TRUE(fs::exists(job + "/partial-0-stage-0.safetensors"));
  EXPECT_FALSE(fs::exists(BlockResultPath(job, 0)));
  // Shard 1's embed makes 2 of the 4 sequences.
  ASSERT_TRUE(SaveActivations(upload + "/activations", hidden, 4, 3, 4).ok());
  done = commit(task(1, kEmbedTask), kActivationsTensor);
  EXPECT_NE(done.status().message().find("not F32 [2, 3, 4]"),
            absl::string_view::npos)
      << done.status();
}

// Files the assembly reads are checked against their commit records; a
// damaged block result sends its task back, with the maker of the
// activations it reads when those are gone, and nothing else.
TEST(AssemblerTest, DamagedCommittedFilesNameTheTasksToRedo) {
  const std::string job = MakeTestTempDir("assembler");
  JobPlan plan = SequentialPlan();
  plan.job_dir = job;
  // embed -> block 0 -> block 1, all done.
  TaskRow embed;
  embed.index = 0;
  embed.kind = kEmbedTask;
  embed.layer = -1;
  std::vector<TaskRow> tasks = {embed, Block(0), Block(1)};
  tasks[1].deps = {0};
  tasks[2].deps = {1};
  auto commit = [&](TaskRow& task, const std::string& name,
                    const std::string& bytes) {
    const std::string path = OutputPath(plan, job, task, name);
    ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
    nlohmann::json outputs = task.outputs.empty()
                                 ? nlohmann::json::object()
                                 : nlohmann::json::parse(task.outputs);
    outputs[name] = {{"path", path},
                     {"bytes", bytes.size()},
                     {"digest", HexOf(ContentDigestOf(bytes))}};
    task.outputs = outputs.dump();
    task.state = TaskState::kDone;
  };
  commit(tasks[0], kActivationsTensor, "boundary 0");
  commit(tasks[1], kResultTensor, "result 0");
  commit(tasks[1], kActivationsTensor, "boundary 1");
  commit(tasks[2], kResultTensor, "result 1");
  EXPECT_TRUE(TasksToRedo(plan, tasks).empty());

  // Consumed activations are dropped: that alone redoes nothing.
  fs::remove(ActivationsPath(job, 0));
  fs::remove(ActivationsPath(job, 1));
  EXPECT_TRUE(TasksToRedo(plan, tasks).empty());

  // One bit of block 1's result flipped: block 1 again, block 0 (whose
  // activations block 1 reads are gone) and the embed (likewise for block
  // 0).
  std::string flipped = "result 1";
  flipped[3] ^= 0x10;
  ASSERT_TRUE(WriteFileAtomically(BlockResultPath(job, 1), flipped).ok());
  std::vector<TaskToRedo> redo = TasksToRedo(plan, tasks);
  ASSERT_EQ(redo.size(), 3u);
  EXPECT_EQ(redo[0].index, 2);
  EXPECT_NE(redo[0].reason.find("digest"), std::string::npos) << redo[0].reason;
  EXPECT_EQ(redo[1].index, 1);
  EXPECT_NE(redo[1].reason.find("needs its input"), std::string::npos)
      << redo[1].reason;
  EXPECT_EQ(redo[2].index, 0);

  // With block 0's activations still there, block 1 alone.
  ASSERT_TRUE(WriteFileAtomically(ActivationsPath(job, 1), "boundary 1").ok());
  redo = TasksToRedo(plan, tasks);
  ASSERT_EQ(redo.size(), 1u);
  EXPECT_EQ(redo[0].index, 2);

  // Block 0's result gone, block 1's a byte short: both, and then the
  // embed for block 0's input.
  ASSERT_TRUE(WriteFileAtomically(BlockResultPath(job, 1), "result ").ok());
  fs::remove(BlockResultPath(job, 0));
  redo = TasksToRedo(plan, tasks);
  ASSERT_EQ(redo.size(), 3u);
  EXPECT_NE(redo[0].reason.find("is gone"), std::string::npos);
  EXPECT_NE(redo[1].reason.find("holds 7 bytes, 8 were committed"),
            std::string::npos)
      << redo[1].reason;
  EXPECT_EQ(redo[2].index, 0);
}

// A store written before the content digest records each file's plain
// SHA-256: an intact file is not redone for that, a damaged one is.
TEST(AssemblerTest, RecordsWithAPlainSha256AreCheckedByIt) {
  const std::string job = MakeTestTempDir("assembler");
  JobPlan plan = SequentialPlan();
  plan.job_dir = job;
  TaskRow block = Block(0);
  block.index = 0;  // The only task.
  block.state = TaskState::kDone;
  const std::string path = OutputPath(plan, job, block, kResultTensor);
  ASSERT_TRUE(WriteFileAtomically(path, "result 0").ok());
  nlohmann::json outputs;
  outputs[kResultTensor] = {
      {"path", path}, {"bytes", 8}, {"sha256", HexOf(Sha256Of("result 0"))}};
  block.outputs = outputs.dump();
  EXPECT_TRUE(TasksToRedo(plan, {block}).empty());
  ASSERT_TRUE(WriteFileAtomically(path, "result 1").ok());
  std::vector<TaskToRedo> redo = TasksToRedo(plan, {block});
  ASSERT_EQ(redo.size(), 1u);
  EXPECT_NE(redo[0].reason.find("digest differs"), std::string::npos)
      << redo[0].reason;
  // A record with neither is unreadable.
  outputs[kResultTensor].erase("sha256");
  block.outputs = outputs.dump();
  redo = TasksToRedo(plan, {block});
  ASSERT_EQ(redo.size(), 1u);
  EXPECT_NE(redo[0].reason.find("unreadable"), std::string::npos)
      << redo[0].reason;
}

// A data-parallel job's statistics, partial results and activations are
// dropped once read and are no reason to redo anything; a damaged block
// result sends back its solve and, through the inputs each redone task
// reads and that are gone, the captures, forwards and embeds before it.
TEST(AssemblerTest, DataParallelRedoFollowsTheInputsThatAreGone) {
  const std::string job = MakeTestTempDir("assembler");
  JobPlan plan = SequentialPlan();
  plan.job_dir = job;
  plan.sequences = 4;
  plan.sequences_per_pass = 2;
  plan.calibration_shards = 2;
  plan.calibration_stages = 1;
  // Embeds 0, 1; layer 0: captures 2, 3, solve 4, forwards 5, 6; layer 1:
  // captures 7, 8, solve 9 (PlanJob's layout).
  const std::vector<std::pair<const char*, std::vector<int32_t>>> layout = {
      {kEmbedTask, {}},       {kEmbedTask, {}},     {kCaptureTask, {0}},
      {kCaptureTask, {1}},    {kSolveTask, {2, 3}}, {kForwardTask, {0, 4}},
      {kForwardTask, {1, 4}}, {kCaptureTask, {5}},  {kCaptureTask, {6}},
      {kSolveTask, {7, 8}}};
  std::vector<TaskRow> tasks;
  for (const auto& [kind, deps] : layout) {
    TaskRow task;
    task.index = static_cast<int32_t>(tasks.size());
    task.kind = kind;
    task.layer = task.kind == kEmbedTask ? -1 : task.index < 7 ? 0 : 1;
    task.deps = deps;
    task.state = TaskState::kDone;
    nlohmann::json outputs = nlohmann::json::object();
    for (const std::string& name : TaskOutputs(plan, task)) {
      const std::string path = OutputPath(plan, job, task, name);
      const std::string bytes = absl::StrCat("task ", task.index);
      ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
      outputs[name] = {{"path", path},
                       {"bytes", bytes.size()},
                       {"digest", HexOf(ContentDigestOf(bytes))}};
    }
    task.outputs = outputs.dump();
    tasks.push_back(task);
  }
  ASSERT_EQ(TaskShard(plan, tasks[6]), 1);
  DropConsumedInputs(job, plan, tasks);
  for (int i : {2, 3, 7, 8}) {
    EXPECT_FALSE(
        fs::exists(OutputPath(plan, job, tasks[i], kStatisticsTensor)));
  }
  EXPECT_FALSE(fs::exists(OutputPath(plan, job, tasks[5], kActivationsTensor)));
  EXPECT_TRUE(fs::exists(BlockResultPath(job, 0)));  // Assembled.
  EXPECT_TRUE(TasksToRedo(plan, tasks).empty());

  ASSERT_TRUE(WriteFileAtomically(BlockResultPath(job, 1), "task 0").ok());
  std::vector<int32_t> redone;
  for (const TaskToRedo& redo : TasksToRedo(plan, tasks)) {
    redone.push_back(redo.index);
  }
  EXPECT_EQ(redone, (std::vector<int32_t>{9, 7, 8, 5, 6, 0, 1}));
}

// A shutdown stops an assembly before its next block: Cancelled, nothing
// at the output's name, no staging left; the next attempt writes it.
TEST(AssemblerTest, ACancelledAssemblyLeavesNothingAndTheNextOneWrites) {
  const std::string dir = MakeTestTempDir("assembler");
  ASSERT_TRUE(WriteTinyLlama(dir + "/model", TinyLlamaOptions()).ok());
  QuantizeModelOptions options;
  options.model_dir = dir + "/model";
  options.method = QuantMethod::kRtn;
  options.weights = {4, 64, false};
  options.calibration.samples = 0;  // Data-free.
  options.output = dir + "/engine";
  options.work_dir = dir + "/work";  // The coordinator's job-dir layout.
  const absl::StatusOr<QuantizeModelResult> engine = QuantizeModel(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  v1::JobSpec spec;
  spec.set_model_dir(options.model_dir);
  spec.set_output(dir + "/out");
  *spec.mutable_recipe() = RecipeFromOptions(options);
  int asked = 0;
  absl::StatusOr<std::string> stopped = AssembleJob(
      spec, options.work_dir, 0, nullptr, [&] { return ++asked > 1; });
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled)
      << stopped.status();
  EXPECT_GT(asked, 1);
  EXPECT_FALSE(fs::exists(dir + "/out"));
  for (const auto& entry : fs::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().filename().string().find(".out."),
              std::string::npos)
        << entry.path();  // No staging left.
  }
  EXPECT_FALSE(Assembled(spec, options.work_dir));
  absl::StatusOr<std::string> report =
      AssembleJob(spec, options.work_dir, 0, nullptr, [] { return false; });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(Assembled(spec, options.work_dir));
  EXPECT_EQ(*ReadFileToString(dir + "/out/model.safetensors"),
            *ReadFileToString(dir + "/engine/model.safetensors"));
}

}  // namespace
}  // namespace quant
