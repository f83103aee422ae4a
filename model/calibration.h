// Calibration data for GPTQ and AWQ: token windows drawn from a text or from
// pre-tokenized ids.
//
// Sampling (documented so that any implementation can reproduce it): the
// source becomes one token stream (text: split on blank lines, empty
// paragraphs skipped, concat([BOS] + encode(paragraph)) with the model's
// SentencePiece tokenizer, as for held-out perplexity; ids: as stored). For
// sample i = 0 .. N-1 the window start is SplitMix64(seed)'s i-th output
// modulo (len - L + 1), and the window is stream[start, start + L). The
// windows may overlap. The same seed gives the same windows everywhere.
// The alternative kPythonRandom draws the starts as GPTQ's reference data
// scripts (and AutoGPTQ's examples) do: Python's random.seed(seed), then
// random.randint(0, len - L - 1) per window.
#ifndef MODEL_CALIBRATION_H_
#define MODEL_CALIBRATION_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quant {

enum class CalibrationSampling { kSplitMix64, kPythonRandom };
// "splitmix64" or "python".
absl::StatusOr<CalibrationSampling> ParseCalibrationSampling(
    absl::string_view name);
absl::string_view CalibrationSamplingName(CalibrationSampling sampling);

// Limits on what one calibration may read and hold: 16 Mi tokens of
// windows (64 times the 128 x 2048 of a large model's recipe) and a source
// file of 1 GiB.
inline constexpr int64_t kMaxCalibrationTokens = int64_t{1} << 24;
inline constexpr int64_t kMaxCalibrationFileBytes = int64_t{1} << 30;

struct CalibrationOptions {
  std::string text_path;    // UTF-8 text; or
  std::string tokens_path;  // token ids: .npy (1-D int32/int64) or .txt
                            // (whitespace-separated integers).
  int64_t samples = 128;    // N windows ...
  int64_t seq_len = 512;    // ... of L tokens.
  uint64_t seed = 0;
  CalibrationSampling sampling = CalibrationSampling::kSplitMix64;
};

// The i-th output of SplitMix64 started at `seed`, for i = 0, 1, ...
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next();

 private:
  uint64_t state_;
};

// CPython's random module for an integer seed: MT19937 seeded by
// init_by_array over the seed's 32-bit words (least significant first),
// getrandbits(k <= 32) as the top k bits of one output, randint(a, b) by
// rejection on getrandbits(bit_length(b - a + 1)).
class PythonRandom {
 public:
  explicit PythonRandom(uint64_t seed);
  uint32_t GetRandBits(int bits);  // 1 <= bits <= 32.
  // a <= b, b - a < 2^32 - 1.
  int64_t RandInt(int64_t a, int64_t b);

 private:
  uint32_t Next();  // MT19937's tempered output.
  std::array<uint32_t, 624> state_;
  int index_;
};

// `samples` windows of `seq_len` tokens, back to back. InvalidArgument when
// the stream is shorter than one window (kPythonRandom: not longer) or the
// sizes are not positive.
absl::StatusOr<std::vector<int32_t>> SampleCalibrationWindows(
    const std::vector<int32_t>& stream, int64_t samples, int64_t seq_len,
    uint64_t seed,
    CalibrationSampling sampling = CalibrationSampling::kSplitMix64);

// Reads token ids from a .npy (1-D, little-endian int32 or int64) or a text
// file of whitespace-separated integers.
absl::StatusOr<std::vector<int32_t>> ReadTokenIds(const std::string& path);

// The calibration windows for the model in `model_dir` (its tokenizer.model,
// config bos_token_id, default 1): exactly one of text_path / tokens_path
// must be set; ids outside [0, vocab_size) are InvalidArgument naming the
// first one; a source file over kMaxCalibrationFileBytes is InvalidArgument
// before it is read.
absl::StatusOr<std::vector<int32_t>> LoadCalibrationWindows(
    const std::string& model_dir, const CalibrationOptions& options);

}  // namespace quant

#endif  // MODEL_CALIBRATION_H_
