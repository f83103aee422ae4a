// The whole block task of a Llama-3-70B-shaped decoder layer on the GPU
// (kernels/cuda/block_backend_cuda.h), as a GPU worker runs it: calibration
// activations up, the true-sequential forwards into the Hessians, the GPTQ
// solves, the reports, the forward of the quantized block, its outputs back.
// Weights are N(0, 0.02) in BF16 with unit norms and the activations N(0, 1)
// in BF16, as ../shared/bench/block_torch_ref.py makes them. Prints one JSON
// line; block_bench.py puts it beside the reference.
//
// usage: block_bench [sequences (128)] [sequences per pass (8)]
//                    [true_sequential (1)]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "format/half.h"
#include "kernels/cuda/block_backend_cuda.h"

namespace {

using quant::DecoderBlockWeights;
using quant::LinearWeights;

// n BF16-valued normals, in parallel (a seed per slice: the same values on
// every run).
std::vector<float> Normals(int64_t n, float scale, uint32_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  const int threads =
      std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const int64_t slice = (n + threads - 1) / threads;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(seed * 1000 + t);
      std::normal_distribution<float> normal;
      const int64_t last = std::min(n, (t + 1) * slice);
      for (int64_t i = t * slice; i < last; ++i) {
        v[i] = quant::Bf16ToFloat(quant::FloatToBf16(scale * normal(rng)));
      }
    });
  }
  for (std::thread& w : workers) w.join();
  return v;
}

LinearWeights Linear(int64_t rows, int64_t cols, uint32_t seed) {
  LinearWeights l;
  l.rows = rows, l.cols = cols;
  l.weight = Normals(rows * cols, 0.02f, seed);
  return l;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "block_bench: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t sequences = argc > 1 ? std::atoll(argv[1]) : 128;
  const int64_t per_pass = argc > 2 ? std::atoll(argv[2]) : 8;
  const bool true_sequential = argc > 3 ? std::atoi(argv[3]) != 0 : true;
  const int64_t seq_len = 2048;

  quant::ModelSpec spec;
  spec.hidden_size = 8192;
  spec.intermediate_size = 28672;
  spec.num_layers = 1;
  spec.num_heads = 64;
  spec.num_kv_heads = 8;
  spec.head_dim = 128;
  spec.vocab_size = 128256;
  spec.rms_norm_eps = 1e-5;
  spec.rope_theta = 500000;
  const int64_t dim = spec.hidden_size, inter = spec.intermediate_size;
  const int64_t kv = spec.num_kv_heads * spec.head_dim;

  const auto made = std::chrono::steady_clock::now();
  DecoderBlockWeights block;
  block.attn_norm.assign(dim, 1.0f);
  block.ffn_norm.assign(dim, 1.0f);
  block.q = Linear(dim, dim, 1);
  block.k = Linear(kv, dim, 2);
  block.v = Linear(kv, dim, 3);
  block.o = Linear(dim, dim, 4);
  block.gate = Linear(inter, dim, 5);
  block.up = Linear(inter, dim, 6);
  block.down = Linear(dim, inter, 7);
  std::vector<float> hidden = Normals(sequences * seq_len * dim, 1.0f, 8);
  std::fprintf(
      stderr, "inputs made in %.1f s\n",
      std::chrono::duration<double>(std::chrono::steady_clock::now() - made)
          .count());

  absl::StatusOr<std::unique_ptr<quant::cuda::CudaBlockBackend>> backend =
      quant::cuda::CudaBlockBackend::Create(0);
  if (!backend.ok()) return Fail(backend.status());
  quant::BlockRecipe recipe;
  recipe.method = quant::QuantMethod::kGptq;
  for (quant::WeightFormat& f : recipe.formats) {
    f.bits = 4, f.group_size = 128, f.sym = false;
  }
  recipe.true_sequential = true_sequential;
  recipe.sequences_per_pass = per_pass;
  const quant::LlamaForward forward(spec, seq_len);

  // Warm-up: one short pass initializes cuBLAS, cuSOLVER and the kernels.
  {
    std::vector<float> few(hidden.begin(), hidden.begin() + 2 * 64 * dim);
    absl::StatusOr<quant::BlockResult> warm =
        (*backend)->QuantizeBlock(forward, block, recipe, 2, 64, few.data());
    if (!warm.ok()) return Fail(warm.status());
  }

  int64_t free_bytes = 0, total_bytes = 0;
  if (absl::Status s =
          (*backend)->context().MemoryInfo(&free_bytes, &total_bytes);
      !s.ok()) {
    return Fail(s);
  }
  std::atomic<int64_t> least_free{free_bytes};
  std::atomic<bool> running{true};
  std::thread watch([&] {
    while (running) {
      int64_t now = 0, total = 0;
      if ((*backend)->context().MemoryInfo(&now, &total).ok()) {
        least_free = std::min<int64_t>(least_free, now);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  // A worker hands the block over (moves it): the copy is not timed.
  quant::DecoderBlockWeights handed = block;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<quant::BlockResult> done = (*backend)->QuantizeBlock(
      forward, std::move(handed), recipe, sequences, seq_len, hidden.data());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  running = false;
  watch.join();
  if (!done.ok()) return Fail(done.status());

  std::string linears;
  double solves = 0;
  for (const quant::LinearReport& r : done->reports) {
    solves += r.seconds;
    linears += (linears.empty() ? "" : ", ") + std::string("\"") + r.name +
               "\": {\"seconds\": " + std::to_string(r.seconds) +
               ", \"relative_output_error\": " +
               std::to_string(r.relative_output_error) + "}";
  }
  std::string phases;
  for (const auto& [phase, s] : (*backend)->last_phases()) {
    phases +=
        (phases.empty() ? "\"" : ", \"") + phase + "\": " + std::to_string(s);
  }
  std::printf(
      "{\"device\": \"%s\", \"tokens\": %lld, \"sequences_per_pass\": %lld, "
      "\"true_sequential\": %s, \"block_total_s\": %.3f, "
      "\"linears_s\": %.3f, \"peak_gib\": %.2f, \"linears\": {%s}, "
      "\"phases\": {%s}}\n",
      (*backend)->kernel().kernel.c_str(),
      static_cast<long long>(sequences * seq_len),
      static_cast<long long>(per_pass), true_sequential ? "true" : "false",
      seconds, solves,
      static_cast<double>(total_bytes - least_free) / (1 << 30),
      linears.c_str(), phases.c_str());
  return 0;
}
