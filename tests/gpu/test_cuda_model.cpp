// The whole model on the CUDA backend against the CPU backend, on a real trained model streamed
// far past its sink cache's window: identical greedy tokens and matching perplexity. Without a
// CUDA device the binary reports itself skipped (exit code 77).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#ifdef SINKSERVE_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif
#include "runtime/gguf.h"
#include "runtime/llama_model.h"
#include "runtime/lockstep.h"
#include "runtime/sampler.h"
#include "runtime/stream.h"
#include "tests/model_rig.h"

namespace sinkserve {
namespace {

using test::cache_config;
using test::fixture;
using test::Rig;

int32_t argmax(const std::vector<float>& v) {
  return int32_t(std::max_element(v.begin(), v.end()) - v.begin());
}

// Sink policy S=4, W=60: 2,000 tokens evict the window more than 30 times over.
const CacheConfig kSink = cache_config(Policy::Sink, 4, 60, 64);

TEST(CudaModel, GreedyStreamMatchesCpuThroughEvictions) {
  const std::string model = fixture("models/stories260K.gguf");
  Rig cpu(model, kSink, make_cpu_backend(1)), gpu(model, kSink, make_cuda_backend(0));
  const size_t V = size_t(cpu.vocab());
  std::vector<float> lc(V), lg(V);
  Stream sc(*cpu.ls), sg(*gpu.ls);
  int32_t tc = 1, tg = 1;  // BOS
  double worst = 0;
  for (int i = 0; i < 2000; ++i) {
    sc.feed({&tc, 1}, lc.data());
    sg.feed({&tg, 1}, lg.data());
    for (size_t j = 0; j < V; ++j) worst = std::max(worst, double(std::fabs(lc[j] - lg[j])));
    tc = argmax(lc);
    tg = argmax(lg);
    if (tc != tg) {
      std::vector<float> sorted = lc;
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
      FAIL() << "token " << i << ": CPU picks " << tc << ", CUDA " << tg
             << " (CPU top-2 margin " << sorted[0] - sorted[1] << ", worst logit gap so far "
             << worst << ")";
    }
  }
  EXPECT_EQ(sg.tokens(), 2000);
  EXPECT_LT(worst, 1e-3) << "largest |logit CPU - logit CUDA| over the stream";
  std::printf("2000 greedy tokens identical; largest logit difference %.3g\n", worst);
}

// The generation path as `generate` and `serve` run it on a GPU: tokens drawn on the device (the
// logits never leave it), against host draws on the CPU: greedy, then with a repetition penalty
// and top-k 1 (so that a coin cannot fall differently on rounding).
TEST(CudaModel, TokensDrawnOnTheDeviceMatchCpu) {
  const std::string model = fixture("models/stories260K.gguf");
  Rig cpu(model, kSink, make_cpu_backend(1)), gpu(model, kSink, make_cuda_backend(0));
  for (float penalty : {1.0f, 1.3f}) {
    SamplingParams sp;
    sp.temperature = penalty == 1.0f ? 0.0f : 0.8f;
    sp.top_k = 1;
    sp.repeat_penalty = penalty;
    Sampler sampler_cpu(sp), sampler_gpu(sp);
    Stream sc(*cpu.ls), sg(*gpu.ls, SampleOn::Backend);
    int32_t tc = 1, tg = 1;  // BOS
    for (int i = 0; i < 2000; ++i) {
      sampler_cpu.accept(tc);
      sampler_gpu.accept(tg);
      tc = sc.feed_and_sample({&tc, 1}, sampler_cpu);
      tg = sg.feed_and_sample({&tg, 1}, sampler_gpu);
      ASSERT_EQ(tc, tg) << "token " << i << " (penalty " << penalty << ")";
    }
  }
}

#ifdef SINKSERVE_HAVE_CUDA
// SINKSERVE_CUDA_GRAPHS=1: decode steps run as CUDA graphs (captured, or replayed as they are)
// give bit-identical logits to eager launches, through the window filling (attention's split
// count changes the graph's topology) and evictions, after a prefill (not recorded).
TEST(CudaModel, GraphReplayEqualsEagerLaunches) {
  const std::string model = fixture("models/stories260K.gguf");
  Rig eager(model, kSink, make_cuda_backend(0));
  setenv("SINKSERVE_CUDA_GRAPHS", "1", 1);
  Rig graphs(model, kSink, make_cuda_backend(0));
  unsetenv("SINKSERVE_CUDA_GRAPHS");
  const size_t V = size_t(eager.vocab());
  std::vector<float> le(V), lg(V);
  Stream se(*eager.ls), sg(*graphs.ls);
  const std::vector<int32_t> prompt =
      test::text_tokens(*eager.file, fixture("texts/pg1342_pride_and_prejudice.txt"), 150);
  se.feed(prompt, le.data());
  sg.feed(prompt, lg.data());
  ASSERT_EQ(le, lg);
  int32_t t = argmax(le);
  for (int i = 0; i < 2000; ++i) {
    se.feed({&t, 1}, le.data());
    sg.feed({&t, 1}, lg.data());
    ASSERT_EQ(le, lg) << "token " << i;
    t = argmax(le);
  }
  // Once the window is full every step has the same launches: replayed without a capture.
  const CudaGraphStats st = cuda_graph_stats(*graphs.backend);
  EXPECT_GE(st.launches, 2000);
  EXPECT_GE(st.replays, 1500);
  EXPECT_EQ(cuda_graph_stats(*eager.backend).launches, 0);
}
#endif

// Negative log-likelihood of a real text fed in prefill chunks (all logits), so that the batched
// matmul and multi-token attention paths are the ones compared.
double text_nll(Rig& e, const std::vector<int32_t>& ids, int chunk) {
  const size_t V = size_t(e.vocab());
  std::vector<float> logits(static_cast<size_t>(chunk) * V);
  Stream s(*e.ls);
  double nll = 0;
  for (size_t b = 0; b + 1 < ids.size(); b += size_t(chunk)) {
    const size_t n = std::min(static_cast<size_t>(chunk), ids.size() - 1 - b);
    s.feed({ids.data() + b, n}, logits.data(), true);
    for (size_t i = 0; i < n; ++i) {
      const float* row = logits.data() + i * V;
      const float m = *std::max_element(row, row + V);
      double z = 0;
      for (size_t j = 0; j < V; ++j) z += std::exp(double(row[j]) - m);
      nll += std::log(z) + m - row[ids[b + i + 1]];
    }
  }
  return nll / double(ids.size() - 1);
}

TEST(CudaModel, PerplexityOverTextMatchesCpu) {
  const std::string model = fixture("models/stories260K.gguf");
  Rig cpu(model, kSink, make_cpu_backend(1)), gpu(model, kSink, make_cuda_backend(0));
  const std::vector<int32_t> ids =
      test::text_tokens(*cpu.file, fixture("texts/pg1342_pride_and_prejudice.txt"), 1500);
  for (int chunk : {1, 37, 64}) {
    const double pc = std::exp(text_nll(cpu, ids, chunk)), pg = std::exp(text_nll(gpu, ids, chunk));
    EXPECT_NEAR(pg / pc, 1.0, 1e-3) << "chunk " << chunk << ": CPU ppl " << pc << ", CUDA " << pg;
    EXPECT_GT(pc, 1.0);
    std::printf("chunk %d: perplexity CPU %.6f, CUDA %.6f\n", chunk, pc, pg);
  }
}

// Every family of the architecture table (LayerNorm, GELU, partial rotary, ALiBi, fused QKV,
// parallel blocks, biases) on the CUDA backend against the CPU backend, through evictions and in
// prefill chunks: every logit of 600 tokens.
TEST(CudaModel, EveryFamilyMatchesCpu) {
  const std::filesystem::path dir = test::make_temp_dir("cuda_families");
  for (const char* opts : {"--arch llama --kv-heads 2 --rope-freqs", "--arch gptneox", "--arch falcon --kv-heads 1",
                           "--arch falcon --kv-heads 2", "--arch mpt --biases --clamp-kqv 0.9", "--arch phi2",
                           "--arch stablelm --biases", "--arch gptj"}) {
    const std::string path = (dir / "m.gguf").string();
    const test::CliResult r = test::run_sinkserve(
        dir, std::string("synth --dim 128 --heads 4 --layers 2 --ffn 256 --vocab 400 ") + opts + " --out " + path);
    ASSERT_EQ(r.code, 0) << r.err;
    Rig cpu(path, kSink, make_cpu_backend(1)), gpu(path, kSink, make_cuda_backend(0));
    const size_t V = size_t(cpu.vocab());
    std::vector<int32_t> ids(600);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919 + 13) % V);
    std::vector<float> lc(16 * V), lg(16 * V);
    Stream sc(*cpu.ls), sg(*gpu.ls);
    double worst = 0;
    for (size_t b = 0; b < ids.size(); b += 16) {
      sc.feed({ids.data() + b, 16}, lc.data(), true);
      sg.feed({ids.data() + b, 16}, lg.data(), true);
      for (size_t j = 0; j < lc.size(); ++j) worst = std::max(worst, double(std::fabs(lc[j] - lg[j])));
    }
    EXPECT_LT(worst, 1e-3) << opts;
    std::printf("%s: largest logit difference CPU/CUDA %.3g\n", opts, worst);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sinkserve
