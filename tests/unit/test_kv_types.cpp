// KV cache storage types on real trained models: perplexity over 20,000 streamed tokens of real
// text through a sink cache (4 + 252, evicting all the way) stays within each type's bound of the
// F32 cache's, greedy F16 streams equal F32 ones, and the bytes per cached token halve.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/model_rig.h"

using namespace sinkserve;
using namespace sinkserve::test;

namespace {

CacheConfig sink_cache(DType t) {
  CacheConfig c = cache_config(Policy::Sink, 4, 252, 64);
  c.kv_type = t;
  return c;
}

// Perplexity of the text fed in chunks of 64 (every token's logits).
double perplexity(Rig& rig, const std::vector<int32_t>& ids) {
  const size_t V = size_t(rig.vocab());
  std::vector<float> logits(64 * V);
  Stream s(*rig.ls);
  double nll = 0;
  for (size_t b = 0; b + 1 < ids.size(); b += 64) {
    const size_t n = std::min<size_t>(64, ids.size() - 1 - b);
    s.feed({ids.data() + b, n}, logits.data(), true);
    for (size_t i = 0; i < n; ++i) {
      const float* row = logits.data() + i * V;
      const float m = *std::max_element(row, row + V);
      double z = 0;
      for (size_t j = 0; j < V; ++j) z += std::exp(double(row[j] - m));
      nll += std::log(z) + m - row[ids[b + i + 1]];
    }
  }
  return std::exp(nll / double(ids.size() - 1));
}

class KvTypes : public ::testing::TestWithParam<std::string> {};

TEST_P(KvTypes, PerplexityWithinEachTypesBoundOfF32) {
  const std::string model = fixture("models/" + GetParam());
  Rig f32(model, sink_cache(DType::F32));
  const std::vector<int32_t> ids = text_tokens(*f32.file, fixture("texts/pg2600_war_and_peace.txt"), 20'000);
  const double base = perplexity(f32, ids);
  struct Bound { DType type; double rel; };
  for (const Bound& b : {Bound{DType::F16, 0.001}, Bound{DType::BF16, 0.005}, Bound{DType::Q8_0, 0.01}}) {
    Rig rig(model, sink_cache(b.type));
    const double p = perplexity(rig, ids);
    EXPECT_LT(std::fabs(p / base - 1.0), b.rel) << dtype_name(b.type) << ": " << p << " against F32 " << base;
    std::printf("%s: perplexity %.5f with %s KV, %.5f with F32 (%+.4f%%)\n", GetParam().c_str(), p,
                std::string(dtype_name(b.type)).c_str(), base, 100 * (p / base - 1));
  }
}

// From BOS, as `generate` streams by default (sink 4 and the rest of the training context as the
// window), through the window's evictions.
TEST_P(KvTypes, GreedyF16StreamEqualsF32) {
  const std::string model = fixture("models/" + GetParam());
  CacheConfig c32 = cache_config(Policy::Sink, 4, GetParam() == "stories260K.gguf" ? 508 : 252, 64), c16 = c32;
  c16.kv_type = DType::F16;
  Rig a(model, c32), b(model, c16);
  const size_t V = size_t(a.vocab());
  std::vector<float> la(V), lb(V);
  Stream sa(*a.ls), sb(*b.ls);
  int32_t ta = 1, tb = 1;  // BOS
  for (int i = 0; i < 1200; ++i) {
    sa.feed({&ta, 1}, la.data());
    sb.feed({&tb, 1}, lb.data());
    ta = int32_t(std::max_element(la.begin(), la.end()) - la.begin());
    tb = int32_t(std::max_element(lb.begin(), lb.end()) - lb.begin());
    std::vector<float> top = la;
    std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<>());
    ASSERT_EQ(ta, tb) << "greedy token " << i << " (F32 top-2 margin " << top[0] - top[1] << ")";
  }
  EXPECT_EQ(b.cache->token_bytes() * 2, a.cache->token_bytes());
  EXPECT_EQ(b.cache->pool_bytes() * 2, a.cache->pool_bytes());
}

INSTANTIATE_TEST_SUITE_P(Models, KvTypes, ::testing::Values("stories260K.gguf", "gutenberg-1m.gguf"),
                         [](const auto& info) { return info.param == "stories260K.gguf" ? std::string("stories260K") : std::string("gutenberg_1m"); });

TEST(KvTypeBytes, EveryTypeSizesRowsAsItsBlocks) {
  auto backend = make_cpu_backend(1);
  for (auto [t, bytes] : {std::pair{DType::F32, 4 * 64}, {DType::F16, 2 * 64}, {DType::BF16, 2 * 64},
                          {DType::Q8_0, 2 * 34}}) {
    CacheConfig c = cache_config(Policy::Sink, 4, 60, 8);
    c.kv_type = t;
    KVCache cache(*backend, 3, 64, c, 2);
    EXPECT_EQ(cache.token_bytes(), 2 * 3 * bytes) << dtype_name(t);
    EXPECT_EQ(cache.pool_bytes(), 2 * (4 + 60 + 8) * cache.token_bytes()) << dtype_name(t);
  }
  CacheConfig c = cache_config(Policy::Sink, 4, 60, 8);
  c.kv_type = DType::Q8_0;
  EXPECT_THROW(KVCache(*backend, 1, 48, c, 1), std::invalid_argument);  // 48 is not whole blocks of 32
  EXPECT_EQ(parse_kv_type("q8_0"), DType::Q8_0);
  EXPECT_THROW(parse_kv_type("f8"), std::invalid_argument);
}

}  // namespace
