// Every family of the architecture table against the plain reference (tests/reference_model.h),
// on random-weight models written by `sinkserve synth --arch`: 1,000 tokens streamed through a
// sink cache of 4 + 60 (the window evicted 15 times over), sink equal to dense before the first
// eviction, and chunked prefill equal to token-by-token feeding. Plus the refusals: unknown
// architecture, unknown RoPE scaling, a missing, foreign or mis-shaped tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "tests/fixtures.h"
#include "tests/model_rig.h"
#include "tests/reference_model.h"

using namespace sinkserve;
using namespace sinkserve::test;

namespace {

struct Family {
  std::string name;  // test name
  std::string synth;  // sinkserve synth options
};

void PrintTo(const Family& f, std::ostream* os) { *os << f.name; }

// Shapes small enough for the O(cache) reference, with GQA or MQA where the family has it.
const std::vector<Family> kFamilies = {
    {"llama3", "--arch llama --kv-heads 2 --rope-freqs --rot 16"},
    {"qwen2", "--arch qwen2 --kv-heads 2"},
    {"pythia", "--arch gptneox"},
    {"gptneox_sequential", "--arch gptneox --residual sequential"},
    {"falcon7b", "--arch falcon --kv-heads 1"},
    {"falcon40b", "--arch falcon --kv-heads 2"},
    {"mpt", "--arch mpt --clamp-kqv 0.9"},
    {"mpt_biases", "--arch mpt --biases"},
    {"phi2", "--arch phi2"},
    {"phi2_split_qkv", "--arch phi2 --qkv split"},
    {"stablelm", "--arch stablelm --kv-heads 2 --biases"},
    {"stablelm_parallel", "--arch stablelm --residual parallel"},
    {"gptj", "--arch gptj"},
};

class Families : public ::testing::TestWithParam<Family> {
 protected:
  static void SetUpTestSuite() { dir_ = make_temp_dir("families"); }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  std::string model() {
    const std::string path = (dir_ / (GetParam().name + ".gguf")).string();
    if (!std::filesystem::exists(path)) {
      const CliResult r = run_sinkserve(dir_, "synth --dim 64 --heads 4 --layers 2 --ffn 96 --vocab 300 --seed 3 " +
                                                  GetParam().synth + " --out " + path);
      EXPECT_EQ(r.code, 0) << r.err;
    }
    return path;
  }
  static std::vector<int32_t> random_ids(size_t n, int vocab) {
    std::mt19937 rng(11);
    std::vector<int32_t> ids(n);
    for (auto& t : ids) t = int32_t(rng() % uint32_t(vocab));
    return ids;
  }
  // Logits of every token, fed in chunks of `chunk`.
  static std::vector<float> stream(Rig& rig, const std::vector<int32_t>& ids, size_t chunk) {
    const size_t V = size_t(rig.vocab());
    std::vector<float> out(ids.size() * V);
    Stream s(*rig.ls);
    for (size_t t = 0; t < ids.size(); t += chunk) {
      const size_t n = std::min(chunk, ids.size() - t);
      s.feed({&ids[t], n}, &out[t * V], true);
    }
    return out;
  }
  static float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    float m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
  }

  static inline std::filesystem::path dir_;
};

TEST_P(Families, SinkCacheEqualsReferenceThroughEvictions) {
  const std::string path = model();
  Rig rig(path, cache_config(Policy::Sink, 4, 60, 16));
  ReferenceModel ref(*rig.file, 4, 60);
  const std::vector<int32_t> ids = random_ids(1000, rig.vocab());
  const std::vector<float> got = stream(rig, ids, 16);
  const size_t V = size_t(rig.vocab());
  float worst = 0, scale = 0;
  for (size_t t = 0; t < ids.size(); ++t) {
    const std::vector<float> want = ref.step(ids[t]);
    for (size_t j = 0; j < V; ++j) {
      worst = std::max(worst, std::fabs(want[j] - got[t * V + j]));
      scale = std::max(scale, std::fabs(want[j]));
    }
  }
  EXPECT_GT(scale, 0.05f) << "logits too small to compare";
  EXPECT_LT(worst, 2e-4f) << GetParam().name << ": largest logit difference (largest logit " << scale << ")";
}

TEST_P(Families, SinkEqualsDenseBeforeTheFirstEviction) {
  const std::string path = model();
  Rig sink(path, cache_config(Policy::Sink, 4, 60, 8)), dense(path, cache_config(Policy::Dense, 0, 64, 8));
  const std::vector<int32_t> ids = random_ids(64, sink.vocab());
  EXPECT_LT(max_abs_diff(stream(sink, ids, 8), stream(dense, ids, 8)), 1e-5f);
}

TEST_P(Families, ChunkedPrefillEqualsTokenByToken) {
  const std::string path = model();
  Rig rig(path, cache_config(Policy::Sink, 4, 60, 64));
  const std::vector<int32_t> ids = random_ids(300, rig.vocab());
  const std::vector<float> one = stream(rig, ids, 1);
  for (size_t chunk : {7, 64}) EXPECT_LT(max_abs_diff(one, stream(rig, ids, chunk)), 2e-5f) << "chunk " << chunk;
}

// Llama-3 as users have it: its byte-level BPE vocabulary (pre-tokenizer llama-bpe, 128,256
// tokens), rope_freqs factors and tied embeddings (3.2): loads, tokenizes and streams.
TEST(Llama3, StreamsWithItsVocabularyAndRopeFactors) {
  const std::filesystem::path dir = make_temp_dir("llama3");
  const std::string path = (dir / "l3.gguf").string();
  CliResult r = run_sinkserve(dir, "synth --arch llama --dim 64 --heads 4 --kv-heads 2 --layers 2 --ffn 96 --tied "
                                   "--rope-freqs --rot 16 --tokenizer-from " +
                                       fixture("tokenizers/ggml-vocab-llama-bpe.gguf") + " --out " + path);
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_sinkserve(dir, "inspect --model " + path);
  EXPECT_NE(r.out.find("rope_freqs factors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("output head tied"), std::string::npos) << r.out;
  r = run_sinkserve(dir, "tokenize --ids --no-bos --text 'Hello world' --model " + path);
  EXPECT_EQ(r.out, "9906 1917\n") << r.err;
  r = run_sinkserve(dir, "generate -n 40 --window 28 --prompt 'Once upon a time' --model " + path);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("generated:"), std::string::npos) << r.err;
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Synth, Families, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// Refusals: exit code 1 and a message naming the key or tensor.

class FamilyErrors : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir("family_errors"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A synth model with metadata and tensors changed as `edit` says, rewritten through GGUFWriter.
  std::string edited(const std::string& synth, const std::function<void(GGUFWriter&, const GGUFFile&)>& edit,
                     const std::function<bool(const std::string&)>& drop = nullptr) {
    const std::string src = (dir_ / "src.gguf").string(), out = (dir_ / "edited.gguf").string();
    EXPECT_EQ(run_sinkserve(dir_, "synth --dim 64 --heads 4 --layers 2 --ffn 96 " + synth + " --out " + src).code, 0);
    const GGUFFile f(src);
    GGUFWriter w;
    for (const auto& [k, v] : f.metadata()) w.set(k, v);
    for (const GGUFTensorInfo& t : f.tensors())
      if (!drop || !drop(t.name)) w.add_tensor(t.name, t.type, t.ne, t.data, t.bytes);
    edit(w, f);
    w.write(out);
    return out;
  }
  // Metadata problems are found by every command that reads the model, tensor problems by those
  // that load the weights.
  void expect_refused(const std::string& model, const std::string& needle, bool metadata = false) {
    for (const char* cmd : {"generate -n 2 --model ", "inspect --model "}) {
      if (!metadata && cmd[0] == 'i') break;
      const CliResult r = run_sinkserve(dir_, cmd + model);
      EXPECT_EQ(r.code, 1) << cmd << r.err;
      EXPECT_NE(r.err.find(needle), std::string::npos) << cmd << "stderr: " << r.err;
    }
  }
  std::filesystem::path dir_;
};

TEST_F(FamilyErrors, UnknownArchitectureIsNamed) {
  expect_refused(edited("--arch gptj", [](GGUFWriter& w, const GGUFFile&) {
                   w.set_string("general.architecture", "bloom");
                 }),
                 "architecture 'bloom' is not supported", true);
}

TEST_F(FamilyErrors, UnknownRopeScalingIsNamed) {
  expect_refused(edited("--arch llama", [](GGUFWriter& w, const GGUFFile&) {
                   w.set_string("llama.rope.scaling.type", "yarn");
                 }),
                 "llama.rope.scaling.type is 'yarn'", true);
}

TEST_F(FamilyErrors, MissingTensorIsNamed) {
  expect_refused(edited("--arch gptneox", [](GGUFWriter&, const GGUFFile&) {},
                        [](const std::string& n) { return n == "blk.1.ffn_up.bias"; }),
                 "'blk.1.ffn_up.bias' not found");
  expect_refused(edited("--arch falcon", [](GGUFWriter&, const GGUFFile&) {},
                        [](const std::string& n) { return n == "blk.0.attn_qkv.weight"; }),
                 "'blk.0.attn_qkv.weight' not found");
}

TEST_F(FamilyErrors, ForeignTensorIsNamed) {
  expect_refused(edited("--arch stablelm", [](GGUFWriter& w, const GGUFFile&) {
                   const std::vector<float> z(16, 0.0f);
                   w.add_tensor("blk.0.attn_q_norm.weight", DType::F32, {16}, z.data(), z.size() * 4);
                 }),
                 "'blk.0.attn_q_norm.weight' is not part of a stablelm layer");
}

TEST_F(FamilyErrors, MisShapedTensorIsNamed) {
  expect_refused(edited("--arch phi2", [](GGUFWriter& w, const GGUFFile&) {
                   const std::vector<float> z(96 * 65, 0.0f);
                   w.add_tensor("blk.0.ffn_up.weight", DType::F32, {65, 96}, z.data(), z.size() * 4);
                 },
                        [](const std::string& n) { return n == "blk.0.ffn_up.weight"; }),
                 "blk.0.ffn_up.weight");
  expect_refused(edited("--arch llama --rot 16", [](GGUFWriter& w, const GGUFFile&) {
                   const std::vector<float> f(5, 1.0f);
                   w.add_tensor("rope_freqs.weight", DType::F32, {5}, f.data(), f.size() * 4);
                 }),
                 "rope_freqs.weight");
}

}  // namespace
