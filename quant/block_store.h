// Durable files of a quantization run: a block's result (its integer
// solution, norms, importance and report) and the activations at a block
// boundary, as safetensors written atomically (temp, fsync, rename). The
// activations are stored exactly (F32), so a run resumed from them computes
// bit for bit what an uninterrupted run computes.
#ifndef QUANT_BLOCK_STORE_H_
#define QUANT_BLOCK_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/file.h"
#include "format/safetensors.h"
#include "nlohmann/json.hpp"
#include "quant/block_quantizer.h"

namespace quant {

// Saves of this file are durable (fsynced) unless told kScratch: a
// worker's task outputs are scratch (common/file.h). `digest` (optional):
// the file's raw digest, computed while it is written.
absl::Status SaveBlockResult(const std::string& path, const BlockResult& result,
                             Durability durability = Durability::kDurable,
                             std::string* digest = nullptr);

// One linear of a saved block result.
struct SavedLinear {
  LinearReport report;
  // The levels, or the rows in a GGUF type; empty for a linear kept in
  // floating point.
  QuantizedLinear quantized;
  // rows, cols and bias; weight only for a linear kept in floating point.
  LinearWeights weights;
  std::vector<float> importance;  // Empty without calibration data.
};

// A saved block result read one linear at a time: what writes a 70B
// model's output holds one linear's levels, not a block's (whose weights in
// F32 are 3.4 GB). The file's pages are dropped once copied.
class SavedBlockResult {
 public:
  // Reads the metadata and the norms; errors name the file and what is
  // malformed.
  static absl::StatusOr<std::unique_ptr<SavedBlockResult>> Open(
      const std::string& path);
  ~SavedBlockResult();
  SavedBlockResult(const SavedBlockResult&) = delete;
  SavedBlockResult& operator=(const SavedBlockResult&) = delete;

  // Whether linear `i` is not solved yet (a partial result: Linear(i) is
  // FailedPrecondition).
  bool Pending(int i) const;
  // Linear `i` (kBlockLinearNames order), not dequantized.
  absl::StatusOr<SavedLinear> Linear(int i) const;
  // Linear `i`'s bias alone (empty when it has none).
  absl::StatusOr<std::vector<float>> Bias(int i) const;
  const std::vector<float>& attn_norm() const { return attn_norm_; }
  const std::vector<float>& ffn_norm() const { return ffn_norm_; }
  // BlockReportJson's object.
  const nlohmann::json& report() const { return report_; }
  const std::string& path() const;

 private:
  SavedBlockResult() = default;

  std::unique_ptr<SafetensorsFile> file_;
  nlohmann::json formats_, report_;
  std::vector<float> attn_norm_, ffn_norm_;
};
// Errors name the file and what is missing or malformed.
absl::StatusOr<BlockResult> LoadBlockResult(const std::string& path);
// Opens the saved result of block `layer` (SavedBlockResult::Open of its
// path, with whatever the caller checks first).
using BlockResultOpener =
    std::function<absl::StatusOr<std::unique_ptr<SavedBlockResult>>(int layer)>;

// Whether LoadBlockResult reads `path` (every check, one linear in memory
// at a time, nothing dequantized): how a worker's upload is checked before
// it is committed.
absl::Status CheckBlockResult(const std::string& path);

// A partial result: the stages a data-parallel job has solved so far.
// SaveBlockResult writes the linears not solved yet (LinearSolved) as
// "pending", which LoadBlockResult and CheckBlockResult refuse;
// LoadSolvedLinears fills `partial` (StartBlockResult's) with the solved
// linears and the norms, CheckPartialBlockResult is its checks alone.
absl::Status LoadSolvedLinears(const std::string& path, BlockResult& partial);
absl::Status CheckPartialBlockResult(const std::string& path);

// One calibration shard's statistics (CaptureStageStatistics) stored
// exactly, the sums in float64, so that merged again they are bit for bit
// the statistics merged in memory. Errors name the file and what is wrong.
absl::Status SaveBlockStatistics(const std::string& path,
                                 const BlockStatistics& statistics,
                                 Durability durability = Durability::kDurable);
absl::StatusOr<BlockStatistics> LoadBlockStatistics(const std::string& path);
// Adds the statistics stored at `path` into `total` (empty: they become
// it) without a copy of each shard's sums: a solve holds the merged
// statistics, not every shard's. InvalidArgument when the file holds other
// inputs or widths than `total`.
absl::Status MergeBlockStatisticsFile(const std::string& path,
                                      BlockStatistics& total);
// LoadBlockStatistics' checks of every tensor's dtype and shape, without
// reading the sums (gigabytes at 70B).
absl::Status CheckBlockStatistics(const std::string& path);

// The block's reports, AWQ ratios and timing as JSON.
nlohmann::json BlockReportJson(const BlockResult& result);
// BlockReportJson of a saved result, read from its metadata alone; an
// object whose "linears" are kBlockLinears objects, or InvalidArgument.
absl::StatusOr<nlohmann::json> LoadBlockReport(const std::string& path);

// hidden [sequences, seq_len, dim]. `digest` (optional): the file's raw
// digest, computed while it is written.
absl::Status SaveActivations(const std::string& path,
                             const std::vector<float>& hidden,
                             int64_t sequences, int64_t seq_len, int64_t dim,
                             Durability durability = Durability::kDurable,
                             std::string* digest = nullptr);
// The raw content digest of the file SaveActivations writes for `hidden`,
// without writing it, its pieces hashed by `threads` threads; `bytes`, when
// not null, gets the file's size.
absl::StatusOr<std::string> ActivationsFileDigest(
    const std::vector<float>& hidden, int64_t sequences, int64_t seq_len,
    int64_t dim, int threads, uint64_t* bytes = nullptr);
// InvalidArgument when the stored shape is not [sequences, seq_len, dim].
absl::StatusOr<std::vector<float>> LoadActivations(const std::string& path,
                                                   int64_t sequences,
                                                   int64_t seq_len,
                                                   int64_t dim);

}  // namespace quant

#endif  // QUANT_BLOCK_STORE_H_
