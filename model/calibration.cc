#include "model/calibration.h"

#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "format/model_config.h"
#include "model/perplexity.h"

namespace quant {
namespace {

// .npy version 1/2/3: magic, version, header length, a Python dict literal.
absl::StatusOr<std::vector<int32_t>> ParseNpyTokens(const std::string& path,
                                                    const std::string& bytes) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a 1-D int32/int64 .npy file (", why, ")"));
  };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) {
    return bad("no .npy magic");
  }
  const int major = static_cast<uint8_t>(bytes[6]);
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) |
                 static_cast<size_t>(static_cast<uint8_t>(bytes[9])) << 8;
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return bad("truncated header");
    for (int i = 0; i < 4; ++i) {
      header_len |= static_cast<size_t>(static_cast<uint8_t>(bytes[8 + i]))
                    << (8 * i);
    }
    header_start = 12;
  } else {
    return bad(absl::StrCat("version ", major));
  }
  if (header_start + header_len > bytes.size()) return bad("truncated header");
  const std::string header = bytes.substr(header_start, header_len);
  int width = 0;
  if (absl::StrContains(header, "'<i4'")) {
    width = 4;
  } else if (absl::StrContains(header, "'<i8'")) {
    width = 8;
  } else {
    return bad("dtype");
  }
  if (!absl::StrContains(header, "'fortran_order': False")) {
    return bad("Fortran order");
  }
  const size_t open = header.find("'shape': (");
  const size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) {
    return bad("no shape");
  }
  const std::string dims = header.substr(open + 10, close - open - 10);
  std::vector<std::string> parts =
      absl::StrSplit(dims, ',', absl::SkipWhitespace());
  int64_t count = 0;
  if (parts.size() != 1 || !absl::SimpleAtoi(parts[0], &count) || count < 0) {
    return bad(absl::StrCat("shape (", dims, ")"));
  }
  const size_t data = header_start + header_len;
  if (bytes.size() - data != static_cast<size_t>(count) * width) {
    return bad(absl::StrCat("data holds ", bytes.size() - data, " bytes for ",
                            count, " values"));
  }
  std::vector<int32_t> ids(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    int64_t value = 0;
    if (width == 4) {
      int32_t v;
      std::memcpy(&v, bytes.data() + data + i * 4, 4);
      value = v;
    } else {
      std::memcpy(&value, bytes.data() + data + i * 8, 8);
    }
    if (value < INT32_MIN || value > INT32_MAX) {
      return bad(absl::StrCat("id ", value, " at ", i, " is out of range"));
    }
    ids[static_cast<size_t>(i)] = static_cast<int32_t>(value);
  }
  return ids;
}

}  // namespace

uint64_t SplitMix64::Next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

absl::StatusOr<CalibrationSampling> ParseCalibrationSampling(
    absl::string_view name) {
  if (name == "splitmix64") return CalibrationSampling::kSplitMix64;
  if (name == "python") return CalibrationSampling::kPythonRandom;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown calibration sampling \"", name, "\" (splitmix64 or python)"));
}

absl::string_view CalibrationSamplingName(CalibrationSampling sampling) {
  return sampling == CalibrationSampling::kPythonRandom ? "python"
                                                        : "splitmix64";
}

PythonRandom::PythonRandom(uint64_t seed) {
  // init_genrand(19650218), then init_by_array(key) as in mt19937ar.c.
  constexpr int kN = 624;
  state_[0] = 19650218u;
  for (int i = 1; i < kN; ++i) {
    state_[i] = 1812433253u * (state_[i - 1] ^ (state_[i - 1] >> 30)) +
                static_cast<uint32_t>(i);
  }
  std::vector<uint32_t> key = {static_cast<uint32_t>(seed)};
  if (seed >> 32 != 0) key.push_back(static_cast<uint32_t>(seed >> 32));
  const int key_length = static_cast<int>(key.size());
  int i = 1, j = 0;
  for (int k = std::max(kN, key_length); k > 0; --k) {
    state_[i] =
        (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1664525u)) +
        key[j] + static_cast<uint32_t>(j);
    if (++i >= kN) state_[0] = state_[kN - 1], i = 1;
    if (++j >= key_length) j = 0;
  }
  for (int k = kN - 1; k > 0; --k) {
    state_[i] =
        (state_[i] ^ ((state_[i - 1] ^ (state_[i - 1] >> 30)) * 1566083941u)) -
        static_cast<uint32_t>(i);
    if (++i >= kN) state_[0] = state_[kN - 1], i = 1;
  }
  state_[0] = 0x80000000u;
  index_ = kN;
}

uint32_t PythonRandom::Next() {
  constexpr int kN = 624, kM = 397;
  if (index_ >= kN) {
    for (int i = 0; i < kN; ++i) {
      const uint32_t y =
          (state_[i] & 0x80000000u) | (state_[(i + 1) % kN] & 0x7fffffffu);
      state_[i] = state_[(i + kM) % kN] ^ (y >> 1) ^ (y & 1 ? 0x9908b0dfu : 0);
    }
    index_ = 0;
  }
  uint32_t y = state_[index_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  return y ^ (y >> 18);
}

uint32_t PythonRandom::GetRandBits(int bits) { return Next() >> (32 - bits); }

int64_t PythonRandom::RandInt(int64_t a, int64_t b) {
  const uint64_t n = static_cast<uint64_t>(b - a) + 1;
  int bits = 0;
  while ((uint64_t{1} << bits) <= n) ++bits;  // n's bit length.
  uint64_t r = GetRandBits(bits);
  while (r >= n) r = GetRandBits(bits);
  return a + static_cast<int64_t>(r);
}

absl::StatusOr<std::vector<int32_t>> SampleCalibrationWindows(
    const std::vector<int32_t>& stream, int64_t samples, int64_t seq_len,
    uint64_t seed, CalibrationSampling sampling) {
  if (samples < 1 || seq_len < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration needs at least one sample of one token, not ",
                     samples, " x ", seq_len));
  }
  const int64_t length = static_cast<int64_t>(stream.size());
  if (length < seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("the calibration data holds ", length,
                     " tokens, fewer than one window of ", seq_len));
  }
  const bool python = sampling == CalibrationSampling::kPythonRandom;
  if (python && length == seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("python sampling needs more than one window of ", seq_len,
                     " tokens; the calibration data holds exactly that"));
  }
  const uint64_t starts = static_cast<uint64_t>(length - seq_len + 1);
  SplitMix64 splitmix(seed);
  PythonRandom python_random(seed);
  std::vector<int32_t> windows;
  windows.reserve(static_cast<size_t>(samples * seq_len));
  for (int64_t i = 0; i < samples; ++i) {
    const int64_t start = python
                              ? python_random.RandInt(0, length - seq_len - 1)
                              : static_cast<int64_t>(splitmix.Next() % starts);
    windows.insert(windows.end(), stream.begin() + start,
                   stream.begin() + start + seq_len);
  }
  return windows;
}

absl::StatusOr<std::vector<int32_t>> ReadTokenIds(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(path));
  if (absl::EndsWith(path, ".npy")) return ParseNpyTokens(path, bytes);
  std::vector<int32_t> ids;
  for (absl::string_view word :
       absl::StrSplit(bytes, absl::ByAnyChar(" \t\r\n"), absl::SkipEmpty())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(word, &id)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": \"", word.substr(0, 20), "\" is not a token id"));
    }
    ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> LoadCalibrationWindows(
    const std::string& model_dir, const CalibrationOptions& options) {
  if (options.text_path.empty() == options.tokens_path.empty()) {
    return absl::InvalidArgumentError(
        "calibration needs exactly one source: a text file or a token file");
  }
  const std::string& source =
      options.tokens_path.empty() ? options.text_path : options.tokens_path;
  std::error_code error;
  const uintmax_t bytes = std::filesystem::file_size(source, error);
  if (!error && bytes > static_cast<uintmax_t>(kMaxCalibrationFileBytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, " is ", bytes, " bytes; calibration reads at most ",
        kMaxCalibrationFileBytes));
  }
  ASSIGN_OR_RETURN(const ModelSpec spec, LoadModelConfig(model_dir));
  std::vector<int32_t> stream;
  if (!options.tokens_path.empty()) {
    ASSIGN_OR_RETURN(stream, ReadTokenIds(options.tokens_path));
  } else {
    const std::string tokenizer = model_dir + "/tokenizer.model";
    if (!std::filesystem::exists(tokenizer)) {
      return absl::FailedPreconditionError(absl::StrCat(
          model_dir,
          " has no tokenizer.model (SentencePiece); give the calibration "
          "data as token ids instead of text"));
    }
    ASSIGN_OR_RETURN(const std::string text,
                     ReadFileToString(options.text_path));
    ASSIGN_OR_RETURN(stream,
                     HeldOutTokenStream(
                         tokenizer, text,
                         static_cast<int32_t>(spec.bos_token_id.value_or(1))));
  }
  for (size_t i = 0; i < stream.size(); ++i) {
    if (stream[i] < 0 || stream[i] >= spec.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration token ", i, " is ", stream[i],
                       ", outside the vocabulary of ", spec.vocab_size));
    }
  }
  return SampleCalibrationWindows(stream, options.samples, options.seq_len,
                                  options.seed, options.sampling);
}

}  // namespace quant
