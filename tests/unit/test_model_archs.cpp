// The llama family's variations against the plain reference: qwen2 (q/k/v biases, rotation of
// halves), linear RoPE scaling, untied output, GQA, with the sink cache evicting and prompts fed in
// chunks. The models are tiny random ones written by the test.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "tests/model_rig.h"
#include "tests/reference_model.h"

using namespace sinkserve;
using namespace sinkserve::test;

namespace {

struct Shape {
  std::string arch;
  int dim = 64, layers = 2, heads = 4, kv_heads = 2, ffn = 96, vocab = 300;
  float rope_base = 10000, rope_linear_factor = 0;  // 0: no scaling
  bool mixed_types = false;  // V and up in F16, the rest F32: Q|K|V and gate|up cannot be stacked
};

std::string write_model(const Shape& s, const std::string& name) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  GGUFWriter w;
  const std::string a = s.arch;
  w.set_string("general.architecture", a);
  w.set_u32(a + ".block_count", uint32_t(s.layers));
  w.set_u32(a + ".embedding_length", uint32_t(s.dim));
  w.set_u32(a + ".feed_forward_length", uint32_t(s.ffn));
  w.set_u32(a + ".attention.head_count", uint32_t(s.heads));
  w.set_u32(a + ".attention.head_count_kv", uint32_t(s.kv_heads));
  w.set_u32(a + ".context_length", 512);
  w.set_f32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_f32(a + ".rope.freq_base", s.rope_base);
  if (s.rope_linear_factor > 0) {
    w.set_string(a + ".rope.scaling.type", "linear");
    w.set_f32(a + ".rope.scaling.factor", s.rope_linear_factor);
  }
  auto tensor = [&](const std::string& n, std::vector<int64_t> ne, float scale, float offset = 0) {
    int64_t count = 1;
    for (int64_t d : ne) count *= d;
    std::vector<float> v(static_cast<size_t>(count));
    for (float& x : v) x = offset + scale * normal(rng);
    const bool f16 = s.mixed_types && (n.ends_with("attn_v.weight") || n.ends_with("ffn_up.weight"));
    if (!f16) return w.add_tensor(n, DType::F32, ne, v.data(), v.size() * sizeof(float));
    std::vector<uint8_t> half(size_t(dtype_row_bytes(DType::F16, count)));
    quantize_row(DType::F16, v.data(), half.data(), count);
    w.add_tensor(n, DType::F16, ne, half.data(), half.size());
  };
  const int hd = s.dim / s.heads;
  const float wscale = 1.0f / std::sqrt(float(s.dim));
  tensor("token_embd.weight", {s.dim, s.vocab}, 1.0f);
  tensor("output_norm.weight", {s.dim}, 0.1f, 1.0f);
  tensor("output.weight", {s.dim, s.vocab}, wscale);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    tensor(p + "attn_norm.weight", {s.dim}, 0.1f, 1.0f);
    tensor(p + "ffn_norm.weight", {s.dim}, 0.1f, 1.0f);
    tensor(p + "attn_q.weight", {s.dim, s.heads * hd}, wscale);
    tensor(p + "attn_k.weight", {s.dim, s.kv_heads * hd}, wscale);
    tensor(p + "attn_v.weight", {s.dim, s.kv_heads * hd}, wscale);
    tensor(p + "attn_output.weight", {s.heads * hd, s.dim}, wscale);
    tensor(p + "ffn_gate.weight", {s.dim, s.ffn}, wscale);
    tensor(p + "ffn_up.weight", {s.dim, s.ffn}, wscale);
    tensor(p + "ffn_down.weight", {s.ffn, s.dim}, 1.0f / std::sqrt(float(s.ffn)));
    if (a == "qwen2") {
      tensor(p + "attn_q.bias", {s.heads * hd}, 0.5f);
      tensor(p + "attn_k.bias", {s.kv_heads * hd}, 0.5f);
      tensor(p + "attn_v.bias", {s.kv_heads * hd}, 0.5f);
    }
  }
  const std::string path = (std::filesystem::temp_directory_path() / name).string();
  w.write(path);
  return path;
}

// Streams 300 random tokens in chunks of 7 through a sink cache of 4 + 30 and compares every
// token's logits with the reference re-rotating its cache each step.
void expect_matches_reference(const Shape& s, const std::string& name) {
  const std::string path = write_model(s, name);
  Rig rig(path, cache_config(Policy::Sink, 4, 30, 7));
  ReferenceModel ref(*rig.file, 4, 30);
  std::mt19937 rng(3);
  std::vector<int32_t> ids(300);
  for (auto& t : ids) t = int32_t(rng() % uint32_t(s.vocab));
  const size_t V = size_t(rig.vocab());
  std::vector<float> got(ids.size() * V);
  {
    Stream st(*rig.ls);
    st.feed(ids, got.data(), true);
  }
  float worst = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    const std::vector<float> want = ref.step(ids[t]);
    for (size_t j = 0; j < V; ++j) worst = std::max(worst, std::fabs(want[j] - got[t * V + j]));
  }
  EXPECT_LT(worst, 1e-4f) << name;
  std::filesystem::remove(path);
}

TEST(ModelArchs, Qwen2BiasesAndNeoxRotation) {
  Shape s;
  s.arch = "qwen2";
  s.rope_base = 1e6f;
  expect_matches_reference(s, "sinkserve-test-qwen2.gguf");
}

TEST(ModelArchs, MistralWithLinearRopeScaling) {
  Shape s;
  s.arch = "mistral";
  s.rope_linear_factor = 4.0f;
  expect_matches_reference(s, "sinkserve-test-mistral.gguf");
}

// The unstacked path: projections whose types differ are multiplied one by one.
TEST(ModelArchs, ProjectionsOfDifferentTypes) {
  Shape s;
  s.arch = "qwen2";
  s.mixed_types = true;
  expect_matches_reference(s, "sinkserve-test-mixed.gguf");
}

TEST(ModelArchs, LlamaMultiQueryAttention) {
  Shape s;
  s.arch = "llama";
  s.kv_heads = 1;
  expect_matches_reference(s, "sinkserve-test-mqa.gguf");
}

}  // namespace
