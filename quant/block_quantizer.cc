#include "quant/block_quantizer.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "format/half.h"
#include "kernels/cpu/compute_kernel.h"
#include "quant/hessian.h"

namespace quant {
namespace {

constexpr int kQ = 0, kK = 1, kV = 2, kO = 3, kGate = 4, kUp = 5, kDown = 6;
constexpr int kInputs = kBlockInputs;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

float RoundTo(SafetensorsDType dtype, float x) {
  switch (dtype) {
    case SafetensorsDType::kBF16:
      return Bf16ToFloat(FloatToBf16(x));
    case SafetensorsDType::kF16:
      return HalfToFloat(FloatToHalf(x));
    default:
      return x;
  }
}

// What one pass over the calibration sequences collects per block input.
struct Capture {
  std::array<std::optional<HessianAccumulator>, kInputs> hessians;
  // The inputs of the first `keep_sequences` sequences, for AWQ's scale
  // search, ...
  int64_t keep_sequences = 0;
  std::array<std::vector<float>, kInputs> kept;
  // ... and every `sample_step`-th token of all sequences, for its clipping
  // search (0: none).
  int64_t sample_step = 0;
  std::array<std::vector<float>, kInputs> sampled;
};

// The width of block input `input`.
int64_t InputWidth(const DecoderBlockWeights& block, int input, int64_t dim) {
  return input == static_cast<int>(BlockInput::kMlpOutput) ? block.down.cols
         : input == static_cast<int>(BlockInput::kAttentionOutput)
             ? block.o.cols
             : dim;
}

// Runs the block over every sequence, feeding the wanted inputs to their
// accumulators; the pass stops after the last wanted input. `hidden` is
// left unchanged.
absl::Status CaptureInputs(const LlamaForward& forward,
                           const DecoderBlockWeights& block,
                           const float* hidden, int64_t sequences,
                           int64_t seq_len, int64_t per_pass,
                           std::array<bool, kInputs> wanted, Capture& capture) {
  const int64_t dim = forward.spec().hidden_size;
  int last = -1;
  for (int i = 0; i < kInputs; ++i) {
    if (!wanted[i]) continue;
    last = i;
    if (!capture.hessians[i]) {
      capture.hessians[i].emplace(InputWidth(block, i, dim));
    }
  }
  if (last < 0) return absl::OkStatus();
  std::vector<float> chunk;
  for (int64_t first = 0; first < sequences; first += per_pass) {
    const int64_t count = std::min(per_pass, sequences - first);
    chunk.assign(hidden + first * seq_len * dim,
                 hidden + (first + count) * seq_len * dim);
    const int64_t kept =
        std::max<int64_t>(0, std::min(count, capture.keep_sequences - first));
    const BlockInputObserver observer = [&](BlockInput input, const float* x,
                                            int64_t tokens, int64_t width) {
      const int i = static_cast<int>(input);
      if (wanted[i]) {
        capture.hessians[i]->Add(x, tokens);
        if (kept > 0) {
          capture.kept[i].insert(capture.kept[i].end(), x,
                                 x + kept * seq_len * width);
        }
        const int64_t step = capture.sample_step;
        for (int64_t t = step > 0 ? (step - first * seq_len % step) % step
                                  : tokens;
             t < tokens; t += step) {
          capture.sampled[i].insert(capture.sampled[i].end(), x + t * width,
                                    x + (t + 1) * width);
        }
      }
      return i != last;
    };
    RETURN_IF_ERROR(
        forward.ForwardBlock(block, count, seq_len, chunk.data(), observer));
  }
  return absl::OkStatus();
}

// Sum over elements of (A H) .* A for A [rows, cols], H [cols, cols]:
// tr(A H A^T).
double HessianQuadratic(const std::vector<double>& a, int64_t rows,
                        int64_t cols, const std::vector<double>& h) {
  std::vector<double> ah(a.size());
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows),
              static_cast<int>(cols), static_cast<int>(cols), 1.0, a.data(),
              static_cast<int>(cols), h.data(), static_cast<int>(cols), 0.0,
              ah.data(), static_cast<int>(cols));
  double total = 0;
  for (size_t i = 0; i < a.size(); ++i) total += ah[i] * a[i];
  return total;
}

void ReportErrors(const std::vector<float>& original,
                  const std::vector<float>& quantized, int64_t rows,
                  int64_t cols, const std::vector<double>* hessian,
                  LinearReport& report) {
  if (hessian == nullptr) {
    report.proxy_loss = report.relative_output_error =
        std::numeric_limits<double>::quiet_NaN();
    return;
  }
  std::vector<double> w(original.begin(), original.end());
  std::vector<double> dw(w.size());
  for (size_t i = 0; i < w.size(); ++i) dw[i] = quantized[i] - w[i];
  const double error = HessianQuadratic(dw, rows, cols, *hessian);
  const double signal = HessianQuadratic(w, rows, cols, *hessian);
  report.proxy_loss = error / 2;
  report.relative_output_error =
      signal > 0 ? std::sqrt(std::max(0.0, error) / signal) : 0;
}

std::vector<float> Diagonal(const std::vector<double>& h, int64_t n) {
  std::vector<float> d(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(h[i * n + i]);
  return d;
}

// H of inputs divided by s: H_ij / (s_i s_j).
void ScaleHessian(const std::vector<float>& s, std::vector<double>& h) {
  const int64_t n = static_cast<int64_t>(s.size());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) h[i * n + j] /= double{s[i]} * s[j];
  }
}

double MeanSquaredDifference(const std::vector<float>& a,
                             const std::vector<float>& b) {
  double total = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double{a[i]} - b[i];
    total += d * d;
  }
  return a.empty() ? 0 : total / static_cast<double>(a.size());
}

// Records the solution of linear i and makes the block compute with it;
// `hessian` (null without calibration) gives its report and importance.
void InstallLinear(int i, QuantizedLinear quantized,
                   const std::vector<float>& original,
                   const std::vector<double>* hessian,
                   std::chrono::steady_clock::time_point start,
                   BlockResult& result) {
  LinearWeights& linear = BlockLinear(result.weights, i);
  linear.weight = quantized.Dequantize();
  ReportErrors(original, linear.weight, linear.rows, linear.cols, hessian,
               result.reports[i]);
  if (hessian != nullptr)
    result.importance[i] = Diagonal(*hessian, linear.cols);
  result.quantized[i] = std::move(quantized);
  result.reports[i].seconds = SecondsSince(start);
}

class BlockQuantizer {
 public:
  // `fp_block` is the block before StartBlockResult, for AWQ's FP outputs.
  BlockQuantizer(const LlamaForward& forward, BlockResult started,
                 DecoderBlockWeights fp_block, const BlockRecipe& recipe,
                 int64_t sequences, int64_t seq_len, float* hidden)
      : forward_(forward),
        recipe_(recipe),
        sequences_(sequences),
        seq_len_(seq_len),
        per_pass_(std::max<int64_t>(1, recipe.sequences_per_pass)),
        hidden_(hidden),
        fp_block_(std::move(fp_block)),
        result_(std::move(started)) {}

  absl::StatusOr<BlockResult> Run() {
    const auto start = std::chrono::steady_clock::now();
    const ComputeKernel kernel = CpuComputeKernel();
    result_.backend = kernel.backend;
    result_.kernel = kernel.kernel;
    switch (recipe_.method) {
      case QuantMethod::kRtn:
      case QuantMethod::kGptq:
        RETURN_IF_ERROR(RunStaged());
        break;
      case QuantMethod::kAwq:
        RETURN_IF_ERROR(RunAwq());
        break;
    }
    if (sequences_ > 0) {
      const bool fp_outputs =
          recipe_.method == QuantMethod::kAwq && recipe_.awq.fp_inputs;
      RETURN_IF_ERROR(ForwardBlockInPasses(
          forward_, fp_outputs ? fp_block_ : result_.weights, sequences_,
          seq_len_, per_pass_, hidden_));
    }
    result_.seconds = SecondsSince(start);
    return std::move(result_);
  }

 private:
  absl::Status CaptureStage(std::array<bool, kInputs> wanted, int64_t keep = 0,
                            int64_t sample_step = 0) {
    capture_.keep_sequences = keep;
    capture_.sample_step = sample_step;
    return CaptureInputs(forward_, result_.weights, hidden_, sequences_,
                         seq_len_, per_pass_, wanted, capture_);
  }

  bool StaysFp(int linear) const { return recipe_.keep_fp[linear].has_value(); }

  const std::vector<double>* HessianOf(int linear) {
    const int input = static_cast<int>(LinearInput(linear));
    if (!capture_.hessians[input]) return nullptr;
    auto it = hessian_cache_.find(input);
    if (it == hessian_cache_.end()) {
      it = hessian_cache_.emplace(input, capture_.hessians[input]->Hessian())
               .first;
    }
    return &it->second;
  }

  void Install(int i, QuantizedLinear quantized,
               const std::vector<float>& original,
               std::chrono::steady_clock::time_point start) {
    InstallLinear(i, std::move(quantized), original, HessianOf(i), start,
                  result_);
  }

  // GPTQ and RTN: each stage's statistics captured shard by shard (merged
  // in shard order), then its linears solved.
  absl::Status RunStaged() {
    const int64_t dim = forward_.spec().hidden_size;
    return RunCalibrationStages(
        recipe_, sequences_,
        [&](int stage, int, const SequenceRange& shard) {
          return CaptureStageStatistics(forward_, result_.weights, recipe_,
                                        stage, shard.count, seq_len_,
                                        hidden_ + shard.first * seq_len_ * dim);
        },
        [&](int stage, const BlockStatistics& statistics) {
          return SolveStage(recipe_, stage, statistics, result_);
        });
  }

  absl::Status RunAwq() {
    const int64_t keep = std::min(sequences_, recipe_.awq.search_sequences);
    // The clipping search sees tokens from every sequence, as AutoAWQ's.
    const int64_t sample_step =
        PlanAwqClip(sequences_ * seq_len_, recipe_.awq).step;
    RETURN_IF_ERROR(CaptureStage({true, true, true, true}, keep, sample_step));
    DecoderBlockWeights& block = result_.weights;
    const DecoderBlockWeights original = block;
    const int64_t dim = forward_.spec().hidden_size;
    const int64_t kept_tokens = keep * seq_len_;

    const std::vector<AwqGroup> groups = AwqGroups(block, recipe_);
    std::vector<std::vector<float>> group_scales;
    for (const AwqGroup& group : groups) {
      const int input = static_cast<int>(group.input);
      const std::vector<float>& x = capture_.kept[input];
      // The module output the search compares against the FP one.
      auto output = [&](const DecoderBlockWeights& weights)
          -> absl::StatusOr<std::vector<float>> {
        std::vector<float> out;
        switch (group.input) {
          case BlockInput::kAttention: {
            out.resize(static_cast<size_t>(kept_tokens * dim));
            ASSIGN_OR_RETURN(const bool done,
                             forward_.Attention(weights, keep, seq_len_,
                                                x.data(), out.data()));
            (void)done;
            break;
          }
          case BlockInput::kMlp:
            out.resize(static_cast<size_t>(kept_tokens * dim));
            forward_.Mlp(weights, kept_tokens, x.data(), out.data());
            break;
          default: {
            const LinearWeights& linear =
                BlockLinear(weights, group.linears[0]);
            out.resize(static_cast<size_t>(kept_tokens * linear.rows));
            forward_.Linear(linear, x.data(), kept_tokens, out.data());
          }
        }
        return out;
      };
      std::vector<int> searched;
      std::vector<const LinearWeights*> linears;
      std::vector<WeightFormat> formats;
      for (int i : group.linears) {
        if (StaysFp(i)) continue;
        searched.push_back(i);
        linears.push_back(&BlockLinear(original, i));
        formats.push_back(recipe_.formats[i]);
      }
      ASSIGN_OR_RETURN(const std::vector<float> reference, output(original));
      DecoderBlockWeights trial = original;
      const AwqLossFn loss = [&](const std::vector<LinearWeights>& replaced)
          -> absl::StatusOr<double> {
        for (size_t k = 0; k < replaced.size(); ++k) {
          BlockLinear(trial, searched[k]).weight = replaced[k].weight;
        }
        ASSIGN_OR_RETURN(const std::vector<float> out, output(trial));
        return MeanSquaredDifference(out, reference);
      };
      const std::vector<double> x_mean = capture_.hessians[input]->MeanAbs();
      ASSIGN_OR_RETURN(
          const AwqScaleSearchResult found,
          SearchAwqScales(linears, formats, x_mean, recipe_.awq, loss));
      result_.awq_ratios.push_back(found.ratio);
      group_scales.push_back(found.scales);
    }

    // Fold; the captured statistics follow.
    for (size_t g = 0; g < groups.size(); ++g) {
      const std::vector<float>& s = group_scales[g];
      const int input = static_cast<int>(groups[g].input);
      FoldAwqScales(groups[g], s, recipe_.norm_dtype, block);
      const int64_t width = static_cast<int64_t>(s.size());
      for (std::vector<float>* x :
           {&capture_.kept[input], &capture_.sampled[input]}) {
        for (size_t t = 0; t < x->size(); ++t) (*x)[t] /= s[t % width];
      }
      hessian_cache_.emplace(input, capture_.hessians[input]->Hessian());
      ScaleHessian(s, hessian_cache_[input]);
    }
    RoundKeptLinears(recipe_, block);  // As scaled.

    for (int i = 0; i < kBlockLinears; ++i) {
      if (StaysFp(i)) continue;
      const auto start = std::chrono::steady_clock::now();
      LinearWeights& linear = BlockLinear(block, i);
      const WeightFormat& f = recipe_.formats[i];
      const std::vector<float> scaled = linear.weight;
      // AutoAWQ leaves q and k unclipped: their errors pass through softmax.
      if (recipe_.awq.clip && i != kQ && i != kK) {
        const std::vector<float>& x =
            capture_.sampled[static_cast<int>(LinearInput(i))];
        RETURN_IF_ERROR(ClipAwq(x.data(),
                                static_cast<int64_t>(x.size()) / linear.cols, f,
                                recipe_.awq, linear));
      }
      ASSIGN_OR_RETURN(QuantizedLinear q,
                       AwqQuantize(linear.weight.data(), linear.rows,
                                   linear.cols, f.bits, f.group_size, !f.sym));
      Install(i, std::move(q), scaled, start);
    }
    return absl::OkStatus();
  }

  const LlamaForward& forward_;
  const BlockRecipe& recipe_;
  const int64_t sequences_, seq_len_, per_pass_;
  float* hidden_;
  DecoderBlockWeights fp_block_;  // Kept for AWQ's FP outputs.
  BlockResult result_;
  struct Capture capture_;
  std::map<int, std::vector<double>> hessian_cache_;
};

}  // namespace

BlockInput LinearInput(int index) {
  switch (index) {
    case kQ:
    case kK:
    case kV:
      return BlockInput::kAttention;
    case kO:
      return BlockInput::kAttentionOutput;
    case kGate:
    case kUp:
      return BlockInput::kMlp;
    default:
      return BlockInput::kMlpOutput;
  }
}

std::vector<AwqGroup> AwqGroups(const DecoderBlockWeights& block,
                                const BlockRecipe& recipe) {
  std::vector<AwqGroup> groups = {{{kQ, kK, kV}, BlockInput::kAttention}};
  if (block.v.rows == block.o.cols) {  // Not with grouped-query attention.
    groups.push_back({{kO}, BlockInput::kAttentionOutput});
  }
  groups.push_back({{kGate, kUp}, BlockInput::kMlp});
  groups.push_back({{kDown}, BlockInput::kMlpOutput});
  // A group whose readers all stay in floating point has nothing to
  // protect; in the others a kept reader is scaled with its group (an
  // exact rewrite) but searched as what it is, unquantized.
  groups.erase(std::remove_if(groups.begin(), groups.end(),
                              [&](const AwqGroup& group) {
                                return std::all_of(
                                    group.linears.begin(), group.linears.end(),
                                    [&](int i) {
                                      return recipe.keep_fp[i].has_value();
                                    });
                              }),
               groups.end());
  return groups;
}

void RoundKeptLinears(const BlockRecipe& recipe, DecoderBlockWeights& block) {
  for (int i = 0; i < kBlockLinears; ++i) {
    if (!recipe.keep_fp[i].has_value()) continue;
    for (float& w : BlockLinear(block, i).weight) {
      w = RoundTo(recipe.keep_fp[i]->dtype, w);
    }
  }
}

void FoldAwqScales(const AwqGroup& group, const std::vector<float>& s,
                   SafetensorsDType norm_dtype, DecoderBlockWeights& block) {
  switch (group.input) {
    case BlockInput::kAttention:
    case BlockInput::kMlp: {
      std::vector<float>& norm = group.input == BlockInput::kAttention
                                     ? block.attn_norm
                                     : block.ffn_norm;
      for (size_t c = 0; c < norm.size(); ++c) {
        norm[c] = RoundTo(norm_dtype, norm[c] / s[c]);
      }
      break;
    }
    case BlockInput::kAttentionOutput:
      DivideOutputRows(s, block.v);
      break;
    case BlockInput::kMlpOutput:
      DivideOutputRows(s, block.up);
      break;
  }
  for (int i : group.linears) ScaleInputColumns(s, BlockLinear(block, i));
}

absl::StatusOr<BlockResult> StartBlockResult(DecoderBlockWeights block,
                                             const BlockRecipe& recipe,
                                             int64_t sequences,
                                             int64_t seq_len) {
  if (sequences < 0 || (sequences > 0 && seq_len < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad calibration shape: ", sequences, " sequences of ", seq_len));
  }
  if (sequences == 0 && recipe.method != QuantMethod::kRtn) {
    return absl::InvalidArgumentError(
        absl::StrCat(QuantMethodName(recipe.method),
                     " needs calibration data; only RTN runs without"));
  }
  if (recipe.calibration_shards < 1 ||
      (recipe.calibration_shards > 1 && recipe.method == QuantMethod::kAwq)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calibration_shards ", recipe.calibration_shards,
        ": GPTQ and RTN take one or more, AWQ (whose search reads the whole "
        "calibration set) one"));
  }
  BlockResult result;
  result.weights = std::move(block);
  for (int i = 0; i < kBlockLinears; ++i) {
    LinearReport& report = result.reports[i];
    report.name = std::string(kBlockLinearNames[i]);
    if (recipe.keep_fp[i].has_value()) {
      report.kept_fp = recipe.keep_fp[i]->reason;
      report.proxy_loss = report.relative_output_error = 0;
      continue;
    }
    report.bits = recipe.formats[i].bits;
    report.group_size = recipe.formats[i].group_size;
  }
  RoundKeptLinears(recipe, result.weights);
  return result;
}

LinearWeights& BlockLinear(DecoderBlockWeights& block, int index) {
  LinearWeights* linears[] = {&block.q,    &block.k,  &block.v,   &block.o,
                              &block.gate, &block.up, &block.down};
  return *linears[index];
}

const LinearWeights& BlockLinear(const DecoderBlockWeights& block, int index) {
  return BlockLinear(const_cast<DecoderBlockWeights&>(block), index);
}

const std::vector<std::vector<int>>& TrueSequentialStages() {
  static const auto* const stages = new std::vector<std::vector<int>>{
      {kQ, kK, kV}, {kO}, {kGate, kUp}, {kDown}};
  return *stages;
}

LinearShape BlockLinearShape(const ModelSpec& spec, int index) {
  const int64_t dim = spec.hidden_size, inter = spec.intermediate_size;
  const int64_t q = spec.num_heads * spec.head_dim;
  const int64_t kv = spec.num_kv_heads * spec.head_dim;
  switch (index) {
    case kQ:
      return {q, dim};
    case kK:
    case kV:
      return {kv, dim};
    case kO:
      return {dim, q};
    case kGate:
    case kUp:
      return {inter, dim};
    default:
      return {dim, inter};
  }
}

absl::StatusOr<QuantMethod> ParseQuantMethod(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "rtn") return QuantMethod::kRtn;
  if (lower == "gptq") return QuantMethod::kGptq;
  if (lower == "awq") return QuantMethod::kAwq;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown quantization method \"", name, "\" (rtn, gptq or awq)"));
}

absl::string_view QuantMethodName(QuantMethod method) {
  switch (method) {
    case QuantMethod::kRtn:
      return "rtn";
    case QuantMethod::kGptq:
      return "gptq";
    case QuantMethod::kAwq:
      return "awq";
  }
  return "?";
}

absl::Status ForwardBlockInPasses(const LlamaForward& forward,
                                  const DecoderBlockWeights& block,
                                  int64_t sequences, int64_t seq_len,
                                  int64_t sequences_per_pass, float* hidden) {
  const int64_t dim = forward.spec().hidden_size;
  const int64_t per_pass = std::max<int64_t>(1, sequences_per_pass);
  for (int64_t first = 0; first < sequences; first += per_pass) {
    const int64_t count = std::min(per_pass, sequences - first);
    RETURN_IF_ERROR(forward.ForwardBlock(block, count, seq_len,
                                         hidden + first * seq_len * dim));
  }
  return absl::OkStatus();
}

std::vector<std::vector<int>> CalibrationStages(const BlockRecipe& recipe) {
  std::vector<std::vector<int>> stages;
  if (recipe.method == QuantMethod::kGptq && recipe.true_sequential) {
    stages = TrueSequentialStages();
  } else if (recipe.method != QuantMethod::kAwq) {
    stages = {{kQ, kK, kV, kO, kGate, kUp, kDown}};
  }
  for (std::vector<int>& stage : stages) {
    stage.erase(
        std::remove_if(stage.begin(), stage.end(),
                       [&](int i) { return recipe.keep_fp[i].has_value(); }),
        stage.end());
  }
  return stages;
}

absl::StatusOr<std::vector<int>> CalibrationStage(const BlockRecipe& recipe,
                                                  int stage) {
  std::vector<std::vector<int>> stages = CalibrationStages(recipe);
  if (stage < 0 || stage >= static_cast<int>(stages.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("no calibration stage ", stage, " in a ",
                     QuantMethodName(recipe.method), " recipe of ",
                     stages.size(), " stages"));
  }
  return std::move(stages[stage]);
}

absl::StatusOr<SequenceRange> CalibrationShard(int64_t sequences,
                                               int64_t sequences_per_pass,
                                               int64_t shards, int64_t shard) {
  const int64_t per_pass = std::max<int64_t>(1, sequences_per_pass);
  const int64_t passes = (sequences + per_pass - 1) / per_pass;
  if (shards < 1 || shards > passes || shard < 0 || shard >= shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration shard ", shard, " of ", shards, ": ",
                     sequences, " sequences make ", passes, " passes of ",
                     per_pass, ", and every shard needs at least one pass"));
  }
  // Whole passes, so that every product has the shape it has unsharded.
  const int64_t first_pass = shard * passes / shards;
  const int64_t end_pass = (shard + 1) * passes / shards;
  SequenceRange range;
  range.first = first_pass * per_pass;
  range.count = std::min(end_pass * per_pass, sequences) - range.first;
  return range;
}

absl::StatusOr<BlockStatistics> CaptureStageStatistics(
    const LlamaForward& forward, const DecoderBlockWeights& weights,
    const BlockRecipe& recipe, int stage, int64_t sequences, int64_t seq_len,
    const float* hidden) {
  ASSIGN_OR_RETURN(const std::vector<int> linears,
                   CalibrationStage(recipe, stage));
  std::array<bool, kInputs> wanted = {false, false, false, false};
  for (int i : linears) wanted[static_cast<int>(LinearInput(i))] = true;
  Capture capture;
  RETURN_IF_ERROR(CaptureInputs(forward, weights, hidden, sequences, seq_len,
                                std::max<int64_t>(1, recipe.sequences_per_pass),
                                wanted, capture));
  return std::move(capture.hessians);
}

absl::Status RunCalibrationStages(const BlockRecipe& recipe, int64_t sequences,
                                  const StageCapture& capture,
                                  const StageSolve& solve, int lanes) {
  const int64_t per_pass = std::max<int64_t>(1, recipe.sequences_per_pass);
  const int stages = static_cast<int>(CalibrationStages(recipe).size());
  const int64_t shards = sequences > 0 ? recipe.calibration_shards : 0;
  lanes = std::max(1, lanes);
  for (int stage = 0; stage < stages; ++stage) {
    BlockStatistics total;
    // Rounds of `lanes` shards: captured at once, then merged in order, so
    // that at most `lanes` shards' statistics wait beside the total.
    for (int64_t round = 0; round < shards; round += lanes) {
      const int64_t in_round = std::min<int64_t>(lanes, shards - round);
      std::vector<absl::StatusOr<BlockStatistics>> captured(
          in_round, absl::UnknownError("not captured"));
      // Each lane on a thread of its own: shard round + i in lane i only.
      ParallelForEach(in_round, static_cast<int>(in_round), [&](uint64_t lane) {
        const int64_t k = round + static_cast<int64_t>(lane);
        absl::StatusOr<SequenceRange> range =
            CalibrationShard(sequences, per_pass, recipe.calibration_shards, k);
        captured[lane] = range.ok()
                             ? capture(stage, static_cast<int>(k), *range)
                             : absl::StatusOr<BlockStatistics>(range.status());
      });
      for (int64_t lane = 0; lane < in_round; ++lane) {
        if (!captured[lane].ok()) return captured[lane].status();
        if (round + lane == 0) {
          total = *std::move(captured[lane]);
        } else {
          RETURN_IF_ERROR(MergeStatistics(*captured[lane], total));
        }
        captured[lane] = absl::UnknownError("merged");  // Frees its memory.
      }
    }
    RETURN_IF_ERROR(solve(stage, total));
  }
  return absl::OkStatus();
}

absl::Status MergeStatistics(const BlockStatistics& shard,
                             BlockStatistics& total) {
  for (int i = 0; i < kInputs; ++i) {
    if (shard[i].has_value() != total[i].has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "calibration statistics of different inputs: block input ", i,
          shard[i].has_value() ? " only in the shard" : " only in the total"));
    }
    if (shard[i]) RETURN_IF_ERROR(total[i]->Merge(*shard[i]));
  }
  return absl::OkStatus();
}

absl::Status SolveStage(const BlockRecipe& recipe, int stage,
                        const BlockStatistics& statistics,
                        BlockResult& partial) {
  ASSIGN_OR_RETURN(const std::vector<int> linears,
                   CalibrationStage(recipe, stage));
  std::map<int, std::vector<double>> hessians;  // By block input.
  for (int i : linears) {
    const int input = static_cast<int>(LinearInput(i));
    if (!statistics[input]) continue;
    // Statistics from elsewhere (a worker's upload) must fit the linear.
    const int64_t cols = BlockLinear(partial.weights, i).cols;
    if (statistics[input]->columns() != cols) {
      return absl::InvalidArgumentError(absl::StrCat(
          kBlockLinearNames[i], ": statistics of ",
          statistics[input]->columns(), " columns for ", cols, " inputs"));
    }
    if (!hessians.count(input)) {
      hessians.emplace(input, statistics[input]->Hessian());
    }
  }
  for (int i : linears) {
    const auto start = std::chrono::steady_clock::now();
    const auto h = hessians.find(static_cast<int>(LinearInput(i)));
    const std::vector<double>* hessian =
        h == hessians.end() ? nullptr : &h->second;
    const LinearWeights& linear = BlockLinear(partial.weights, i);
    const WeightFormat& f = recipe.formats[i];
    const std::vector<float> original = linear.weight;
    if (recipe.method == QuantMethod::kRtn) {
      ASSIGN_OR_RETURN(
          QuantizedLinear q,
          RtnQuantize(original.data(), linear.rows, linear.cols, f.bits,
                      f.group_size, f.sym, recipe.gptq.mse));
      InstallLinear(i, std::move(q), original, hessian, start, partial);
      continue;
    }
    if (hessian == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(kBlockLinearNames[i], ": GPTQ without statistics"));
    }
    GptqOptions options = recipe.gptq;
    options.bits = f.bits;
    options.group_size = f.group_size;
    options.sym = f.sym;
    absl::StatusOr<GptqResult> solved =
        recipe.gguf_grid[i].has_value()
            ? GptqQuantizeGguf(original.data(), linear.rows, linear.cols,
                               *hessian, *recipe.gguf_grid[i], options)
            : GptqQuantize(original.data(), linear.rows, linear.cols, *hessian,
                           options);
    if (!solved.ok()) {
      return absl::Status(
          solved.status().code(),
          absl::StrCat(kBlockLinearNames[i], ": ", solved.status().message()));
    }
    partial.reports[i].damp_percent = solved->damp_percent_used;
    InstallLinear(i, std::move(solved->quantized), original, hessian, start,
                  partial);
  }
  return absl::OkStatus();
}

bool LinearSolved(const BlockResult& result, int i) {
  return !result.reports[i].kept_fp.empty() || result.quantized[i].rows > 0;
}

absl::StatusOr<BlockResult> QuantizeBlock(const LlamaForward& forward,
                                          DecoderBlockWeights block,
                                          const BlockRecipe& recipe,
                                          int64_t sequences, int64_t seq_len,
                                          float* hidden) {
  DecoderBlockWeights fp_block;
  if (recipe.method == QuantMethod::kAwq && recipe.awq.fp_inputs) {
    fp_block = block;
  }
  ASSIGN_OR_RETURN(
      BlockResult started,
      StartBlockResult(std::move(block), recipe, sequences, seq_len));
  return BlockQuantizer(forward, std::move(started), std::move(fp_block),
                        recipe, sequences, seq_len, hidden)
      .Run();
}

}  // namespace quant
