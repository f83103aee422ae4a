// Durable files of a quantization run: a block's result (its integer
// solution, norms, importance and report) and the activations at a block
// boundary, as safetensors written atomically (temp, fsync, rename). The
// activations are stored exactly (F32), so a run resumed from them computes
// bit for bit what an uninterrupted run computes.
#ifndef QUANT_BLOCK_STORE_H_
#define QUANT_BLOCK_STORE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quant/block_quantizer.h"

namespace quant {

absl::Status SaveBlockResult(const std::string& path,
                             const BlockResult& result);
// Errors name the file and what is missing or malformed.
absl::StatusOr<BlockResult> LoadBlockResult(const std::string& path);
// Whether LoadBlockResult reads `path` (every check, without dequantizing
// the weights): how a worker's upload is checked before it is committed.
absl::Status CheckBlockResult(const std::string& path);

// The block's reports, AWQ ratios and timing as JSON.
nlohmann::json BlockReportJson(const BlockResult& result);
// BlockReportJson of a saved result, read from its metadata alone; an
// object whose "linears" are kBlockLinears objects, or InvalidArgument.
absl::StatusOr<nlohmann::json> LoadBlockReport(const std::string& path);

// hidden [sequences, seq_len, dim].
absl::Status SaveActivations(const std::string& path,
                             const std::vector<float>& hidden,
                             int64_t sequences, int64_t seq_len, int64_t dim);
// InvalidArgument when the stored shape is not [sequences, seq_len, dim].
absl::StatusOr<std::vector<float>> LoadActivations(const std::string& path,
                                                   int64_t sequences,
                                                   int64_t seq_len,
                                                   int64_t dim);

}  // namespace quant

#endif  // QUANT_BLOCK_STORE_H_
