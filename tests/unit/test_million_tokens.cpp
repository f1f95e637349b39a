// The product's promise: memory is constant in stream length. One session streams a million
// tokens of a real text (repeated) through stories260K under the sink policy, with the cache in
// F32 and in F16 (the commands' default, half the bytes).
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/process_memory.h"
#include "tests/model_rig.h"

using namespace sinkserve;
using namespace sinkserve::test;

class ConstantMemory : public ::testing::TestWithParam<DType> {};

TEST_P(ConstantMemory, MillionTokenStreamKeepsRssAndKvBytesFlat) {
  const int64_t kTotal = 1'000'000, kEarly = 10'000;
  CacheConfig cc = cache_config(Policy::Sink, 4, 60);
  cc.kv_type = GetParam();
  Rig rig(fixture("models/stories260K.gguf"), cc);
  const std::vector<int32_t> text = text_tokens(*rig.file, fixture("texts/tinyshakespeare_input.txt"), 50'000);
  std::vector<float> logits(static_cast<size_t>(rig.vocab()));
  Stream s(*rig.ls);
  const int64_t pool = rig.cache->pool_bytes();
  int64_t rss_early = 0, kv_early = 0;
  double nll_early = 0, nll_late = 0;  // tokens [10K, 110K) and [900K, 1M)
  for (int64_t t = 0; t < kTotal; ++t) {
    const int32_t tok = text[size_t(t % int64_t(text.size()))];
    if (t > 0) {  // the model stays fluent: it keeps predicting the text
      float mx = logits[0];
      for (float v : logits) mx = std::max(mx, v);
      double z = 0;
      for (float v : logits) z += std::exp(double(v - mx));
      const double nll = std::log(z) + mx - logits[size_t(tok)];
      if (t >= kEarly && t < kEarly + 100'000) nll_early += nll;
      if (t >= kTotal - 100'000) nll_late += nll;
    }
    s.feed({&tok, 1}, logits.data());
    if (t + 1 == kEarly) {
      rss_early = resident_bytes();
      kv_early = rig.cache->live_bytes(s.slot());
    }
  }
  const int64_t rss_end = resident_bytes();
  ASSERT_GT(rss_early, 0);
  EXPECT_EQ(s.tokens(), kTotal);
  EXPECT_EQ(rig.cache->live_bytes(s.slot()), kv_early) << "KV bytes must not change with stream length";
  EXPECT_EQ(rig.cache->pool_bytes(), pool);
  EXPECT_EQ(rig.cache->cached_tokens(s.slot()), 64);
  EXPECT_LE(std::fabs(double(rss_end - rss_early)) / double(rss_early), 0.02)
      << "RSS after 10K tokens " << rss_early << " bytes, after 1M " << rss_end;
  const double ppl_early = std::exp(nll_early / 1e5), ppl_late = std::exp(nll_late / 1e5);
  std::printf("1M tokens: RSS %lld -> %lld bytes, KV %lld bytes, perplexity %.2f (10K-110K) -> %.2f (900K-1M)\n",
              (long long)rss_early, (long long)rss_end, (long long)kv_early, ppl_early, ppl_late);
  // The text repeats, so a stream that stays fluent scores its last 100K tokens like earlier ones.
  EXPECT_LT(ppl_late, 1.05 * ppl_early) << "the stream degraded over a million tokens";
  // The same geometry in F32 holds exactly twice the bytes of F16 (and of BF16).
  const int64_t f32_bytes = int64_t(rig.model->local_kv_dim()) * 4 * 2 * rig.model->config().n_layers;
  EXPECT_EQ(rig.cache->token_bytes() * (GetParam() == DType::F32 ? 1 : 2), f32_bytes);
}

INSTANTIATE_TEST_SUITE_P(KvTypes, ConstantMemory, ::testing::Values(DType::F32, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });
