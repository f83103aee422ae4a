#include "client/quantctl.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "common/test_data.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

absl::Status RunCommand(QuantctlOptions options, std::string* out_text,
                        std::string* err_text = nullptr) {
  std::ostringstream out, err;
  absl::Status status = RunQuantctl(options, out, err);
  *out_text = out.str();
  if (err_text != nullptr) *err_text = err.str();
  return status;
}

TEST(QuantctlTest, MakeConvertInspectEndToEnd) {
  const std::string dir = MakeTestTempDir("quantctl");
  std::string out, err;
  QuantctlOptions make;
  make.command = "make-tiny-model";
  make.out = dir + "/model";
  make.layers = 1;
  ASSERT_TRUE(RunCommand(make, &out).ok());
  EXPECT_NE(out.find("1 layers"), std::string::npos) << out;

  QuantctlOptions convert;
  convert.command = "convert";
  convert.model = dir + "/model";
  convert.out = dir + "/model-q4_0.gguf";
  convert.type = "Q4_0";
  const absl::Status status = RunCommand(convert, &out, &err);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_NE(out.find("12 tensors"), std::string::npos) << out;
  EXPECT_NE(out.find("q4_0"), std::string::npos) << out;
  // One progress line per tensor, the last one at 100%.
  EXPECT_NE(err.find("[12/12] 100.0%"), std::string::npos) << err;

  QuantctlOptions inspect;
  inspect.command = "inspect";
  inspect.args = {convert.out};
  ASSERT_TRUE(RunCommand(inspect, &out).ok());
  EXPECT_NE(out.find("general.file_type = 2"), std::string::npos) << out;
  EXPECT_NE(out.find("blk.0.attn_q.weight"), std::string::npos) << out;
}

TEST(QuantctlTest, QuantizeStopsAndResumes) {
  const std::string dir = MakeTestTempDir("quantctl_quantize");
  std::string out, err;
  QuantctlOptions make;
  make.command = "make-tiny-model";
  make.out = dir + "/model";
  ASSERT_TRUE(RunCommand(make, &out).ok());
  {
    std::ofstream tokens(dir + "/tokens.txt");
    for (int i = 0; i < 500; ++i) tokens << (i * 7) % 300 << " ";
  }
  QuantctlOptions quantize;
  quantize.command = "quantize";
  quantize.model = dir + "/model";
  quantize.out = dir + "/gptq";
  quantize.quantize.calibration.tokens_path = dir + "/tokens.txt";
  quantize.quantize.calibration.samples = 3;
  quantize.quantize.calibration.seq_len = 32;
  quantize.quantize.stop_after_block = 0;
  absl::Status status = RunCommand(quantize, &out, &err);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_NE(out.find("stopped: 1 blocks quantized now"), std::string::npos)
      << out;
  quantize.quantize.stop_after_block = -1;
  status = RunCommand(quantize, &out, &err);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_NE(out.find("1 blocks quantized now, 1 resumed"), std::string::npos)
      << out;
  EXPECT_NE(out.find("mlp.down_proj"), std::string::npos) << out;  // Table.
  EXPECT_NE(err.find("block 2/2 quantized"), std::string::npos) << err;
  // A backend this program does not have is named before any work, and
  // nothing committed is touched.
  for (const char* command : {"quantize", "run"}) {
    QuantctlOptions gpu = quantize;
    gpu.command = command;
    gpu.local = true;
    gpu.out = dir + "/gpu-" + command;
    gpu.quantize.backend = "cuda";
    status = RunCommand(gpu, &out, &err);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition)
        << command << ": " << status;
    EXPECT_NE(status.message().find("no GPU backend"), std::string::npos)
        << status;
    EXPECT_FALSE(std::filesystem::exists(gpu.out + ".work")) << command;
    gpu.quantize.backend = "tpu";
    EXPECT_EQ(RunCommand(gpu, &out, &err).code(),
              absl::StatusCode::kInvalidArgument);
  }
  // Perplexity needs a SentencePiece model, which the tiny model lacks.
  QuantctlOptions perplexity;
  perplexity.command = "perplexity";
  perplexity.model = quantize.out;
  perplexity.quantize.eval_texts = {dir + "/tokens.txt"};
  EXPECT_FALSE(RunCommand(perplexity, &out).ok());
}

TEST(QuantctlTest, UsageErrorsNameTheProblem) {
  std::string out;
  QuantctlOptions options;
  EXPECT_EQ(RunCommand(options, &out).code(),
            absl::StatusCode::kInvalidArgument);
  options.command = "frobnicate";
  absl::Status status = RunCommand(options, &out);
  EXPECT_NE(status.message().find("unknown command 'frobnicate'"),
            std::string::npos);
  options.command = "convert";
  options.out = "/tmp/x.gguf";
  status = RunCommand(options, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("--model"), std::string::npos);
  options.model = "/tmp";
  options.type = "q9_9";
  status = RunCommand(options, &out);
  EXPECT_NE(status.message().find("q9_9"), std::string::npos) << status;
  options.command = "inspect";
  EXPECT_EQ(RunCommand(options, &out).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quant
