#include "convert/tiny_llama.h"

#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "format/half.h"
#include "format/safetensors.h"
#include "nlohmann/json.hpp"

namespace quant {
namespace {

using json = nlohmann::json;

constexpr char kBosToken[] = "<|begin_of_text|>";
constexpr char kEosToken[] = "<|end_of_text|>";

// Text the tokenizer's merges are learned from.
constexpr char kTrainingText[] =
    "Once upon a time there was a little girl who lived in a village near "
    "the forest. Whenever she went out, the little girl wore a red riding "
    "cloak, so everyone in the village called her Little Red Riding Hood. "
    "One morning, Little Red Riding Hood asked her mother if she could go "
    "to visit her grandmother as it had been a while since they had seen "
    "each other. That is a good idea, her mother said. So they packed a "
    "nice basket for Little Red Riding Hood to take to her grandmother. "
    "The quantization service reads a model, splits it into blocks and "
    "writes the weights in fewer bits, so that the model runs in less "
    "memory and answers faster while it keeps what it has learned.";

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the
// others to code points from 256 up, so every token is a visible string.
std::vector<std::string> ByteLevelAlphabet() {
  std::vector<int> code_points(256, -1);
  auto keep = [&](int lo, int hi) {
    for (int b = lo; b <= hi; ++b) code_points[b] = b;
  };
  keep('!', '~');
  keep(0xA1, 0xAC);
  keep(0xAE, 0xFF);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    if (code_points[b] < 0) code_points[b] = next++;
  }
  std::vector<std::string> alphabet(256);
  for (int b = 0; b < 256; ++b) {
    const int cp = code_points[b];
    std::string utf8;
    if (cp < 0x80) {
      utf8.push_back(static_cast<char>(cp));
    } else {
      utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    alphabet[b] = utf8;
  }
  return alphabet;
}

// Learns `count` BPE merges over the words of kTrainingText (a word keeps
// its leading space, as GPT-2's pre-tokenizer does). Ties break on the
// lexicographically smallest pair, so the result is deterministic.
std::vector<std::pair<std::string, std::string>> LearnMerges(
    const std::vector<std::string>& alphabet, int64_t count) {
  std::map<std::vector<std::string>, int64_t> words;
  const std::string text = kTrainingText;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(' ', start + 1);
    if (end == std::string::npos) end = text.size();
    std::vector<std::string> symbols;
    for (size_t i = start; i < end; ++i) {
      symbols.push_back(alphabet[static_cast<uint8_t>(text[i])]);
    }
    ++words[symbols];
    start = end;
  }
  std::vector<std::pair<std::string, std::string>> merges;
  while (static_cast<int64_t>(merges.size()) < count) {
    std::map<std::pair<std::string, std::string>, int64_t> pair_counts;
    for (const auto& [symbols, n] : words) {
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        pair_counts[{symbols[i], symbols[i + 1]}] += n;
      }
    }
    if (pair_counts.empty()) break;
    auto best = pair_counts.begin();
    for (auto it = pair_counts.begin(); it != pair_counts.end(); ++it) {
      if (it->second > best->second) best = it;
    }
    const auto pair = best->first;
    merges.push_back(pair);
    std::map<std::vector<std::string>, int64_t> merged_words;
    for (const auto& [symbols, n] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == pair.first &&
            symbols[i + 1] == pair.second) {
          out.push_back(symbols[i] + symbols[i + 1]);
          ++i;
        } else {
          out.push_back(symbols[i]);
        }
      }
      merged_words[out] += n;
    }
    words = std::move(merged_words);
  }
  return merges;
}

json TokenizerJson(
    const std::vector<std::string>& alphabet,
    const std::vector<std::pair<std::string, std::string>>& merges) {
  json vocab = json::object();
  int64_t id = 0;
  for (const std::string& symbol : alphabet) vocab[symbol] = id++;
  json merge_list = json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
    merge_list.push_back(a + " " + b);
  }
  json added = json::array();
  for (const char* special : {kBosToken, kEosToken}) {
    added.push_back({{"id", id},
                     {"content", special},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
    vocab[special] = id++;
  }
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"vocab", vocab},
        {"merges", merge_list}}},
  };
}

// Box-Muller over mt19937_64, so the weights are the same everywhere
// (std::normal_distribution is implementation-defined).
class Gaussian {
 public:
  explicit Gaussian(uint64_t seed) : engine_(seed) {}
  float Next() {
    constexpr double kTwoPi = 6.283185307179586;
    const double u1 = (static_cast<double>(engine_() >> 11) + 1.0) * 0x1p-53;
    const double u2 = static_cast<double>(engine_() >> 11) * 0x1p-53;
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) *
                              std::cos(kTwoPi * u2));
  }

 private:
  std::mt19937_64 engine_;
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  bool is_norm;
};

std::vector<TensorSpec> TensorSpecs(const TinyLlamaOptions& o,
                                    int64_t vocab_size) {
  const int64_t head_dim = o.hidden_size / o.num_heads;
  std::vector<TensorSpec> specs;
  specs.push_back(
      {"model.embed_tokens.weight", {vocab_size, o.hidden_size}, false});
  for (int64_t layer = 0; layer < o.num_layers; ++layer) {
    const std::string p = absl::StrCat("model.layers.", layer, ".");
    specs.push_back({p + "input_layernorm.weight", {o.hidden_size}, true});
    const int64_t q_rows = o.num_heads * head_dim;
    const int64_t kv_rows = o.num_kv_heads * head_dim;
    for (const auto& [proj, rows, cols] :
         {std::make_tuple("q_proj", q_rows, o.hidden_size),
          std::make_tuple("k_proj", kv_rows, o.hidden_size),
          std::make_tuple("v_proj", kv_rows, o.hidden_size),
          std::make_tuple("o_proj", o.hidden_size, q_rows)}) {
      const std::string name = p + "self_attn." + proj;
      specs.push_back({name + ".weight", {rows, cols}, false});
      const bool qwen2_bias =
          o.architecture == "qwen2" && std::string(proj) != "o_proj";
      if (o.attention_bias || qwen2_bias) {
        specs.push_back({name + ".bias", {rows}, false});
      }
    }
    specs.push_back(
        {p + "post_attention_layernorm.weight", {o.hidden_size}, true});
    specs.push_back({p + "mlp.gate_proj.weight",
                     {o.intermediate_size, o.hidden_size},
                     false});
    specs.push_back({p + "mlp.up_proj.weight",
                     {o.intermediate_size, o.hidden_size},
                     false});
    specs.push_back({p + "mlp.down_proj.weight",
                     {o.hidden_size, o.intermediate_size},
                     false});
  }
  specs.push_back({"model.norm.weight", {o.hidden_size}, true});
  if (!o.tie_word_embeddings) {
    specs.push_back({"lm_head.weight", {vocab_size, o.hidden_size}, false});
  }
  return specs;
}

absl::Status ValidateOptions(const TinyLlamaOptions& o) {
  if (o.hidden_size <= 0 || o.intermediate_size <= 0 || o.num_layers <= 0 ||
      o.num_heads <= 0 || o.num_kv_heads <= 0 || o.num_shards <= 0 ||
      o.num_merges < 0) {
    return absl::InvalidArgumentError(
        "tiny model sizes, layers, heads and shards must be positive");
  }
  if (o.hidden_size % o.num_heads != 0 || (o.hidden_size / o.num_heads) % 2) {
    return absl::InvalidArgumentError(
        "hidden_size must split into num_heads heads of even size");
  }
  if (o.architecture != "llama" && o.architecture != "qwen2") {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown architecture '", o.architecture, "'; use llama or qwen2"));
  }
  if (o.architecture == "qwen2" && o.attention_bias) {
    return absl::InvalidArgumentError(
        "attention_bias is a Llama option; Qwen2 always has q/k/v biases");
  }
  if (o.num_heads % o.num_kv_heads != 0) {
    return absl::InvalidArgumentError("num_kv_heads must divide num_heads");
  }
  if (o.vocab_size < 0 || o.max_shard_bytes < 0 || !(o.rope_theta > 0)) {
    return absl::InvalidArgumentError(
        "vocab_size and max_shard_bytes must not be negative, rope_theta "
        "must be positive");
  }
  return absl::OkStatus();
}

// The tensors of each shard, in order: num_shards even groups, or groups
// of at most max_shard_bytes (a tensor larger than that alone).
std::vector<std::vector<TensorSpec>> Shards(const TinyLlamaOptions& o,
                                            std::vector<TensorSpec> specs) {
  std::vector<std::vector<TensorSpec>> shards;
  if (o.max_shard_bytes > 0) {
    int64_t bytes = 0;
    for (TensorSpec& spec : specs) {
      int64_t size = 2;  // BF16.
      for (int64_t d : spec.shape) size *= d;
      if (shards.empty() || (bytes > 0 && bytes + size > o.max_shard_bytes)) {
        shards.emplace_back();
        bytes = 0;
      }
      bytes += size;
      shards.back().push_back(std::move(spec));
    }
    return shards;
  }
  const size_t per_shard = (specs.size() + o.num_shards - 1) / o.num_shards;
  for (size_t begin = 0; begin < specs.size(); begin += per_shard) {
    const size_t end = std::min(specs.size(), begin + per_shard);
    shards.emplace_back(specs.begin() + begin, specs.begin() + end);
  }
  return shards;
}

}  // namespace

TinyLlamaOptions Llama3_70BShapes(int64_t num_layers) {
  TinyLlamaOptions o;
  o.hidden_size = 8192;
  o.intermediate_size = 28672;
  o.num_layers = num_layers;
  o.num_heads = 64;
  o.num_kv_heads = 8;
  o.max_position_embeddings = 8192;
  o.vocab_size = 128256;
  o.rope_theta = 500000.0;
  o.max_shard_bytes = 5'000'000'000;
  return o;
}

absl::Status WriteTinyLlama(const std::string& dir,
                            const TinyLlamaOptions& options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot create '", dir, "': ", error.message()));
  }
  if (std::filesystem::exists(dir + "/config.json")) {
    return absl::AlreadyExistsError(
        absl::StrCat("'", dir,
                     "' already holds a model (config.json); choose an empty "
                     "directory"));
  }

  const std::vector<std::string> alphabet = ByteLevelAlphabet();
  const auto merges = LearnMerges(alphabet, options.num_merges);
  const json tokenizer = TokenizerJson(alphabet, merges);
  const int64_t tokens =
      static_cast<int64_t>(tokenizer["model"]["vocab"].size());
  const int64_t bos_id = tokens - 2;
  const int64_t eos_id = tokens - 1;
  if (options.vocab_size != 0 && options.vocab_size < tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size ", options.vocab_size, " is below the ",
                     tokens, " tokens of the tokenizer"));
  }
  const int64_t vocab_size =
      options.vocab_size == 0 ? tokens : options.vocab_size;

  // Weights: N(0, 0.02) like a freshly initialised model, norms at 1.
  const std::vector<std::vector<TensorSpec>> shards =
      Shards(options, TensorSpecs(options, vocab_size));
  Gaussian gaussian(options.seed);
  std::map<std::string, std::string> weight_map;
  uint64_t total_bytes = 0;
  // Values are made and written this many at a time (a 70B-shaped
  // embedding is 2 GB).
  constexpr int64_t kChunk = 1 << 22;
  std::vector<uint16_t> values;
  for (size_t shard = 0; shard < shards.size(); ++shard) {
    const std::string file_name =
        shards.size() == 1
            ? std::string("model.safetensors")
            : absl::StrCat("model-", absl::Dec(shard + 1, absl::kZeroPad5),
                           "-of-", absl::Dec(shards.size(), absl::kZeroPad5),
                           ".safetensors");
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                     SafetensorsWriter::Create(dir + "/" + file_name));
    writer->SetMetadata("format", "pt");
    for (const TensorSpec& spec : shards[shard]) {
      RETURN_IF_ERROR(
          writer->AddTensor(spec.name, SafetensorsDType::kBF16, spec.shape));
    }
    for (const TensorSpec& spec : shards[shard]) {
      int64_t count = 1;
      for (int64_t d : spec.shape) count *= d;
      for (int64_t done = 0; done < count; done += kChunk) {
        values.resize(std::min(kChunk, count - done));
        for (uint16_t& v : values) {
          v = FloatToBf16(spec.is_norm ? 1.0f : 0.02f * gaussian.Next());
        }
        RETURN_IF_ERROR(writer->WriteTensorData(spec.name, values.data(),
                                                values.size() * 2));
      }
      weight_map[spec.name] = file_name;
      total_bytes += count * 2;
    }
    RETURN_IF_ERROR(writer->Finish());
  }
  if (shards.size() > 1) {
    RETURN_IF_ERROR(WriteSafetensorsIndex(dir, weight_map, total_bytes));
  }

  const bool qwen2 = options.architecture == "qwen2";
  const json config = {
      {"architectures", {qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", options.architecture},
      {"hidden_size", options.hidden_size},
      {"intermediate_size", options.intermediate_size},
      {"num_hidden_layers", options.num_layers},
      {"num_attention_heads", options.num_heads},
      {"num_key_value_heads", options.num_kv_heads},
      {"head_dim", options.hidden_size / options.num_heads},
      {"hidden_act", "silu"},
      {"max_position_embeddings", options.max_position_embeddings},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", options.rope_theta},
      {"vocab_size", vocab_size},
      {"bos_token_id", bos_id},
      {"eos_token_id", eos_id},
      {"tie_word_embeddings", options.tie_word_embeddings},
      {"attention_bias", options.attention_bias && !qwen2},
      {"torch_dtype", "bfloat16"},
  };
  const json tokenizer_config = {
      {"add_bos_token", true},
      {"add_eos_token", false},
      {"bos_token", kBosToken},
      {"eos_token", kEosToken},
      {"model_max_length", options.max_position_embeddings},
      {"tokenizer_class", "PreTrainedTokenizerFast"},
  };
  RETURN_IF_ERROR(
      WriteFileAtomically(dir + "/tokenizer.json", tokenizer.dump(1)));
  RETURN_IF_ERROR(WriteFileAtomically(dir + "/tokenizer_config.json",
                                      tokenizer_config.dump(2)));
  // config.json last: its presence marks a complete model.
  return WriteFileAtomically(dir + "/config.json", config.dump(2));
}

}  // namespace quant
