// Hugging Face checkpoint directories against the GGUF of the same model (the shared fixtures
// gutenberg-1m-hf/, gutenberg-1m-hf-bf16/ and gutenberg-1m.gguf): hyper-parameters, weights, the
// per-token NLL of a stream with evictions, greedy tokens, the tokenizers; every family with a
// checkpoint layout through `synth --format hf` against its GGUF; hf-fake-gpt2's tokenizer.json
// against GPT-2's reference vectors, and Llama-2's vocabulary converted to tokenizer.json against
// its own; the safetensors reader's refusals; and corrupt checkpoints (copies of the fixture,
// corrupted in a scratch directory) refused with messages that name the file and the problem,
// never a crash.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "runtime/hf_checkpoint.h"
#include "runtime/model_config.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer.h"
#include "tests/cache_config.h"
#include "tests/fixtures.h"
#include "tests/model_rig.h"
#include "tests/tokenizer_vectors.h"

using namespace sinkserve;
using namespace sinkserve::test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

fs::path tmp_dir() {
  static const fs::path d = make_temp_dir("test_hf_checkpoint");
  return d;
}

std::string model(const std::string& name) { return fixture("models/" + name); }

// A writable copy of a fixture directory, made afresh.
fs::path copy_of(const std::string& name, const std::string& tag) {
  const fs::path d = tmp_dir() / tag;
  fs::remove_all(d);
  fs::copy(model(name), d, fs::copy_options::recursive);
  for (const auto& e : fs::directory_iterator(d))
    fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write);
  return d;
}

json read_json(const fs::path& p) { return json::parse(read_file(p)); }
void write_json(const fs::path& p, const json& j) { write_bytes(p, j.dump(2)); }

// What opening a directory (and building its config and tokenizer) throws: the GGUFError's
// message, or "" when it opens. Any other exception escapes and fails the test.
std::string open_error(const fs::path& dir, ModelParts parts = ModelParts::All) {
  try {
    const auto f = open_model(dir.string(), parts);
    if (parts == ModelParts::All) read_model_config(*f);
    load_tokenizer(*f);
    return "";
  } catch (const GGUFError& e) {
    return e.what();
  }
}

#define EXPECT_OPEN_ERROR(dir, file, problem)                                              \
  do {                                                                                     \
    const std::string err_ = open_error(dir);                                              \
    EXPECT_NE(err_.find(file), std::string::npos) << "no file in: '" << err_ << "'";       \
    EXPECT_NE(err_.find(problem), std::string::npos) << "no problem in: '" << err_ << "'"; \
  } while (0)

// Per-token NLL of ids[1..] fed one by one through a sink cache of 4 + 60 in F32 (2,000 tokens
// evict the window 32 times over).
std::vector<double> stream_nll(const std::string& path, const std::vector<int32_t>& ids) {
  Rig rig(path, cache_config(Policy::Sink, 4, 60));
  const size_t V = size_t(rig.vocab());
  std::vector<float> logits(V);
  std::vector<double> nll;
  Stream s(*rig.ls);
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    s.feed({&ids[i], 1}, logits.data());
    double mx = logits[0], z = 0;
    for (float v : logits) mx = std::max(mx, double(v));
    for (float v : logits) z += std::exp(double(v) - mx);
    nll.push_back(std::log(z) + mx - logits[size_t(ids[i + 1])]);
  }
  return nll;
}

std::vector<int32_t> greedy(const std::string& path, int n) {
  Rig rig(path, cache_config(Policy::Sink, 4, 60));
  std::vector<float> logits(size_t(rig.vocab()));
  std::vector<int32_t> out;
  Stream s(*rig.ls);
  int32_t t = load_tokenizer(*rig.file)->bos();
  for (int i = 0; i < n; ++i) {
    s.feed({&t, 1}, logits.data());
    t = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(t);
  }
  return out;
}

std::vector<int32_t> pride_tokens(size_t n) {
  const auto f = open_model(model("gutenberg-1m.gguf"));
  return text_tokens(*f, fixture("texts/pg1342_pride_and_prejudice.txt"), n);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The checkpoint is the GGUF's model

TEST(HfCheckpoint, ConfigMatchesTheGguf) {
  const auto hf = open_model(model("gutenberg-1m-hf"));
  const auto gg = open_model(model("gutenberg-1m.gguf"));
  EXPECT_EQ(hf->format(), ModelFormat::HfCheckpoint);
  EXPECT_EQ(hf->sources().size(), 2u);
  const ModelConfig a = read_model_config(*hf), b = read_model_config(*gg);
  EXPECT_EQ(a.arch, "llama");
  EXPECT_EQ(a.name, "gutenberg-1m-hf");
  for (auto [x, y] : {std::pair{a.n_layers, b.n_layers}, {a.dim, b.dim}, {a.n_heads, b.n_heads},
                      {a.n_kv_heads, b.n_kv_heads}, {a.head_dim, b.head_dim}, {a.ffn, b.ffn}, {a.vocab, b.vocab},
                      {a.rope.rotated(a.head_dim), b.rope.rotated(b.head_dim)}})
    EXPECT_EQ(x, y);
  EXPECT_FLOAT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_FLOAT_EQ(a.rope.freq_base, b.rope.freq_base);
  EXPECT_EQ(a.ctx_train, b.ctx_train);
  EXPECT_TRUE(a.tied_output);
  EXPECT_TRUE(b.tied_output);
  // The one difference: the rows as stored rotate halves in the checkpoint, adjacent pairs in
  // the GGUF (whose converter permuted q and k).
  EXPECT_TRUE(a.rope.neox);
  EXPECT_FALSE(b.rope.neox);
}

// Every tensor holds the GGUF's values: bit for bit, q and k after llama.cpp's row permutation
// (GGUF row h*d + 2i + j is checkpoint row h*d + j*d/2 + i).
TEST(HfCheckpoint, WeightsAreTheGgufsBitForBit) {
  const auto hf = open_model(model("gutenberg-1m-hf"));
  const auto gg = open_model(model("gutenberg-1m.gguf"));
  const ModelConfig c = read_model_config(*gg);
  ASSERT_EQ(hf->tensors().size(), gg->tensors().size());
  for (const GGUFTensorInfo& g : gg->tensors()) {
    const GGUFTensorInfo* h = hf->find_tensor(g.name);
    ASSERT_NE(h, nullptr) << g.name;
    ASSERT_EQ(h->ne, g.ne) << g.name;
    ASSERT_EQ(h->type, g.type) << g.name;
    std::vector<uint8_t> hb(size_t(h->bytes)), gb(size_t(g.bytes));
    hf->read(*h, 0, hb.size(), hb.data());
    gg->read(g, 0, gb.size(), gb.data());
    const bool qk = g.name.ends_with("attn_q.weight") || g.name.ends_with("attn_k.weight");
    if (!qk) {
      EXPECT_EQ(hb, gb) << g.name;
      continue;
    }
    const int64_t row = g.ne[0] * 4, d = c.head_dim, heads = g.ne[1] / d;
    int64_t differ = 0;
    for (int64_t hd = 0; hd < heads; ++hd)
      for (int64_t i = 0; i < d / 2; ++i)
        for (int64_t j = 0; j < 2; ++j)
          differ += std::memcmp(&gb[size_t((hd * d + 2 * i + j) * row)], &hb[size_t((hd * d + j * d / 2 + i) * row)],
                                size_t(row)) != 0;
    EXPECT_EQ(differ, 0) << g.name;
  }
}

TEST(HfCheckpoint, F32StreamsTheGgufsNllWithEvictions) {
  const std::vector<int32_t> ids = pride_tokens(2001);
  const std::vector<double> hf = stream_nll(model("gutenberg-1m-hf"), ids);
  const std::vector<double> gg = stream_nll(model("gutenberg-1m.gguf"), ids);
  ASSERT_EQ(hf.size(), 2000u);
  double worst = 0, sum = 0;
  for (size_t i = 0; i < hf.size(); ++i) {
    worst = std::max(worst, std::fabs(hf[i] - gg[i]));
    sum += gg[i];
  }
  std::printf("gutenberg-1m-hf (F32) vs gguf over 2000 tokens, sink 4 + window 60: max |dNLL| %.3g, ppl %.4f\n",
              worst, std::exp(sum / double(gg.size())));
  EXPECT_LE(worst, 1e-5);
}

// BF16 weights (round to nearest even of the F32 values): the README of the fixtures measured a
// numpy float64 reference at mean 3.1e-3 and max 2.8e-2 over 256 tokens; the bound is theirs.
TEST(HfCheckpoint, Bf16StaysWithinItsBound) {
  const std::vector<int32_t> ids = pride_tokens(2001);
  const std::vector<double> hf = stream_nll(model("gutenberg-1m-hf-bf16"), ids);
  const std::vector<double> gg = stream_nll(model("gutenberg-1m.gguf"), ids);
  double worst = 0, mean = 0;
  for (size_t i = 0; i < hf.size(); ++i) {
    worst = std::max(worst, std::fabs(hf[i] - gg[i]));
    mean += std::fabs(hf[i] - gg[i]) / double(hf.size());
  }
  std::printf("gutenberg-1m-hf-bf16 vs gguf over 2000 tokens: mean |dNLL| %.3g, max %.3g\n", mean, worst);
  EXPECT_LT(mean, 1e-2);
  EXPECT_LT(worst, 0.1);
  EXPECT_GT(mean, 0.0) << "BF16 weights gave exactly the F32 numbers: were they read as BF16?";
}

TEST(HfCheckpoint, GreedyTokensEqualTheGguf) {
  const std::vector<int32_t> a = greedy(model("gutenberg-1m-hf"), 300), b = greedy(model("gutenberg-1m.gguf"), 300);
  EXPECT_EQ(a, b);
}

// ---------------------------------------------------------------------------------------------
// Every family's checkpoint layout: `synth --format hf` writes the model `synth` writes as GGUF
// with its rows where the family's checkpoints keep them (q/k of llama and mistral, per-head or
// per-group fused QKV of GPT-NeoX and Falcon, Phi's fused QKV split), and the directory must stream
// the GGUF's logits through evictions.

namespace {

struct Family {
  std::string name, synth;
};
void PrintTo(const Family& f, std::ostream* os) { *os << f.name; }

const std::vector<Family> kFamilies = {
    {"llama_gqa", "--arch llama --kv-heads 2"},
    {"llama3_rope_freqs", "--arch llama --kv-heads 2 --rope-freqs --rot 16"},
    {"llama_fused_qkv", "--arch llama --kv-heads 2 --qkv fused --type BF16"},
    {"mistral_mqa", "--arch mistral --kv-heads 1 --type F16"},
    {"qwen2", "--arch qwen2 --kv-heads 2"},
    {"pythia", "--arch gptneox"},
    {"gptneox_sequential", "--arch gptneox --residual sequential"},
    {"falcon7b", "--arch falcon --kv-heads 1"},
    {"falcon40b", "--arch falcon --kv-heads 2"},
    {"phi2", "--arch phi2"},
    {"stablelm", "--arch stablelm --kv-heads 2 --biases"},
    {"stablelm_parallel", "--arch stablelm --residual parallel"},
    {"gptj", "--arch gptj"},
};

class HfFamilies : public ::testing::TestWithParam<Family> {};

}  // namespace

TEST_P(HfFamilies, CheckpointStreamsTheGgufsLogits) {
  const fs::path d = tmp_dir() / ("family_" + GetParam().name);
  const std::string opts = "synth --dim 64 --heads 4 --layers 2 --ffn 96 --vocab 300 --seed 3 " + GetParam().synth;
  CliResult r = run_sinkserve(tmp_dir(), opts + " --out " + (d.string() + ".gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  fs::remove_all(d);
  r = run_sinkserve(tmp_dir(), opts + " --format hf --shard-mb 1 --out " + d.string());
  ASSERT_EQ(r.code, 0) << r.err;
  Rig a(d.string(), cache_config(Policy::Sink, 4, 60)), b(d.string() + ".gguf", cache_config(Policy::Sink, 4, 60));
  EXPECT_EQ(a.file->format(), ModelFormat::HfCheckpoint);
  const ModelConfig& ca = a.model->config();
  const ModelConfig& cb = b.model->config();
  EXPECT_EQ(ca.parallel_residual, cb.parallel_residual);
  EXPECT_EQ(ca.rope.rotated(ca.head_dim), cb.rope.rotated(cb.head_dim));
  EXPECT_EQ(ca.tied_output, cb.tied_output);
  std::mt19937 rng(5);
  std::vector<int32_t> ids(400);
  for (int32_t& t : ids) t = int32_t(rng() % 300);
  const size_t V = size_t(a.vocab());
  std::vector<float> la(V), lb(V);
  Stream sa(*a.ls), sb(*b.ls);
  float worst = 0;
  for (int32_t t : ids) {
    sa.feed({&t, 1}, la.data());
    sb.feed({&t, 1}, lb.data());
    for (size_t j = 0; j < V; ++j) worst = std::max(worst, std::fabs(la[j] - lb[j]));
  }
  // Llama-3's rope factors come back from config.json computed in float32, as transformers does.
  EXPECT_LE(worst, GetParam().name == "llama3_rope_freqs" ? 1e-3f : 1e-5f);
}

INSTANTIATE_TEST_SUITE_P(All, HfFamilies, ::testing::ValuesIn(kFamilies),
                         [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// Tokenizers from tokenizer.json

// The GGUF's ids for llama.cpp's test strings and for 25 slices of 2,000 characters of every
// shared text (CRLF and BOM kept), with and without BOS; the decoded text too. "l r" merges
// (gutenberg-1m-hf) and ["l", "r"] pairs (gutenberg-1m-hf-bf16).
TEST(HfTokenizer, GutenbergEqualsTheGguf) {
  const auto gg_file = open_model(model("gutenberg-1m.gguf"));
  const auto gg = load_tokenizer(*gg_file);
  std::vector<std::string> texts;
  for (const auto& [text, ids] : read_vectors("ggml-vocab-llama-spm.gguf")) texts.push_back(text);
  const size_t n_vectors = texts.size();
  for (const auto& e : fs::directory_iterator(fs::path(fixtures_dir()) / "texts")) {
    const std::string all = read_file(e.path());
    for (int k = 0; k < 25; ++k) {
      size_t at = all.size() / 25 * size_t(k);
      while (at < all.size() && (uint8_t(all[at]) & 0xC0) == 0x80) ++at;  // whole characters only
      size_t end = at, chars = 0;
      while (end < all.size() && chars < 2000) {
        ++end;
        while (end < all.size() && (uint8_t(all[end]) & 0xC0) == 0x80) ++end;
        ++chars;
      }
      texts.push_back(all.substr(at, end - at));
    }
  }
  ASSERT_GT(texts.size(), n_vectors + 75);
  for (const char* dir : {"gutenberg-1m-hf", "gutenberg-1m-hf-bf16"}) {
    const auto hf_file = open_model(model(dir), ModelParts::Vocabulary);
    const auto hf = load_tokenizer(*hf_file);
    EXPECT_EQ(hf->bos(), gg->bos());
    EXPECT_EQ(hf->eos(), gg->eos());
    EXPECT_EQ(hf->vocab_size(), gg->vocab_size());
    size_t same = 0, tokens = 0;
    for (const std::string& t : texts) {
      for (bool bos : {false, true}) {
        const std::vector<int32_t> want = gg->encode(t, bos), got = hf->encode(t, bos);
        same += got == want;
        tokens += want.size();
        EXPECT_EQ(got, want) << dir << " on '" << visible_text(t.substr(0, 60)) << "'";
        if (bos) {
          EXPECT_EQ(hf->decode(got), gg->decode(want));
        }
      }
    }
    std::printf("%s: %zu/%zu encodings equal the GGUF's (%zu tokens)\n", dir, same, 2 * texts.size(), tokens);
  }
}

TEST(HfTokenizer, FakeGpt2GivesEveryGpt2Vector) {
  const auto f = open_model(model("hf-fake-gpt2"), ModelParts::Vocabulary);
  const auto tok = load_tokenizer(*f);
  EXPECT_EQ(tok->model_name(), "gpt2");
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->eos(), 50256);
  const auto vectors = read_vectors("ggml-vocab-gpt-2.gguf");
  ASSERT_FALSE(vectors.empty());
  for (const auto& [text, ids] : vectors) {
    EXPECT_EQ(tok->encode(text, false), ids) << "'" << visible_text(text) << "'";
    EXPECT_EQ(tok->decode(ids), text);
  }
}

// Llama-2's 32,000-piece SentencePiece vocabulary written as tokenizer.json the way transformers'
// LlamaConverter writes it (merges from each piece's splits, ordered by score), then read back as
// ranked BPE merges: llama.cpp's ids for every test string.
TEST(HfTokenizer, ConvertedLlama2VocabularyGivesItsVectors) {
  const fs::path d = tmp_dir() / "llama2_vocab";
  fs::remove_all(d);
  const CliResult r = run_sinkserve(tmp_dir(), "synth --dim 32 --heads 2 --layers 1 --ffn 64 --format hf --out " +
                                                   d.string() + " --tokenizer-from " +
                                                   fixture("tokenizers/ggml-vocab-llama-spm.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto f = open_model(d.string(), ModelParts::Vocabulary);
  const auto tok = load_tokenizer(*f);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(f->get_array("tokenizer.hf.merges").items.size() / 2, 61249u) << "LlamaConverter's count for Llama-2";
  for (const auto& [text, ids] : read_vectors("ggml-vocab-llama-spm.gguf")) {
    EXPECT_EQ(tok->encode(text, false), ids) << "'" << visible_text(text) << "'";
    EXPECT_EQ(tok->decode(ids), text);
  }
}

// tokenizer_config.json and generation_config.json: add_bos_token over the template, the chat
// template into the GGUF key the engine reads, and a list of stop ids as end of text and of turn.
TEST(HfTokenizer, CompanionFilesGiveBosStopsAndTemplate) {
  const fs::path d = copy_of("gutenberg-1m-hf", "companions");
  json tc = read_json(d / "tokenizer_config.json");
  tc["add_bos_token"] = false;
  tc["chat_template"] = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";
  tc.erase("eos_token");
  write_json(d / "tokenizer_config.json", tc);
  json gen = read_json(d / "generation_config.json");
  gen["eos_token_id"] = {2, 100};
  write_json(d / "generation_config.json", gen);
  const auto f = open_model(d.string());
  const auto tok = load_tokenizer(*f);
  EXPECT_EQ(tok->encode("It is", true).front(), tok->encode("It is", false).front()) << "no BOS";
  EXPECT_EQ(tok->eos(), 2);
  EXPECT_EQ(tok->eot(), 100);
  EXPECT_TRUE(tok->ends_generation(100));
  EXPECT_EQ(f->get_string("tokenizer.chat_template"), tc["chat_template"].get<std::string>());
  EXPECT_EQ(f->find_bool("tokenizer.ggml.add_bos_token"), false);

  gen["eos_token_id"] = {2, 600};
  write_json(d / "generation_config.json", gen);
  EXPECT_OPEN_ERROR(d, "generation_config.json", "eos_token_id 600 is not a token");
}

// A family sinkserve does not run still tokenizes; running it is refused by name.
TEST(HfTokenizer, VocabularyOfAnUnsupportedFamily) {
  EXPECT_EQ(open_error(model("hf-fake-gpt2"), ModelParts::Vocabulary), "");
  const std::string err = open_error(model("hf-fake-gpt2"));
  EXPECT_NE(err.find("config.json"), std::string::npos) << err;
  EXPECT_NE(err.find("model_type 'gpt2'"), std::string::npos) << err;
}

// ---------------------------------------------------------------------------------------------
// safetensors files

namespace {

std::string safetensors_bytes(const std::string& header, size_t data_bytes) {
  std::string b(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  return b + header + std::string(data_bytes, '\0');
}

std::string safetensors_error(const std::string& bytes) {
  const fs::path p = tmp_dir() / "case.safetensors";
  write_bytes(p, bytes);
  try {
    SafetensorsFile f(p.string());
    return "";
  } catch (const GGUFError& e) {
    return e.what();
  }
}

#define EXPECT_SAFETENSORS_ERROR(bytes, needle)                                          \
  do {                                                                                   \
    const std::string err_ = safetensors_error(bytes);                                   \
    EXPECT_NE(err_.find(needle), std::string::npos) << "error was: '" << err_ << "'";    \
    EXPECT_NE(err_.find("case.safetensors"), std::string::npos) << err_;                 \
  } while (0)

}  // namespace

TEST(Safetensors, ReadsWhatTheWriterWrites) {
  SafetensorsWriter w;
  w.add("a", "F32", {2, 3}, [](uint8_t* d, size_t n) { for (size_t i = 0; i < n; ++i) d[i] = uint8_t(i); });
  w.add("b", "BF16", {5}, [](uint8_t* d, size_t n) { std::memset(d, 7, n); });
  w.add("mask", "BOOL", {3}, [](uint8_t* d, size_t n) { std::memset(d, 1, n); });
  const std::string p = (tmp_dir() / "w.safetensors").string();
  w.write(p);
  SafetensorsFile f(p);
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.data_start() % 8, 0u);
  const SafetensorsTensor* a = f.find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->type, DType::F32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->end - a->begin, 24u);
  EXPECT_EQ(f.find("b")->type, DType::BF16);
  EXPECT_FALSE(f.find("mask")->type.has_value());
  EXPECT_EQ(f.find("mask")->dtype, "BOOL");
  uint8_t x[24];
  f.file()->read(f.data_start() + a->begin, 24, x);
  EXPECT_EQ(x[23], 23);
}

TEST(Safetensors, RefusesWhatTheFormatForbids) {
  EXPECT_SAFETENSORS_ERROR("abc", "shorter than the 8-byte header length");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes("{}", 0).substr(0, 9), "runs past the end");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes("{\"a\":", 0), "header is not valid JSON");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes("[1,2]", 0), "not a JSON object");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", 4), "no string 'dtype'");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes(R"({"a":{"dtype":"F9","shape":[1],"data_offsets":[0,4]}})", 4),
                           "dtype 'F9'");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
                           "not a non-negative integer");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4),
                           "(8 bytes), but its data_offsets [0, 4] span 4");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4),
                           "end before they begin");
  EXPECT_SAFETENSORS_ERROR(
      safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
      "overlap");
  EXPECT_SAFETENSORS_ERROR(
      safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12),
      "bytes [4, 8) of the data belong to no tensor");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 6),
                           "2 bytes after the last tensor");
  EXPECT_SAFETENSORS_ERROR(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 10),
                           "truncated file: tensor 'a'");
  EXPECT_EQ(safetensors_error(safetensors_bytes(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})", 4)), "");
}

// ---------------------------------------------------------------------------------------------
// Corrupt checkpoints

TEST(HfErrors, CorruptFilesAreNamed) {
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "truncated");
    fs::resize_file(d / s2, fs::file_size(d / s2) - 1000);
    EXPECT_OPEN_ERROR(d, s2, "truncated file");
  }
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "header_length");
    std::string b = read_file(d / s1);
    const uint64_t n = b.size();
    std::memcpy(b.data(), &n, 8);
    write_bytes(d / s1, b);
    EXPECT_OPEN_ERROR(d, s1, "runs past the end of the");
  }
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "header_json");
    std::string b = read_file(d / s1);
    b[8] = 'x';  // the header's opening brace
    write_bytes(d / s1, b);
    EXPECT_OPEN_ERROR(d, s1, "header is not valid JSON");
  }
  for (const char* file : {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"}) {
    const fs::path d = copy_of("gutenberg-1m-hf", std::string("bad_") + file);
    std::string b = read_file(d / file);
    write_bytes(d / file, b.substr(0, b.size() / 2));
    EXPECT_OPEN_ERROR(d, file, "not valid JSON");
  }
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "missing_shard");
    fs::remove(d / s2);
    EXPECT_OPEN_ERROR(d, s2, "cannot open");
  }
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "no_weights");
    fs::remove(d / "model.safetensors.index.json");
    EXPECT_OPEN_ERROR(d, "no_weights", "neither model.safetensors nor model.safetensors.index.json");
  }
}

TEST(HfErrors, IndexAndConfigMismatchesAreNamed) {
  {  // a tensor the model needs is not in the index
    const fs::path d = copy_of("gutenberg-1m-hf", "index_missing");
    json idx = read_json(d / "model.safetensors.index.json");
    idx["weight_map"].erase("model.layers.3.mlp.up_proj.weight");
    write_json(d / "model.safetensors.index.json", idx);
    EXPECT_OPEN_ERROR(d, "model.safetensors.index.json", "'model.layers.3.mlp.up_proj.weight' is missing (required by llama)");
  }
  {  // the index places a tensor in a shard that lacks it
    const fs::path d = copy_of("gutenberg-1m-hf", "index_wrong_shard");
    json idx = read_json(d / "model.safetensors.index.json");
    idx["weight_map"]["model.embed_tokens.weight"] = "model-00002-of-00002.safetensors";
    write_json(d / "model.safetensors.index.json", idx);
    EXPECT_OPEN_ERROR(d, "model-00002-of-00002.safetensors", "'model.embed_tokens.weight', which model.safetensors.index.json places here");
  }
  {  // the index points outside the directory
    const fs::path d = copy_of("gutenberg-1m-hf", "index_escape");
    json idx = read_json(d / "model.safetensors.index.json");
    idx["weight_map"]["model.norm.weight"] = "../gutenberg-1m-hf/model-00002-of-00002.safetensors";
    write_json(d / "model.safetensors.index.json", idx);
    EXPECT_OPEN_ERROR(d, "model.safetensors.index.json", "not a file of this directory");
  }
  {  // dtype: the weights are F32, config.json says bfloat16
    const fs::path d = copy_of("gutenberg-1m-hf", "dtype");
    json cfg = read_json(d / "config.json");
    cfg["torch_dtype"] = "bfloat16";
    write_json(d / "config.json", cfg);
    EXPECT_OPEN_ERROR(d, "model-00001-of-00002.safetensors", "is F32, but config.json's torch_dtype is bfloat16");
  }
  {  // shape: config.json's intermediate_size disagrees with the MLP matrices
    const fs::path d = copy_of("gutenberg-1m-hf", "shape");
    json cfg = read_json(d / "config.json");
    cfg["intermediate_size"] = 320;
    write_json(d / "config.json", cfg);
    EXPECT_OPEN_ERROR(d, "model-00001-of-00002.safetensors", "'model.layers.0.mlp.down_proj.weight' has shape [128, 344], but config.json implies [128, 320]");
  }
  {  // vocabulary: an embedding of more rows than the tokenizer has is padded, of fewer refused
    const fs::path d = copy_of("gutenberg-1m-hf", "vocab");
    json cfg = read_json(d / "config.json");
    cfg["vocab_size"] = 500;
    write_json(d / "config.json", cfg);
    EXPECT_OPEN_ERROR(d, "model.embed_tokens.weight", "config.json implies [500, 128]");
  }
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "layers");
    json cfg = read_json(d / "config.json");
    cfg["num_hidden_layers"] = 5;
    write_json(d / "config.json", cfg);
    EXPECT_OPEN_ERROR(d, "model-0000", "belongs to layer 5, but config.json has num_hidden_layers 5");
  }
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "heads");
    json cfg = read_json(d / "config.json");
    cfg["num_attention_heads"] = 6;
    write_json(d / "config.json", cfg);
    EXPECT_OPEN_ERROR(d, "config.json", "num_attention_heads 6 does not divide hidden_size 128");
  }
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "missing_key");
    json cfg = read_json(d / "config.json");
    cfg.erase("hidden_size");
    write_json(d / "config.json", cfg);
    EXPECT_OPEN_ERROR(d, "config.json", "key 'hidden_size' is missing");
  }
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "rope_yarn");
    json cfg = read_json(d / "config.json");
    cfg["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
    write_json(d / "config.json", cfg);
    EXPECT_OPEN_ERROR(d, "config.json", "rope_scaling type 'yarn' is not supported");
  }
  {
    const fs::path d = copy_of("gutenberg-1m-hf", "model_type");
    json cfg = read_json(d / "config.json");
    cfg["model_type"] = "t5";
    write_json(d / "config.json", cfg);
    EXPECT_OPEN_ERROR(d, "config.json", "model_type 't5'");
  }
  {  // tie_word_embeddings false needs lm_head.weight
    const fs::path d = copy_of("gutenberg-1m-hf", "untied");
    json cfg = read_json(d / "config.json");
    cfg["tie_word_embeddings"] = false;
    write_json(d / "config.json", cfg);
    EXPECT_OPEN_ERROR(d, "model.safetensors.index.json", "'lm_head.weight' is missing");
  }
}

TEST(HfErrors, TokenizerComponentsAreNamed) {
  auto with = [](const std::string& tag, const std::function<void(json&)>& edit) {
    const fs::path d = copy_of("gutenberg-1m-hf", tag);
    json t = read_json(d / "tokenizer.json");
    edit(t);
    write_json(d / "tokenizer.json", t);
    return d;
  };
  EXPECT_OPEN_ERROR(with("nfc", [](json& t) { t["normalizer"] = {{"type", "NFC"}}; }), "tokenizer.json",
                    "normalizer 'NFC' is not supported");
  EXPECT_OPEN_ERROR(with("unigram", [](json& t) { t["model"]["type"] = "Unigram"; }), "tokenizer.json",
                    "model type 'Unigram' is not supported");
  EXPECT_OPEN_ERROR(with("whitespace", [](json& t) { t["pre_tokenizer"] = {{"type", "Whitespace"}}; }),
                    "tokenizer.json", "pre-tokenizer 'Whitespace' is not supported");
  EXPECT_OPEN_ERROR(with("roberta", [](json& t) { t["post_processor"] = {{"type", "RobertaProcessing"}}; }),
                    "tokenizer.json", "post-processor 'RobertaProcessing' is not supported");
  EXPECT_OPEN_ERROR(with("bad_merge", [](json& t) { t["model"]["merges"][0] = "\xE2\x96\x81 zz"; }),
                    "tokenizer.json", "merge 0 ('\xE2\x96\x81', 'zz'): 'zz' is not in the vocabulary");
  EXPECT_OPEN_ERROR(with("bad_regex",
                         [](json& t) {
                           t["pre_tokenizer"] = {{"type", "Split"},
                                                 {"pattern", {{"Regex", "\\p{Lu}+"}}},
                                                 {"behavior", "Isolated"},
                                                 {"invert", false}};
                         }),
                    "tokenizer.json", "\\p{Lu}+");
  const fs::path none = copy_of("gutenberg-1m-hf", "no_tokenizer");
  fs::remove(none / "tokenizer.json");
  EXPECT_OPEN_ERROR(none, "no_tokenizer", "no tokenizer.json");
}

// Random corruptions of a shard's header and of config.json: each is refused with a GGUFError or
// loads (and then builds the model, reading every slice); nothing crashes or throws anything else.
TEST(HfErrors, MutationsNeverCrash) {
  const fs::path d = copy_of("gutenberg-1m-hf", "mutations");
  const std::string shard = "model-00002-of-00002.safetensors";
  const std::string original = read_file(d / shard), config = read_file(d / "config.json");
  uint64_t header = 0;
  std::memcpy(&header, original.data(), 8);
  std::mt19937_64 rng(17);
  int refused = 0, loaded = 0;
  auto attempt = [&] {
    try {
      const auto f = open_model(d.string());
      const auto backend = make_cpu_backend(1);
      const auto comm = make_single_communicator();
      LlamaModel m(*f, *backend, *comm);
      load_tokenizer(*f);
      ++loaded;
    } catch (const GGUFError&) {
      ++refused;
    }
  };
  for (int i = 0; i < 300; ++i) {
    std::string b = original;
    const int kind = int(rng() % 3);
    if (kind == 0) {  // flip bytes in the header length and the JSON
      for (int k = 0; k < 1 + int(rng() % 3); ++k) b[size_t(rng() % (8 + header))] ^= char(1 + rng() % 255);
    } else if (kind == 1) {  // truncate anywhere
      b.resize(size_t(rng() % b.size()));
    } else {  // a random printable character in the JSON
      b[8 + size_t(rng() % header)] = char(' ' + rng() % 95);
    }
    write_bytes(d / shard, b);
    attempt();
  }
  write_bytes(d / shard, original);
  for (int i = 0; i < 100; ++i) {
    std::string c = config;
    c[size_t(rng() % c.size())] = char(' ' + rng() % 95);
    write_bytes(d / "config.json", c);
    attempt();
  }
  std::printf("mutations: %d refused, %d loaded\n", refused, loaded);
  EXPECT_GT(refused, 200);
}
