// The forward pass and the attention-sink cache against plain references, on real trained models.
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/sampler.h"
#include "tests/model_rig.h"
#include "tests/reference_model.h"

using namespace sinkserve;
using namespace sinkserve::test;

namespace {

const std::string kStories = "models/stories260K.gguf";
const std::string kText = "texts/pg1342_pride_and_prejudice.txt";

float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Logits of every token, streamed one by one through a fresh session.
std::vector<float> stream_one_by_one(Rig& rig, const std::vector<int32_t>& ids, int64_t offset = 0) {
  const size_t V = size_t(rig.vocab());
  std::vector<float> out(ids.size() * V);
  Stream s(*rig.ls, SampleOn::Host, offset);
  for (size_t t = 0; t < ids.size(); ++t) s.feed({&ids[t], 1}, &out[t * V]);
  return out;
}

// Largest logit difference between the engine's logits (ids.size() rows) and the reference
// stepping through the same tokens.
float worst_vs_reference(ReferenceModel& ref, const std::vector<int32_t>& ids, const std::vector<float>& got) {
  const size_t V = size_t(ref.vocab());
  float worst = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    const std::vector<float> want = ref.step(ids[t]);
    worst = std::max(worst, max_abs_diff(want.data(), &got[t * V], V));
  }
  return worst;
}

// stories260K from BOS with no prompt, as llama2.c's `run` does with 256 steps: it samples after
// each of positions 0..255 (BOS at 0), so up to 256 new tokens, stopping when BOS is produced. Its
// output ends with the newline it prints after the story.
// `on_backend`: tokens drawn by Backend::sample instead of on the host.
std::string llama2c_run(const SamplingParams& sp, bool on_backend = false) {
  Rig rig(fixture(kStories), cache_config(Policy::Sink, 4, 508));
  auto tok = load_tokenizer(*rig.file);
  Stream s(*rig.ls, on_backend ? SampleOn::Backend : SampleOn::Host);
  int32_t t = tok->bos();
  Sampler sampler(sp);
  StreamDecoder dec(*tok);
  std::string text;
  for (int i = 0; i < 256; ++i) {
    t = s.feed_and_sample({&t, 1}, sampler);
    if (t == tok->bos()) break;
    text += dec.push(t);
  }
  return text + dec.flush() + "\n";
}

TEST(Model, GreedyFromBosReproducesLlama2cReference) {
  EXPECT_EQ(llama2c_run(SamplingParams{}), read_file(fixture("models/stories260K.greedy-256.txt")));
}

TEST(Model, GreedyDrawnOnTheBackendReproducesLlama2cReference) {
  EXPECT_EQ(llama2c_run(SamplingParams{}, true), read_file(fixture("models/stories260K.greedy-256.txt")));
}

TEST(Model, TemperatureTopPReproducesLlama2cSampler) {
  SamplingParams sp;
  sp.temperature = 1.0f;
  sp.top_p = 0.9f;
  sp.seed = 133742;
  EXPECT_EQ(llama2c_run(sp), read_file(fixture("models/stories260K.t1-p0.9-s133742.txt")));
}

TEST(Model, BatchedPromptEqualsTokenByToken) {
  const std::vector<int32_t> ids = text_tokens(GGUFFile(fixture(kStories)), fixture(kText), 120);
  Rig one(fixture(kStories), cache_config(Policy::Sink, 4, 508, 1));
  Rig batch(fixture(kStories), cache_config(Policy::Sink, 4, 508, 128));
  const std::vector<float> ref = stream_one_by_one(one, ids);
  std::vector<float> got(ref.size());
  Stream s(*batch.ls);
  s.feed(ids, got.data(), true);
  EXPECT_LT(max_abs_diff(ref.data(), got.data(), ref.size()), 1e-4f);
}

TEST(Model, MatchesPlainReferenceWithoutEviction) {
  const std::vector<int32_t> ids = text_tokens(GGUFFile(fixture(kStories)), fixture(kText), 300);
  Rig rig(fixture(kStories), cache_config(Policy::Dense, 0, 512));
  ReferenceModel ref(*rig.file, 0, -1);
  const std::vector<float> got = stream_one_by_one(rig, ids);
  EXPECT_LT(worst_vs_reference(ref, ids, got), 1e-4f);
}

TEST(SinkCache, EqualsDenseBeforeAnyEviction) {
  const std::vector<int32_t> ids = text_tokens(GGUFFile(fixture(kStories)), fixture(kText), 250);
  Rig sink(fixture(kStories), cache_config(Policy::Sink, 4, 252));
  Rig dense(fixture(kStories), cache_config(Policy::Dense, 0, 512));
  const std::vector<float> a = stream_one_by_one(sink, ids), b = stream_one_by_one(dense, ids);
  EXPECT_LT(max_abs_diff(a.data(), b.data(), a.size()), 1e-5f);
}

// The engine stores keys rotated once at their stream position and rotates the query twice; the
// reference re-rotates every cached key at its in-cache position on every step.
TEST(SinkCache, RotationSchemeEqualsRerotatingReferenceAfterEvictions) {
  const std::vector<int32_t> ids = text_tokens(GGUFFile(fixture(kStories)), fixture(kText), 3000);
  Rig rig(fixture(kStories), cache_config(Policy::Sink, 4, 60));
  ReferenceModel ref(*rig.file, 4, 60);
  const std::vector<float> got = stream_one_by_one(rig, ids);
  EXPECT_LT(worst_vs_reference(ref, ids, got), 1e-4f);
}

TEST(SinkCache, WindowPolicyEqualsReferenceWindow) {
  const std::vector<int32_t> ids = text_tokens(GGUFFile(fixture(kStories)), fixture(kText), 500);
  Rig rig(fixture(kStories), cache_config(Policy::Window, 0, 50));
  ReferenceModel ref(*rig.file, 0, 50);
  const std::vector<float> got = stream_one_by_one(rig, ids);
  EXPECT_LT(worst_vs_reference(ref, ids, got), 1e-4f);
}

TEST(SinkCache, StreamOffsetDoesNotChangeLogits) {
  const std::vector<int32_t> ids = text_tokens(GGUFFile(fixture(kStories)), fixture(kText), 1000);
  Rig rig(fixture(kStories), cache_config(Policy::Sink, 4, 60));
  const std::vector<float> a = stream_one_by_one(rig, ids, 0);
  const std::vector<float> b = stream_one_by_one(rig, ids, int64_t(1) << 40);
  EXPECT_LT(max_abs_diff(a.data(), b.data(), a.size()), 1e-4f);
}

TEST(SinkCache, ChunkedPrefillEqualsTokenByToken) {
  const std::vector<int32_t> ids = text_tokens(GGUFFile(fixture(kStories)), fixture(kText), 1200);
  Rig one(fixture(kStories), cache_config(Policy::Sink, 4, 60, 1));
  const std::vector<float> ref = stream_one_by_one(one, ids);
  for (int chunk : {1, 7, 64, 500}) {
    Rig rig(fixture(kStories), cache_config(Policy::Sink, 4, 60, chunk));
    std::vector<float> got(ref.size());
    Stream s(*rig.ls);
    s.feed(ids, got.data(), true);
    EXPECT_LT(max_abs_diff(ref.data(), got.data(), ref.size()), 1e-4f) << "chunk " << chunk;
  }
}

TEST(SinkCache, RecomputeEqualsWindowReference) {
  // Recompute rebuilds the last W tokens at positions 0..W-1 every step: the reference's dense
  // attention over exactly those tokens.
  const std::vector<int32_t> ids = text_tokens(GGUFFile(fixture(kStories)), fixture(kText), 150);
  const int W = 40;
  Rig rig(fixture(kStories), cache_config(Policy::Recompute, 0, W));
  const std::vector<float> got = stream_one_by_one(rig, ids);
  const size_t V = size_t(rig.vocab());
  for (size_t t = 0; t < ids.size(); t += 37) {
    ReferenceModel ref(*rig.file, 0, -1);
    std::vector<float> want;
    for (size_t j = t + 1 > size_t(W) ? t + 1 - W : 0; j <= t; ++j) want = ref.step(ids[j]);
    EXPECT_LT(max_abs_diff(want.data(), &got[t * V], V), 1e-4f) << "token " << t;
  }
}

TEST(SinkCache, GutenbergModelWithUntiedHeadMatchesReference) {
  // gutenberg-1m has no output.weight (tied head) and head_dim 16.
  const std::vector<int32_t> ids = text_tokens(GGUFFile(fixture("models/gutenberg-1m.gguf")), fixture(kText), 400);
  Rig rig(fixture("models/gutenberg-1m.gguf"), cache_config(Policy::Sink, 4, 100, 16));
  ReferenceModel ref(*rig.file, 4, 100);
  std::vector<float> got(ids.size() * size_t(rig.vocab()));
  Stream s(*rig.ls);
  s.feed(ids, got.data(), true);
  EXPECT_LT(worst_vs_reference(ref, ids, got), 1e-4f);
}

}  // namespace
