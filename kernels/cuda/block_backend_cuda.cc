#include "kernels/cuda/block_backend_cuda.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "kernels/cuda/awq_cuda.h"
#include "kernels/cuda/forward_cuda.h"
#include "kernels/cuda/gptq_cuda.h"
#include "kernels/cuda/hessian_cuda.h"

namespace quant::cuda {
namespace {

constexpr int kInputs = 4;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

DeviceLinear& DeviceBlockLinear(DeviceBlockWeights& block, int index) {
  DeviceLinear* linears[] = {&block.q,    &block.k,  &block.v,   &block.o,
                             &block.gate, &block.up, &block.down};
  return *linears[index];
}

// One block task on the device, or one of data-parallel calibration's
// pieces (a stage's statistics over some sequences; a stage's solves).
class DeviceBlockQuantizer {
 public:
  // `forward` may be null for the solves alone (SolveStage).
  DeviceBlockQuantizer(const CudaContext& context, const LlamaForward* forward,
                       const BlockRecipe& recipe, int64_t sequences,
                       int64_t seq_len, const float* hidden,
                       const DecoderBlockWeights* fp_block)
      : context_(context),
        forward_(forward),
        recipe_(recipe),
        sequences_(sequences),
        seq_len_(seq_len),
        per_pass_(std::max<int64_t>(1, recipe.sequences_per_pass)),
        hidden_(hidden),
        fp_block_(fp_block) {}

  // The block task: `started` quantized on the activations, whose
  // successors (the quantized block's outputs) land in `outputs`.
  absl::StatusOr<BlockResult> Run(BlockResult started, float* outputs) {
    const auto start = std::chrono::steady_clock::now();
    last_mark_ = start;
    result_ = std::move(started);
    RETURN_IF_ERROR(UploadInputs(result_.weights));
    const int64_t dim = forward_->spec().hidden_size;
    const int64_t tokens = sequences_ * seq_len_;
    switch (recipe_.method) {
      case QuantMethod::kRtn:
      case QuantMethod::kGptq:
        RETURN_IF_ERROR(RunStaged());
        break;
      case QuantMethod::kAwq:
        RETURN_IF_ERROR(RunAwq());
        break;
    }
    if (fp_block_ != nullptr) {  // AWQ's FP inputs: the next block's too.
      ASSIGN_OR_RETURN(block_, UploadBlock(context_, *fp_block_));
      RETURN_IF_ERROR(Mark("inputs up"));
    }
    if (sequences_ > 0) {
      // The quantized block's outputs, in place, then home.
      for (int64_t first = 0; first < sequences_; first += per_pass_) {
        const int64_t count = std::min(per_pass_, sequences_ - first);
        RETURN_IF_ERROR(cuda_forward_->ForwardBlock(
            block_, count, seq_len_,
            hidden_d_.as<float>() + first * seq_len_ * dim));
      }
      RETURN_IF_ERROR(Mark("final forward"));
      RETURN_IF_ERROR(CopyToHost(context_, outputs, hidden_d_.as<void>(),
                                 tokens * dim * 4, "the block's outputs"));
      RETURN_IF_ERROR(Mark("outputs down"));
    }
    result_.seconds = SecondsSince(start);
    return std::move(result_);
  }

  // CaptureStageStatistics: `weights` run over the sequences into the
  // statistics of the inputs `linears` read, which come back to the host.
  absl::StatusOr<BlockStatistics> CaptureStatistics(
      const DecoderBlockWeights& weights, const std::vector<int>& linears) {
    last_mark_ = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(UploadInputs(weights));
    ASSIGN_OR_RETURN(auto sums, CaptureSums(Wanted(linears)));
    BlockStatistics statistics;
    for (int i = 0; i < kInputs; ++i) {
      if (!sums[i]) continue;
      std::vector<double> sum_xxt, sum_abs;
      RETURN_IF_ERROR(sums[i]->CopySumsToHost(&sum_xxt, &sum_abs));
      ASSIGN_OR_RETURN(
          HessianAccumulator host,
          HessianAccumulator::FromSums(sums[i]->samples(), std::move(sum_xxt),
                                       std::move(sum_abs)));
      statistics[i].emplace(std::move(host));
    }
    RETURN_IF_ERROR(Mark("statistics to the host"));
    return statistics;
  }

  // SolveStage: `linears` solved into `partial` on `statistics` (every
  // shard's, merged). The quantized weights come back to the host only.
  absl::Status SolveStage(const std::vector<int>& linears,
                          const BlockStatistics& statistics,
                          BlockResult& partial) {
    last_mark_ = std::chrono::steady_clock::now();
    result_ = std::move(partial);
    const absl::Status solved = SolveOnStatistics(linears, statistics);
    partial = std::move(result_);
    return solved;
  }

  // Wall seconds by phase, in the order the phases first ran.
  const std::vector<std::pair<std::string, double>>& phases() const {
    return phases_;
  }

 private:
  // Ends a phase: waits for the device and charges the time since the last
  // mark to `phase` (the bench's breakdown; a synchronize per phase costs
  // microseconds against phases of milliseconds or more).
  absl::Status Mark(absl::string_view phase) {
    RETURN_IF_ERROR(context_.Synchronize(phase));
    const auto now = std::chrono::steady_clock::now();
    const double seconds =
        std::chrono::duration<double>(now - last_mark_).count();
    last_mark_ = now;
    auto found = std::find_if(phases_.begin(), phases_.end(),
                              [&](const auto& p) { return p.first == phase; });
    if (found == phases_.end()) {
      phases_.emplace_back(std::string(phase), seconds);
    } else {
      found->second += seconds;
    }
    return absl::OkStatus();
  }

  bool StaysFp(int linear) const { return recipe_.keep_fp[linear].has_value(); }

  // The block and the calibration activations on the device.
  absl::Status UploadInputs(const DecoderBlockWeights& weights) {
    ASSIGN_OR_RETURN(cuda_forward_, CudaForward::Create(context_, *forward_));
    ASSIGN_OR_RETURN(block_, UploadBlock(context_, weights));
    const int64_t bytes =
        sequences_ * seq_len_ * forward_->spec().hidden_size * 4;
    if (bytes > 0) {
      ASSIGN_OR_RETURN(hidden_d_,
                       DeviceBuffer::Allocate(context_, bytes,
                                              "the calibration activations"));
      RETURN_IF_ERROR(CopyToDevice(context_, hidden_d_.as<void>(), hidden_,
                                   bytes, "the calibration activations"));
    }
    return Mark("inputs up");
  }

  int64_t InputWidth(int input) const {
    const int reader = input == static_cast<int>(BlockInput::kAttentionOutput)
                           ? 3
                       : input == static_cast<int>(BlockInput::kMlpOutput) ? 6
                                                                           : 0;
    return BlockLinearShape(forward_->spec(), reader).cols;
  }

  // The block inputs `linears` read.
  static std::array<bool, kInputs> Wanted(const std::vector<int>& linears) {
    std::array<bool, kInputs> wanted = {false, false, false, false};
    for (int i : linears) wanted[static_cast<int>(LinearInput(i))] = true;
    return wanted;
  }

  // Runs the block (as quantized so far) over every sequence into fresh
  // Hessians of the wanted inputs; the activations stay as they are.
  absl::Status Capture(std::array<bool, kInputs> wanted) {
    ASSIGN_OR_RETURN(auto sums, CaptureSums(wanted));
    for (int i = 0; i < kInputs; ++i) {
      if (!wanted[i]) continue;
      factors_.erase(i);
      if (awq_keep_ > 0) {
        ASSIGN_OR_RETURN(x_mean_[i], sums[i]->MeanAbs());
      }
      const int64_t n = InputWidth(i);
      ASSIGN_OR_RETURN(hessians_[i],
                       DeviceBuffer::Allocate(context_, n * n * 8,
                                              "a block input's Hessian"));
      RETURN_IF_ERROR(sums[i]->Hessian(hessians_[i].as<double>()));
    }
    return Mark("Hessians");
  }

  // Capture's forwards and sums (and AWQ's kept inputs).
  absl::StatusOr<std::array<std::optional<DeviceHessian>, kInputs>> CaptureSums(
      std::array<bool, kInputs> wanted) {
    int last = -1;
    std::array<std::optional<DeviceHessian>, kInputs> sums;
    for (int i = 0; i < kInputs; ++i) {
      if (!wanted[i]) continue;
      last = i;
      ASSIGN_OR_RETURN(DeviceHessian sum,
                       DeviceHessian::Create(context_, InputWidth(i)));
      sums[i].emplace(std::move(sum));
    }
    if (last < 0) return sums;
    const int64_t dim = forward_->spec().hidden_size;
    const int64_t pass_floats =
        std::min(per_pass_, sequences_) * seq_len_ * dim;
    ASSIGN_OR_RETURN(DeviceBuffer chunk,
                     DeviceBuffer::Allocate(context_, pass_floats * 4,
                                            "one pass of activations"));
    const int64_t sampled =
        awq_step_ > 0 ? CountMultiples(sequences_ * seq_len_, awq_step_) : 0;
    for (int i = 0; i < kInputs; ++i) {
      if (!wanted[i] || awq_keep_ == 0) continue;
      const int64_t row_bytes = InputWidth(i) * 2;
      ASSIGN_OR_RETURN(kept_[i], DeviceBuffer::Allocate(
                                     context_, awq_keep_ * seq_len_ * row_bytes,
                                     "AWQ's search inputs"));
      ASSIGN_OR_RETURN(sampled_[i],
                       DeviceBuffer::Allocate(context_, sampled * row_bytes,
                                              "AWQ's clipping inputs"));
    }
    int64_t first = 0, sampled_so_far = 0;
    const DeviceInputObserver observer =
        [&](BlockInput input, const uint16_t* x, int64_t tokens,
            int64_t width) -> absl::StatusOr<bool> {
      const int i = static_cast<int>(input);
      if (wanted[i]) {
        if (width != sums[i]->columns()) {
          return absl::InternalError("block input of an unexpected width");
        }
        RETURN_IF_ERROR(Mark("capture forwards"));
        RETURN_IF_ERROR(sums[i]->AddBf16(x, tokens));
        RETURN_IF_ERROR(Mark("Hessians"));
        if (awq_keep_ > 0)
          RETURN_IF_ERROR(
              KeepForAwq(i, x, first, tokens, width, sampled_so_far));
      }
      return i != last;
    };
    for (first = 0; first < sequences_; first += per_pass_) {
      const int64_t count = std::min(per_pass_, sequences_ - first);
      RETURN_IF_ERROR(
          CopyOnDevice(context_, chunk.as<void>(),
                       hidden_d_.as<float>() + first * seq_len_ * dim,
                       count * seq_len_ * dim * 4, "one pass of activations"));
      RETURN_IF_ERROR(cuda_forward_->ForwardBlock(block_, count, seq_len_,
                                                  chunk.as<float>(), observer));
      if (awq_step_ > 0) {
        sampled_so_far = CountMultiples((first + count) * seq_len_, awq_step_);
      }
    }
    RETURN_IF_ERROR(Mark("Hessians"));
    return sums;
  }

  const double* HessianOf(int linear) const {
    const DeviceBuffer& h = hessians_[static_cast<int>(LinearInput(linear))];
    return h.bytes() > 0 ? h.as<double>() : nullptr;
  }

  // Records the solution of linear i (whose original weights are in
  // original_d_) and makes the block compute with it. With
  // `dequantized_on_device`, the solver left its weights, scale * (q -
  // zero), in dequantized_d_; else they are computed here.
  absl::Status Install(int i, QuantizedLinear quantized,
                       std::chrono::steady_clock::time_point start,
                       bool dequantized_on_device) {
    LinearWeights& linear = BlockLinear(result_.weights, i);
    const int64_t n = linear.rows * linear.cols;
    if (dequantized_on_device) {
      linear.weight.resize(static_cast<size_t>(n));
      RETURN_IF_ERROR(CopyToHost(context_, linear.weight.data(),
                                 dequantized_d_.as<void>(), n * 4,
                                 "the quantized weights"));
    } else {
      linear.weight = quantized.Dequantize();
      RETURN_IF_ERROR(CopyToDevice(context_, dequantized_d_.as<void>(),
                                   linear.weight.data(), n * 4,
                                   "the quantized weights"));
    }
    RETURN_IF_ERROR(Mark("quantized weights to the host"));
    if (cuda_forward_ != nullptr) {  // The block computes on the device.
      RETURN_IF_ERROR(SetLinearWeight(context_, dequantized_d_.as<float>(),
                                      DeviceBlockLinear(block_, i)));
      RETURN_IF_ERROR(Mark("install"));
    }
    LinearReport& report = result_.reports[i];
    const double* h = HessianOf(i);
    if (h == nullptr) {
      report.proxy_loss = report.relative_output_error = std::nan("");
    } else {
      ASSIGN_OR_RETURN(
          const HessianQuadratics forms,
          ComputeHessianQuadratics(context_, original_d_.as<float>(),
                                   dequantized_d_.as<float>(), linear.rows,
                                   linear.cols, h));
      report.proxy_loss = forms.error / 2;
      report.relative_output_error =
          forms.signal > 0
              ? std::sqrt(std::max(0.0, forms.error) / forms.signal)
              : 0;
      ASSIGN_OR_RETURN(const std::vector<double> diagonal,
                       HessianDiagonal(context_, h, linear.cols));
      result_.importance[i].assign(diagonal.begin(), diagonal.end());
      RETURN_IF_ERROR(Mark("reports"));
    }
    result_.quantized[i] = std::move(quantized);
    report.seconds = SecondsSince(start);
    return absl::OkStatus();
  }

  // Puts linear i's original weights on the device (original_d_), with
  // room for their quantized values (dequantized_d_).
  absl::Status UploadOriginal(int i) {
    const LinearWeights& linear = BlockLinear(result_.weights, i);
    const int64_t bytes = linear.rows * linear.cols * 4;
    if (original_d_.bytes() < bytes) {
      original_d_ = DeviceBuffer();
      dequantized_d_ = DeviceBuffer();
      ASSIGN_OR_RETURN(
          original_d_,
          DeviceBuffer::Allocate(context_, bytes, "a linear's FP32 weights"));
      ASSIGN_OR_RETURN(dequantized_d_,
                       DeviceBuffer::Allocate(context_, bytes,
                                              "a linear's quantized weights"));
    }
    RETURN_IF_ERROR(CopyToDevice(context_, original_d_.as<void>(),
                                 linear.weight.data(), bytes,
                                 "a linear's FP32 weights"));
    return Mark("weights up");
  }

  // The GGUF grids' solutions come back on the host; the others leave their
  // weights in dequantized_d_.
  absl::StatusOr<GptqResult> SolveGptq(int i, const GptqOptions& options) {
    const LinearWeights& linear = BlockLinear(result_.weights, i);
    const int input = static_cast<int>(LinearInput(i));
    auto factor = factors_.find(input);
    if (factor == factors_.end()) {
      ASSIGN_OR_RETURN(
          GptqFactor made,
          FactorGptqHessian(context_, HessianOf(i), linear.cols, options));
      factor = factors_.emplace(input, std::move(made)).first;
      RETURN_IF_ERROR(Mark("factor"));
    }
    if (recipe_.gguf_grid[i].has_value()) {
      ASSIGN_OR_RETURN(const std::vector<double> diagonal,
                       HessianDiagonal(context_, HessianOf(i), linear.cols));
      ASSIGN_OR_RETURN(
          GptqResult solved,
          GptqSolveGgufOnDevice(
              context_, factor->second, original_d_.as<float>(), linear.rows,
              *recipe_.gguf_grid[i],
              std::vector<float>(diagonal.begin(), diagonal.end()), options));
      RETURN_IF_ERROR(Mark("solve"));
      return solved;
    }
    ASSIGN_OR_RETURN(
        const DeviceGptqResult solved,
        GptqSolveOnDevice(context_, factor->second, original_d_.as<float>(),
                          linear.rows, options, dequantized_d_.as<float>()));
    RETURN_IF_ERROR(Mark("solve"));
    ASSIGN_OR_RETURN(GptqResult downloaded, solved.Download(context_));
    RETURN_IF_ERROR(Mark("solution to the host"));
    return downloaded;
  }

  // GPTQ and RTN: each stage's inputs captured, its linears solved.
  absl::Status RunStaged() {
    for (const std::vector<int>& stage : CalibrationStages(recipe_)) {
      if (stage.empty()) continue;
      if (sequences_ > 0) RETURN_IF_ERROR(Capture(Wanted(stage)));
      for (int i : stage) RETURN_IF_ERROR(SolveLinear(i));
    }
    return absl::OkStatus();
  }

  // Linear i solved on the Hessian of its input (none: RTN without data).
  absl::Status SolveLinear(int i) {
    const auto start = std::chrono::steady_clock::now();
    const WeightFormat& f = recipe_.formats[i];
    const LinearWeights& linear = BlockLinear(result_.weights, i);
    RETURN_IF_ERROR(UploadOriginal(i));
    if (recipe_.method == QuantMethod::kRtn) {
      ASSIGN_OR_RETURN(
          const DeviceGptqResult solved,
          RtnQuantizeOnDevice(context_, original_d_.as<float>(), linear.rows,
                              linear.cols, f.bits, f.group_size, f.sym,
                              recipe_.gptq.mse));
      ASSIGN_OR_RETURN(GptqResult downloaded, solved.Download(context_));
      return Install(i, std::move(downloaded.quantized), start,
                     /*dequantized_on_device=*/false);
    }
    GptqOptions options = recipe_.gptq;
    options.bits = f.bits;
    options.group_size = f.group_size;
    options.sym = f.sym;
    absl::StatusOr<GptqResult> solved = SolveGptq(i, options);
    if (!solved.ok()) {
      return absl::Status(
          solved.status().code(),
          absl::StrCat(kBlockLinearNames[i], ": ", solved.status().message()));
    }
    result_.reports[i].damp_percent = solved->damp_percent_used;
    return Install(i, std::move(solved->quantized), start,
                   !recipe_.gguf_grid[i].has_value());
  }

  // SolveStage's work on result_: the Hessians of `statistics` up, checked
  // against the linears reading them as the CPU engine checks them, then
  // each linear solved.
  absl::Status SolveOnStatistics(const std::vector<int>& linears,
                                 const BlockStatistics& statistics) {
    for (int i : linears) {
      const int input = static_cast<int>(LinearInput(i));
      const int64_t cols = BlockLinear(result_.weights, i).cols;
      if (!statistics[input]) {
        if (recipe_.method == QuantMethod::kRtn) continue;
        return absl::InvalidArgumentError(
            absl::StrCat(kBlockLinearNames[i], ": GPTQ without statistics"));
      }
      if (statistics[input]->columns() != cols) {
        return absl::InvalidArgumentError(absl::StrCat(
            kBlockLinearNames[i], ": statistics of ",
            statistics[input]->columns(), " columns for ", cols, " inputs"));
      }
      if (hessians_[input].bytes() > 0) continue;
      const std::vector<double> hessian = statistics[input]->Hessian();
      ASSIGN_OR_RETURN(hessians_[input],
                       DeviceBuffer::Allocate(context_, cols * cols * 8,
                                              "a block input's Hessian"));
      RETURN_IF_ERROR(CopyToDevice(context_, hessians_[input].as<void>(),
                                   hessian.data(), cols * cols * 8,
                                   "a block input's Hessian"));
    }
    RETURN_IF_ERROR(Mark("Hessians up"));
    for (int i : linears) RETURN_IF_ERROR(SolveLinear(i));
    return absl::OkStatus();
  }

  // Tokens t < end with t % step == 0.
  static int64_t CountMultiples(int64_t end, int64_t step) {
    return (end + step - 1) / step;
  }

  // Keeps input i of the pass starting at sequence `first` for AWQ: its
  // part of the first awq_keep_ sequences, and every awq_step_-th token of
  // the whole calibration set (the pass holds `tokens` of them).
  absl::Status KeepForAwq(int i, const uint16_t* x, int64_t first,
                          int64_t tokens, int64_t width,
                          int64_t sampled_before) {
    const int64_t kept = std::min(tokens / seq_len_, awq_keep_ - first);
    if (kept > 0) {
      RETURN_IF_ERROR(CopyOnDevice(
          context_, kept_[i].as<uint16_t>() + first * seq_len_ * width, x,
          kept * seq_len_ * width * 2, "AWQ's search inputs"));
    }
    const int64_t start = first * seq_len_;
    const int64_t offset = (awq_step_ - start % awq_step_) % awq_step_;
    if (offset >= tokens) return absl::OkStatus();
    return GatherRowsOnDevice(
        context_, x + offset * width, (tokens - 1 - offset) / awq_step_ + 1,
        awq_step_, width, sampled_[i].as<uint16_t>() + sampled_before * width);
  }

  // AWQ's scale search for one group on the block as captured (FP):
  // candidates pseudo-quantized on the device into the block's linears, the
  // group's module run on the kept inputs, its output compared with the FP
  // one. The linears get their FP weights back afterwards.
  absl::StatusOr<AwqScaleSearchResult> SearchScales(const AwqGroup& group) {
    const int input = static_cast<int>(group.input);
    const int64_t width = InputWidth(input);
    const int64_t dim = forward_->spec().hidden_size;
    const int64_t kept_tokens = awq_keep_ * seq_len_;
    std::vector<int> searched;
    for (int i : group.linears) {
      if (!StaysFp(i)) searched.push_back(i);
    }
    const WeightFormat& first_format = recipe_.formats[searched[0]];
    std::vector<DeviceBuffer> originals;
    ASSIGN_OR_RETURN(
        DeviceBuffer sums,
        DeviceBuffer::Allocate(context_, width * 8, "AWQ's weight means"));
    const std::vector<double> zeros(static_cast<size_t>(width), 0.0);
    RETURN_IF_ERROR(CopyToDevice(context_, sums.as<void>(), zeros.data(),
                                 width * 8, "AWQ's weight means"));
    int64_t total_rows = 0, largest = 0;
    for (int i : searched) {
      const LinearWeights& linear = BlockLinear(result_.weights, i);
      const int64_t n = linear.rows * linear.cols;
      ASSIGN_OR_RETURN(
          DeviceBuffer weights,
          DeviceBuffer::Allocate(context_, n * 4, "a linear's FP32 weights"));
      RETURN_IF_ERROR(CopyToDevice(context_, weights.as<void>(),
                                   linear.weight.data(), n * 4,
                                   "a linear's FP32 weights"));
      RETURN_IF_ERROR(AddAwqWeightMeanSums(
          context_, weights.as<float>(), linear.rows, linear.cols,
          first_format.group_size, sums.as<double>()));
      originals.push_back(std::move(weights));
      total_rows += linear.rows;
      largest = std::max(largest, n);
    }
    std::vector<double> w_mean(static_cast<size_t>(width));
    RETURN_IF_ERROR(CopyToHost(context_, w_mean.data(), sums.as<void>(),
                               width * 8, "AWQ's weight means"));
    for (double& m : w_mean) m /= static_cast<double>(total_rows);

    const bool whole_module = group.input == BlockInput::kAttention ||
                              group.input == BlockInput::kMlp;
    const DeviceLinear& only = DeviceBlockLinear(block_, group.linears[0]);
    const int64_t out_width = whole_module ? dim : only.rows;
    const uint16_t* x = kept_[input].as<uint16_t>();
    auto output = [&](float* out) -> absl::Status {
      if (!whole_module) {
        return ApplyLinearOnDevice(context_, only, x, kept_tokens, out);
      }
      for (int64_t s = 0; s < awq_keep_; s += per_pass_) {
        const int64_t count = std::min(per_pass_, awq_keep_ - s);
        const uint16_t* in = x + s * seq_len_ * width;
        float* at = out + s * seq_len_ * dim;
        absl::StatusOr<bool> done =
            group.input == BlockInput::kAttention
                ? cuda_forward_->Attention(block_, count, seq_len_, in, at)
                : cuda_forward_->Mlp(block_, count, seq_len_, in, at);
        RETURN_IF_ERROR(done.status());
      }
      return absl::OkStatus();
    };
    const char* what = "AWQ's module outputs";
    ASSIGN_OR_RETURN(
        DeviceBuffer reference,
        DeviceBuffer::Allocate(context_, kept_tokens * out_width * 4, what));
    ASSIGN_OR_RETURN(
        DeviceBuffer candidate,
        DeviceBuffer::Allocate(context_, kept_tokens * out_width * 4, what));
    ASSIGN_OR_RETURN(DeviceBuffer scales,
                     DeviceBuffer::Allocate(context_, width * 4, what));
    ASSIGN_OR_RETURN(DeviceBuffer replaced,
                     DeviceBuffer::Allocate(context_, largest * 4,
                                            "AWQ's candidate weights"));
    RETURN_IF_ERROR(output(reference.as<float>()));
    const AwqScalesLossFn loss =
        [&](const std::vector<float>& s) -> absl::StatusOr<double> {
      RETURN_IF_ERROR(
          CopyToDevice(context_, scales.as<void>(), s.data(), width * 4, what));
      for (size_t k = 0; k < searched.size(); ++k) {
        const WeightFormat& f = recipe_.formats[searched[k]];
        DeviceLinear& linear = DeviceBlockLinear(block_, searched[k]);
        RETURN_IF_ERROR(AwqScaledCandidateOnDevice(
            context_, originals[k].as<float>(), linear.rows, linear.cols,
            scales.as<float>(), f.bits, f.group_size, !f.sym,
            replaced.as<float>()));
        RETURN_IF_ERROR(
            SetLinearWeight(context_, replaced.as<float>(), linear));
      }
      RETURN_IF_ERROR(output(candidate.as<float>()));
      return MeanSquaredDifferenceOnDevice(context_, candidate.as<float>(),
                                           reference.as<float>(),
                                           kept_tokens * out_width);
    };
    ASSIGN_OR_RETURN(
        AwqScaleSearchResult found,
        SearchAwqScaleGrid(x_mean_[input], w_mean, recipe_.awq, loss));
    for (size_t k = 0; k < searched.size(); ++k) {
      RETURN_IF_ERROR(SetLinearWeight(context_, originals[k].as<float>(),
                                      DeviceBlockLinear(block_, searched[k])));
    }
    // The buffers above are freed on return.
    RETURN_IF_ERROR(context_.Synchronize("AWQ's scale search"));
    return found;
  }

  absl::Status RunAwq() {
    awq_keep_ = std::min(sequences_, recipe_.awq.search_sequences);
    awq_step_ = PlanAwqClip(sequences_ * seq_len_, recipe_.awq).step;
    RETURN_IF_ERROR(Capture({true, true, true, true}));
    DecoderBlockWeights& block = result_.weights;
    const std::vector<AwqGroup> groups = AwqGroups(block, recipe_);
    std::vector<std::vector<float>> group_scales;
    for (const AwqGroup& group : groups) {
      ASSIGN_OR_RETURN(AwqScaleSearchResult found, SearchScales(group));
      result_.awq_ratios.push_back(found.ratio);
      group_scales.push_back(std::move(found.scales));
    }
    for (DeviceBuffer& kept : kept_) kept = DeviceBuffer();

    // Fold (on the host, shared with the CPU engine); the Hessians and the
    // clipping inputs follow on the device.
    const int64_t sampled = CountMultiples(sequences_ * seq_len_, awq_step_);
    std::array<DeviceBuffer, kInputs> clip_inputs;  // float, as folded.
    std::array<std::vector<float>, kInputs> input_scales;
    for (size_t g = 0; g < groups.size(); ++g) {
      FoldAwqScales(groups[g], group_scales[g], recipe_.norm_dtype, block);
      input_scales[static_cast<int>(groups[g].input)] = group_scales[g];
    }
    RoundKeptLinears(recipe_, block);
    for (int input = 0; input < kInputs; ++input) {
      const int64_t width = InputWidth(input);
      DeviceBuffer s;
      if (!input_scales[input].empty()) {
        ASSIGN_OR_RETURN(
            s, DeviceBuffer::Allocate(context_, width * 4, "AWQ's scales"));
        RETURN_IF_ERROR(CopyToDevice(context_, s.as<void>(),
                                     input_scales[input].data(), width * 4,
                                     "AWQ's scales"));
        RETURN_IF_ERROR(DivideHessianOnDevice(context_, s.as<float>(), width,
                                              hessians_[input].as<double>()));
      }
      ASSIGN_OR_RETURN(clip_inputs[input],
                       DeviceBuffer::Allocate(context_, sampled * width * 4,
                                              "AWQ's clipping inputs"));
      RETURN_IF_ERROR(
          Bf16ToFloatOnDevice(context_, sampled_[input].as<uint16_t>(), sampled,
                              width, s.bytes() > 0 ? s.as<float>() : nullptr,
                              clip_inputs[input].as<float>()));
      RETURN_IF_ERROR(context_.Synchronize("AWQ's clipping inputs"));
      sampled_[input] = DeviceBuffer();
    }
    block_ = DeviceBlockWeights();
    ASSIGN_OR_RETURN(block_, UploadBlock(context_, block));

    DeviceBuffer clipped;
    for (int i = 0; i < kBlockLinears; ++i) {
      if (StaysFp(i)) continue;
      const auto start = std::chrono::steady_clock::now();
      const LinearWeights& linear = BlockLinear(block, i);
      const WeightFormat& f = recipe_.formats[i];
      const int64_t n = linear.rows * linear.cols;
      RETURN_IF_ERROR(UploadOriginal(i));  // As scaled.
      if (clipped.bytes() < n * 4) {
        clipped = DeviceBuffer();
        ASSIGN_OR_RETURN(
            clipped,
            DeviceBuffer::Allocate(context_, n * 4, "AWQ's clipped weights"));
      }
      RETURN_IF_ERROR(CopyOnDevice(context_, clipped.as<void>(),
                                   original_d_.as<void>(), n * 4,
                                   "AWQ's clipped weights"));
      // AutoAWQ leaves q and k (linears 0 and 1) unclipped: their errors
      // pass through softmax.
      if (recipe_.awq.clip && i > 1) {
        const int input = static_cast<int>(LinearInput(i));
        RETURN_IF_ERROR(ClipAwqOnDevice(
            context_, clip_inputs[input].as<float>(), sampled, f, recipe_.awq,
            linear.rows, linear.cols, clipped.as<float>()));
      }
      ASSIGN_OR_RETURN(
          const DeviceGptqResult quantized,
          AwqQuantizeOnDevice(context_, clipped.as<float>(), linear.rows,
                              linear.cols, f.bits, f.group_size, !f.sym,
                              dequantized_d_.as<float>()));
      ASSIGN_OR_RETURN(GptqResult downloaded, quantized.Download(context_));
      RETURN_IF_ERROR(Install(i, std::move(downloaded.quantized), start,
                              /*dequantized_on_device=*/true));
    }
    return absl::OkStatus();
  }

  const CudaContext& context_;
  const LlamaForward* forward_;
  const BlockRecipe& recipe_;
  const int64_t sequences_, seq_len_, per_pass_;
  const float* hidden_;
  const DecoderBlockWeights* fp_block_;  // AWQ with FP inputs, else null.
  BlockResult result_;
  std::chrono::steady_clock::time_point last_mark_;
  std::vector<std::pair<std::string, double>> phases_;
  std::unique_ptr<CudaForward> cuda_forward_;
  DeviceBlockWeights block_;
  DeviceBuffer hidden_d_;  // float [sequences * seq_len, hidden].
  std::array<DeviceBuffer, kInputs> hessians_;  // double [width, width].
  std::map<int, GptqFactor> factors_;           // By block input.
  DeviceBuffer original_d_, dequantized_d_;     // float, the largest linear.
  // AWQ: the first awq_keep_ sequences' inputs and every awq_step_-th
  // token's (bfloat16 [tokens, width]), and mean |x| per input.
  int64_t awq_keep_ = 0, awq_step_ = 0;
  std::array<DeviceBuffer, kInputs> kept_, sampled_;
  std::array<std::vector<double>, kInputs> x_mean_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CudaBlockBackend>> CudaBlockBackend::Create(
    int device) {
  ASSIGN_OR_RETURN(std::unique_ptr<CudaContext> context,
                   CudaContext::Create(device));
  return std::unique_ptr<CudaBlockBackend>(
      new CudaBlockBackend(std::move(context)));
}

ComputeKernel CudaBlockBackend::kernel() const {
  return {"cuda", DescribeDevice(context_->info())};
}

int64_t CudaBlockBackend::device_memory_bytes() const {
  return context_->info().total_bytes;
}

std::string CudaBlockBackend::Unsupported(const BlockRecipe&) const {
  return "";
}

absl::StatusOr<BlockResult> CudaBlockBackend::QuantizeBlock(
    const LlamaForward& forward, DecoderBlockWeights block,
    const BlockRecipe& recipe, int64_t sequences, int64_t seq_len,
    float* hidden) {
  if (recipe.calibration_shards > 1 && recipe.method != QuantMethod::kAwq) {
    // Shard by shard, in the order the recipe fixes: the pieces a
    // data-parallel job runs on its workers.
    last_phases_.clear();
    return QuantizeBlockInStages(*this, forward, std::move(block), recipe,
                                 sequences, seq_len, hidden);
  }
  std::optional<DecoderBlockWeights> fp_block;
  if (recipe.method == QuantMethod::kAwq && recipe.awq.fp_inputs) {
    fp_block = block;
  }
  ASSIGN_OR_RETURN(
      BlockResult started,
      StartBlockResult(std::move(block), recipe, sequences, seq_len));
  RETURN_IF_ERROR(context_->Activate());
  DeviceBlockQuantizer quantizer(*context_, &forward, recipe, sequences,
                                 seq_len, hidden,
                                 fp_block ? &*fp_block : nullptr);
  ASSIGN_OR_RETURN(BlockResult result,
                   quantizer.Run(std::move(started), hidden));
  last_phases_ = quantizer.phases();
  const ComputeKernel what = kernel();
  result.backend = what.backend;
  result.kernel = what.kernel;
  return result;
}

absl::Status CudaBlockBackend::ForwardBlock(const LlamaForward& forward,
                                            const DecoderBlockWeights& block,
                                            int64_t sequences, int64_t seq_len,
                                            int64_t sequences_per_pass,
                                            float* hidden) {
  if (sequences <= 0) return absl::OkStatus();
  RETURN_IF_ERROR(context_->Activate());
  ASSIGN_OR_RETURN(std::unique_ptr<CudaForward> cuda_forward,
                   CudaForward::Create(*context_, forward));
  ASSIGN_OR_RETURN(const DeviceBlockWeights weights,
                   UploadBlock(*context_, block));
  const int64_t dim = forward.spec().hidden_size;
  const int64_t per_pass = std::max<int64_t>(1, sequences_per_pass);
  const int64_t pass_floats = std::min(per_pass, sequences) * seq_len * dim;
  ASSIGN_OR_RETURN(DeviceBuffer chunk,
                   DeviceBuffer::Allocate(*context_, pass_floats * 4,
                                          "one pass of activations"));
  for (int64_t first = 0; first < sequences; first += per_pass) {
    const int64_t count = std::min(per_pass, sequences - first);
    float* at = hidden + first * seq_len * dim;
    const int64_t bytes = count * seq_len * dim * 4;
    RETURN_IF_ERROR(CopyToDevice(*context_, chunk.as<void>(), at, bytes,
                                 "one pass of activations"));
    RETURN_IF_ERROR(
        cuda_forward->ForwardBlock(weights, count, seq_len, chunk.as<float>()));
    RETURN_IF_ERROR(CopyToHost(*context_, at, chunk.as<void>(), bytes,
                               "one pass of the block's outputs"));
  }
  return absl::OkStatus();
}

absl::StatusOr<BlockStatistics> CudaBlockBackend::CaptureStageStatistics(
    const LlamaForward& forward, const DecoderBlockWeights& weights,
    const BlockRecipe& recipe, int stage, int64_t sequences, int64_t seq_len,
    const float* hidden) {
  ASSIGN_OR_RETURN(const std::vector<int> linears,
                   CalibrationStage(recipe, stage));
  if (sequences <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("stage ", stage, ": no calibration sequences to capture"));
  }
  RETURN_IF_ERROR(context_->Activate());
  DeviceBlockQuantizer quantizer(*context_, &forward, recipe, sequences,
                                 seq_len, hidden, nullptr);
  ASSIGN_OR_RETURN(BlockStatistics statistics,
                   quantizer.CaptureStatistics(weights, linears));
  last_phases_ = quantizer.phases();
  return statistics;
}

absl::Status CudaBlockBackend::SolveStage(const BlockRecipe& recipe, int stage,
                                          const BlockStatistics& statistics,
                                          BlockResult& partial) {
  ASSIGN_OR_RETURN(const std::vector<int> linears,
                   CalibrationStage(recipe, stage));
  RETURN_IF_ERROR(context_->Activate());
  DeviceBlockQuantizer quantizer(*context_, nullptr, recipe, 0, 0, nullptr,
                                 nullptr);
  RETURN_IF_ERROR(quantizer.SolveStage(linears, statistics, partial));
  last_phases_ = quantizer.phases();
  return absl::OkStatus();
}

void RegisterCudaBlockBackend() {
  RegisterBlockBackend(
      "cuda", [](int device) -> absl::StatusOr<std::unique_ptr<BlockBackend>> {
        ASSIGN_OR_RETURN(std::unique_ptr<CudaBlockBackend> backend,
                         CudaBlockBackend::Create(device));
        return std::unique_ptr<BlockBackend>(std::move(backend));
      });
}

}  // namespace quant::cuda
