#include "quant/quantize_model.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/file.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "format/gguf.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "gtest/gtest.h"
#include "kernels/cpu/quantize_rows.h"
#include "quant/block_store.h"
#include "quant/checkpoint_export.h"

namespace quant {
namespace {

struct TinyRun {
  std::string dir, model, tokens;
};

TinyRun MakeTinyRun(const std::string& name, int64_t intermediate_size = 768) {
  TinyRun s;
  s.dir = MakeTestTempDir(name);
  s.model = s.dir + "/model";
  TinyLlamaOptions tiny;
  tiny.intermediate_size = intermediate_size;
  EXPECT_TRUE(WriteTinyLlama(s.model, tiny).ok());
  s.tokens = s.dir + "/tokens.txt";
  std::ofstream out(s.tokens);
  std::mt19937 rng(1);
  for (int i = 0; i < 3000; ++i) out << rng() % 500 << " ";
  return s;
}

QuantizeModelOptions Options(const TinyRun& s, const std::string& name) {
  QuantizeModelOptions o;
  o.model_dir = s.model;
  o.output = s.dir + "/" + name;
  o.work_dir = s.dir + "/" + name + ".work";
  o.calibration.tokens_path = s.tokens;
  o.calibration.samples = 5;
  o.calibration.seq_len = 48;
  o.sequences_per_pass = 2;
  o.weights = {4, 64, false};
  return o;
}

std::string Bytes(const std::string& path) { return *ReadFileToString(path); }

TEST(QuantizeModelTest, ResumedRunIsByteIdenticalToAnUninterruptedOne) {
  const TinyRun s = MakeTinyRun("quantize_resume");
  const auto whole = QuantizeModel(Options(s, "whole"));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_TRUE(whole->finished);
  EXPECT_EQ(whole->blocks_quantized, 2);

  QuantizeModelOptions staged = Options(s, "staged");
  staged.stop_after_block = 0;
  const auto first = QuantizeModel(staged);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->finished);
  EXPECT_FALSE(std::filesystem::exists(staged.output));
  staged.stop_after_block = -1;
  const auto rest = QuantizeModel(staged);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_TRUE(rest->finished);
  EXPECT_EQ(rest->blocks_resumed, 1);
  EXPECT_EQ(rest->blocks_quantized, 1);
  // (EXPECT_TRUE: a byte diff of two checkpoints is no use to print.)
  EXPECT_TRUE(Bytes(staged.output + "/model.safetensors") ==
              Bytes(s.dir + "/whole/model.safetensors"));
  const auto resumed =
      LoadBlockResult(staged.work_dir + "/block-1.safetensors");
  const auto direct =
      LoadBlockResult(s.dir + "/whole.work/block-1.safetensors");
  ASSERT_TRUE(resumed.ok() && direct.ok());
  for (int i = 0; i < kBlockLinears; ++i) {
    EXPECT_TRUE(resumed->quantized[i].q == direct->quantized[i].q);
    EXPECT_TRUE(resumed->quantized[i].scales == direct->quantized[i].scales);
    EXPECT_TRUE(resumed->importance[i] == direct->importance[i]);
  }

  // The work directory belongs to its recipe.
  QuantizeModelOptions other = staged;
  other.weights.bits = 3;
  other.output = s.dir + "/other";
  const absl::Status refused = QuantizeModel(other).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("bits differs"), std::string::npos)
      << refused;
  // An existing output is never overwritten.
  QuantizeModelOptions again = Options(s, "whole");
  again.work_dir = s.dir + "/again.work";
  EXPECT_EQ(QuantizeModel(again).status().code(),
            absl::StatusCode::kAlreadyExists);
}

// The checkpoint read back holds exactly the weights the run computed with.
void ExpectExportMatchesResults(const QuantizeModelOptions& o,
                                CheckpointLayout layout) {
  const auto config = ReadQuantizationConfig(o.output);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->has_value());
  EXPECT_EQ((*config)->layout, layout);
  const ModelSpec spec = *LoadModelConfig(o.output);
  const auto checkpoint = *SafetensorsCheckpoint::Open(o.output);
  for (int layer = 0; layer < 2; ++layer) {
    const auto read =
        LoadQuantizedDecoderBlock(*checkpoint, spec, layer, **config);
    ASSERT_TRUE(read.ok()) << read.status();
    const auto saved = LoadBlockResult(o.work_dir + "/block-" +
                                       std::to_string(layer) + ".safetensors");
    ASSERT_TRUE(saved.ok()) << saved.status();
    for (int i = 0; i < kBlockLinears; ++i) {
      EXPECT_EQ(BlockLinear(*read, i).weight,
                BlockLinear(saved->weights, i).weight)
          << layer << " " << kBlockLinearNames[i];
    }
    EXPECT_EQ(read->attn_norm, saved->weights.attn_norm);
    EXPECT_EQ(read->ffn_norm, saved->weights.ffn_norm);
  }
  EXPECT_TRUE(std::filesystem::exists(o.output + "/tokenizer.json"));
  EXPECT_TRUE(std::filesystem::exists(o.output + "/quantization_report.json"));
}

TEST(QuantizeModelTest, GptqAndAwqCheckpointsReadBackExactly) {
  const TinyRun s = MakeTinyRun("quantize_export");
  QuantizeModelOptions gptq = Options(s, "gptq");
  gptq.gptq.desc_act = true;
  gptq.weights.bits = 3;
  ASSERT_TRUE(QuantizeModel(gptq).ok());
  ExpectExportMatchesResults(gptq, CheckpointLayout::kGptqV1);
  const std::string config = Bytes(gptq.output + "/config.json");
  EXPECT_NE(config.find("\"desc_act\": true"), std::string::npos);
  EXPECT_NE(config.find("\"checkpoint_format\": \"gptq\""), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(gptq.output + "/quantize_config.json"));

  QuantizeModelOptions awq = Options(s, "awq");
  awq.method = QuantMethod::kAwq;
  awq.output_format = OutputFormat::kAwq;
  ASSERT_TRUE(QuantizeModel(awq).ok());
  ExpectExportMatchesResults(awq, CheckpointLayout::kAwqGemm);
  EXPECT_NE(Bytes(awq.output + "/config.json").find("\"version\": \"gemm\""),
            std::string::npos);
}

// An MLP 172 wide packs in neither layout: gate/up/down stay in floating
// point (as stored, bf16), listed in the config; the checkpoint still reads
// back as exactly what the run computed with.
TEST(QuantizeModelTest, LinearsThatDoNotPackStayInFloatingPoint) {
  const TinyRun s = MakeTinyRun("quantize_odd", 172);
  const std::vector<std::string> mlp = {"mlp.gate_proj", "mlp.up_proj",
                                        "mlp.down_proj"};
  for (const OutputFormat format : {OutputFormat::kGptq, OutputFormat::kAwq}) {
    const bool awq = format == OutputFormat::kAwq;
    QuantizeModelOptions o = Options(s, awq ? "awq" : "gptq");
    o.output_format = format;
    if (awq) o.method = QuantMethod::kAwq;
    const auto done = QuantizeModel(o);
    ASSERT_TRUE(done.ok()) << done.status();
    ExpectExportMatchesResults(
        o, awq ? CheckpointLayout::kAwqGemm : CheckpointLayout::kGptqV1);
    const auto config = ReadQuantizationConfig(o.output);
    ASSERT_TRUE(config.ok() && config->has_value());
    EXPECT_EQ((*config)->modules_kept_fp, mlp);
    EXPECT_EQ(done->report["kept_fp"].size(), 6u);  // 3 linears, 2 blocks.
    const auto checkpoint = *SafetensorsCheckpoint::Open(o.output);
    EXPECT_EQ(checkpoint->Get("model.layers.1.mlp.down_proj.weight")->dtype,
              SafetensorsDType::kBF16);
    EXPECT_FALSE(checkpoint->Has("model.layers.1.mlp.down_proj.qweight"));
    EXPECT_TRUE(checkpoint->Has("model.layers.1.self_attn.o_proj.qweight"));
  }
}

TEST(QuantizeModelTest, GgufFromGptqUsesTheMixTypes) {
  const TinyRun s = MakeTinyRun("quantize_gguf");
  QuantizeModelOptions o = Options(s, "model.gguf");
  o.output_format = OutputFormat::kGguf;
  o.gguf_type = "Q4_K_M";
  const auto done = QuantizeModel(o);
  ASSERT_TRUE(done.ok()) << done.status();
  const auto gguf = GgufReader::Open(o.output);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  std::map<std::string, GgmlType> types;
  for (const GgufTensorInfo& t : (*gguf)->tensors()) types[t.name] = t.type;
  EXPECT_EQ(types["blk.0.attn_q.weight"], GgmlType::kQ4_K);
  // llama.cpp's use_more_bits: the last block's ffn_down is Q6_K, solved
  // with 6 bits; the first block's stays Q4_K, 4 bits.
  EXPECT_EQ(types["blk.1.ffn_down.weight"], GgmlType::kQ6_K);
  EXPECT_EQ(done->report["blocks"][1]["linears"][6]["bits"], 6);
  EXPECT_EQ(types["blk.0.ffn_down.weight"], GgmlType::kQ4_K);
  EXPECT_EQ(done->report["blocks"][0]["linears"][6]["bits"], 4);
  EXPECT_TRUE(std::filesystem::exists(o.output + ".report.json"));
  // Solved on the k-quant grids: the file holds each solution's rows (q
  // and k rows are permuted for llama.cpp's rotary layout; not compared).
  const auto saved = *LoadBlockResult(o.work_dir + "/block-1.safetensors");
  for (const auto& [name, index] : {std::pair{"blk.1.attn_v.weight", 2},
                                    std::pair{"blk.1.ffn_down.weight", 6}}) {
    const GgufTensorInfo* info = (*gguf)->FindTensor(name);
    ASSERT_NE(info, nullptr) << name;
    const std::vector<uint8_t>& rows = saved.quantized[index].gguf_rows;
    ASSERT_EQ(saved.quantized[index].gguf_type, info->type) << name;
    ASSERT_EQ(info->nbytes, rows.size()) << name;
    EXPECT_EQ(std::memcmp((*gguf)->TensorData(*info), rows.data(), rows.size()),
              0)
        << name;
  }
}

// Q4_0 blocks are GPTQ's 4-bit symmetric groups of 32: the solution in that
// format is written exactly (not on the type's weighted-fit grid).
TEST(QuantizeModelTest, GgufQ4_0HoldsTheGptqSolutionExactly) {
  const TinyRun s = MakeTinyRun("quantize_gguf_q4_0");
  QuantizeModelOptions o = Options(s, "model.gguf");
  o.output_format = OutputFormat::kGguf;
  o.gguf_type = "Q4_0";
  ASSERT_TRUE(QuantizeModel(o).ok());
  const auto gguf = *GgufReader::Open(o.output);
  const auto saved = *LoadBlockResult(o.work_dir + "/block-1.safetensors");
  for (const auto& [name, index] : {std::pair{"blk.1.ffn_up.weight", 5},
                                    std::pair{"blk.1.attn_v.weight", 2}}) {
    const GgufTensorInfo* info = gguf->FindTensor(name);
    ASSERT_NE(info, nullptr) << name;
    ASSERT_EQ(info->type, GgmlType::kQ4_0) << name;
    EXPECT_FALSE(saved.quantized[index].gguf_type.has_value());
    const LinearWeights& linear = BlockLinear(saved.weights, index);
    std::vector<float> values(linear.weight.size());
    ASSERT_TRUE(DequantizeRows(GgmlType::kQ4_0, gguf->TensorData(*info),
                               linear.rows, linear.cols, values.data(), 1)
                    .ok());
    EXPECT_TRUE(values == linear.weight) << name;
  }
}

TEST(QuantizeModelTest, GptqBeatsRtnOnEveryTensorOfTheSharedModel) {
  const std::string data = SharedDataDir();
  if (data.empty()) GTEST_SKIP() << "../shared/data is absent";
  const std::string dir = MakeTestTempDir("quantize_shared");
  QuantizeModelOptions o;
  o.model_dir = data + "/llama-29m-books";
  o.calibration.text_path = data + "/text/calibration.txt";
  o.calibration.samples = 8;
  o.calibration.seq_len = 256;
  o.weights = {3, 128, false};
  std::map<QuantMethod, nlohmann::json> reports;
  for (QuantMethod method : {QuantMethod::kRtn, QuantMethod::kGptq}) {
    const std::string name(QuantMethodName(method));
    o.method = method;
    o.output = dir + "/" + name;
    o.work_dir = dir + "/" + name + ".work";
    const auto done = QuantizeModel(o);
    ASSERT_TRUE(done.ok()) << done.status();
    reports[method] = done->report;
  }
  int compared = 0;
  for (int layer = 0; layer < 8; ++layer) {
    for (int i = 0; i < kBlockLinears; ++i) {
      const double rtn = reports[QuantMethod::kRtn]["blocks"][layer]["linears"]
                                [i]["proxy_loss"];
      const double gptq = reports[QuantMethod::kGptq]["blocks"][layer]
                                 ["linears"][i]["proxy_loss"];
      EXPECT_LT(gptq, rtn) << "block " << layer << " " << kBlockLinearNames[i];
      ++compared;
    }
  }
  EXPECT_EQ(compared, 56);
}

TEST(QuantizeModelTest, RejectsBadRecipes) {
  const TinyRun s = MakeTinyRun("quantize_bad");
  QuantizeModelOptions o = Options(s, "bad");
  o.output_format = OutputFormat::kAwq;
  o.weights.bits = 3;
  absl::Status status = QuantizeModel(o).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("bits"), std::string::npos) << status;
  o = Options(s, "bad2");
  o.calibration.samples = 0;
  status = QuantizeModel(o).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("calibration"), std::string::npos) << status;
  o = Options(s, "bad3");
  o.work_dir.clear();
  EXPECT_EQ(QuantizeModel(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = Options(s, "bad4.gguf");
  o.output_format = OutputFormat::kGguf;
  o.gguf_type = "F16";
  status = QuantizeModel(o).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  // Data-free RTN needs no calibration.
  o = Options(s, "rtn");
  o.method = QuantMethod::kRtn;
  o.calibration.samples = 0;
  const auto rtn = QuantizeModel(o);
  ASSERT_TRUE(rtn.ok()) << rtn.status();
  EXPECT_TRUE(rtn->report["blocks"][0]["linears"][0]["proxy_loss"].is_null());
}

}  // namespace
}  // namespace quant
