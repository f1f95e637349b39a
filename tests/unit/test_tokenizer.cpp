// Tokenizers against llama.cpp's test vectors (ids produced by the Hugging Face reference
// tokenizers), round trips over real texts, an independent naive SentencePiece reference,
// streaming decode of split UTF-8, special-token matching, speed and malformed vocabularies.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/gguf.h"
#include "runtime/tokenizer.h"
#include "tests/fixtures.h"

namespace sinkserve {
namespace {

using Ids = std::vector<int32_t>;
using test::read_file;

// A loaded vocabulary; the tokenizer does not outlive the GGUF file it was built from in tests.
struct Loaded {
  std::unique_ptr<GGUFFile> file;
  std::unique_ptr<Tokenizer> tok;
};

Loaded load(const std::string& rel) {
  Loaded l;
  l.file = std::make_unique<GGUFFile>(test::fixture(rel));
  l.tok = load_tokenizer(*l.file);
  return l;
}

// Tokenizer files are large; each is loaded once for the whole program.
const Tokenizer& vocab(const std::string& rel) {
  static std::map<std::string, Loaded> cache;
  auto it = cache.find(rel);
  if (it == cache.end()) it = cache.emplace(rel, load(rel)).first;
  return *it->second.tok;
}

// llama.cpp's test-tokenizer-0 format: X.inp holds strings each followed by a line
// "__ggml_vocab_test__"; X.out holds one line of space-separated ids per string.
std::vector<std::pair<std::string, Ids>> read_vectors(const std::string& rel) {
  const std::string inp = read_file(test::fixture(rel + ".inp"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t e = inp.find(sep, pos);
    if (e == std::string::npos) {
      ADD_FAILURE() << rel << ".inp: text after the last separator";
      break;
    }
    texts.push_back(inp.substr(pos, e - pos));
    pos = e + sep.size();
  }
  std::istringstream out(read_file(test::fixture(rel + ".out")));
  std::vector<std::pair<std::string, Ids>> v;
  std::string line;
  for (const std::string& t : texts) {
    if (!std::getline(out, line)) {
      ADD_FAILURE() << rel << ".out has fewer lines than " << rel << ".inp has texts";
      break;
    }
    std::istringstream ls(line);
    Ids ids;
    for (int32_t id; ls >> id;) ids.push_back(id);
    v.emplace_back(t, std::move(ids));
  }
  return v;
}

std::string ids_str(const Ids& ids) {
  std::string s;
  for (int32_t id : ids) {
    s += ' ';
    s += std::to_string(id);
  }
  return s;
}

class Vectors : public ::testing::TestWithParam<const char*> {};

TEST_P(Vectors, EncodeMatchesReferenceIdsAndDecodeRoundTrips) {
  const std::string rel = std::string("tokenizers/") + GetParam();
  const Tokenizer& tok = vocab(rel);
  const auto vectors = read_vectors(rel);
  ASSERT_EQ(vectors.size(), 46u);
  for (const auto& [text, want] : vectors) {
    const Ids got = tok.encode(text, /*add_bos=*/false);
    EXPECT_EQ(ids_str(got), ids_str(want)) << "text: '" << text << "'";
    EXPECT_EQ(tok.decode(got), text);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, Vectors,
                         ::testing::Values("ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf",
                                           "ggml-vocab-falcon.gguf"),
                         [](const auto& info) {
                           std::string n = info.param;
                           n = n.substr(11, n.size() - 16);  // ggml-vocab-X.gguf -> X
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(Tokenizer, MetadataOfTheVocabularies) {
  const Tokenizer& spm = vocab("tokenizers/ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(spm.model_name(), "llama");
  EXPECT_EQ(spm.vocab_size(), 32000);
  EXPECT_EQ(spm.bos(), 1);
  EXPECT_EQ(spm.eos(), 2);
  EXPECT_EQ(spm.find("<s>"), 1);
  EXPECT_EQ(spm.find("\xE2\x96\x81Hello"), 15043);
  EXPECT_EQ(spm.find("no such token"), -1);
  EXPECT_EQ(spm.piece(15043), " Hello");
  EXPECT_EQ(spm.piece(13), "\n");  // <0x0A>
  EXPECT_EQ(spm.piece(1), "");     // control
  EXPECT_THROW(spm.piece(32000), std::out_of_range);
  EXPECT_THROW(spm.piece(-1), std::out_of_range);

  const Tokenizer& gpt2 = vocab("tokenizers/ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(gpt2.model_name(), "gpt2");
  EXPECT_EQ(gpt2.vocab_size(), 50257);
  EXPECT_EQ(gpt2.bos(), 50256);
  EXPECT_EQ(gpt2.eos(), 50256);
  EXPECT_EQ(gpt2.piece(18435), " Hello");  // "ĠHello"
  EXPECT_EQ(gpt2.piece(198), "\n");        // "Ċ"
  EXPECT_EQ(gpt2.piece(50256), "");

  // GPT-NeoX names no pre-tokenizer: the GPT-2 split applies (no reference ids for it).
  const Tokenizer& neox = vocab("tokenizers/ggml-vocab-gpt-neox.gguf");
  const std::string s = "  Hello,\tworld!\n\n 3.14159 \xF0\x9F\xA6\x99 caf\xC3\xA9";
  EXPECT_EQ(neox.decode(neox.encode(s, false)), s);
}

TEST(Tokenizer, BosOnlyWhereTheVocabularyAsksForIt) {
  const Tokenizer& stories = vocab("models/stories260K.gguf");
  const Ids ids = stories.encode("Once upon a time", /*add_bos=*/true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(Ids(ids.begin() + 1, ids.end()), stories.encode("Once upon a time", false));
  EXPECT_EQ(stories.decode(ids), "Once upon a time");

  // GPT-2 has no add_bos_token key: its default is not to add one.
  const Tokenizer& gpt2 = vocab("tokenizers/ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(gpt2.encode("Hello world", true), (Ids{15496, 995}));
  EXPECT_EQ(gpt2.encode("", true), Ids{});
  EXPECT_EQ(vocab("tokenizers/ggml-vocab-llama-spm.gguf").encode("", true), Ids{1});
}

TEST(Tokenizer, SpecialTokensInTextAreMatched) {
  const Tokenizer& gpt2 = vocab("tokenizers/ggml-vocab-gpt-2.gguf");
  // "Hello" 15496, "<|endoftext|>" 50256, " world" 995.
  EXPECT_EQ(gpt2.encode("Hello<|endoftext|> world", false), (Ids{15496, 50256, 995}));
  const Tokenizer& spm = vocab("tokenizers/ggml-vocab-llama-spm.gguf");
  // Text after a special token starts a new sentence and gets the space prefix: "▁Hello" 15043.
  EXPECT_EQ(spm.encode("<s>Hello</s>", false), (Ids{1, 15043, 2}));
  EXPECT_EQ(spm.encode("Hello<s>Hello", false), (Ids{15043, 1, 15043}));
  // Falcon's control tokens, including ones inside longer punctuation.
  const Tokenizer& falcon = vocab("tokenizers/ggml-vocab-falcon.gguf");
  EXPECT_EQ(falcon.encode(">>TITLE<<", false), Ids{0});
  EXPECT_EQ(falcon.encode("<|endoftext|>", false), Ids{11});
}

// The naive form of the same SentencePiece merge rule (llama2.c's encode): rescan every adjacent
// pair, merge the best-scoring one (leftmost on ties) until none is a token. O(n^2).
Ids naive_spm(const GGUFFile& f, const std::string& text) {
  const auto& toks = f.get_array("tokenizer.ggml.tokens").items;
  const auto& scores = f.get_array("tokenizer.ggml.scores").items;
  std::map<std::string, int32_t> id;
  for (size_t i = 0; i < toks.size(); ++i) id[std::get<std::string>(toks[i].v)] = int32_t(i);
  std::string s = "\xE2\x96\x81";
  for (char c : text) s += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
  std::vector<std::string> sym;
  for (size_t i = 0; i < s.size();) {
    const auto b = uint8_t(s[i]);
    const size_t n = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
    sym.push_back(s.substr(i, n));
    i += n;
  }
  for (;;) {
    double best = -1e30;
    int best_i = -1;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = id.find(sym[i] + sym[i + 1]);
      if (it == id.end()) continue;
      const double sc = std::get<double>(scores[it->second].v);
      if (sc > best) best = sc, best_i = int(i);
    }
    if (best_i < 0) break;
    sym[best_i] += sym[best_i + 1];
    sym.erase(sym.begin() + best_i + 1);
  }
  Ids out;
  for (const std::string& t : sym) {
    auto it = id.find(t);
    if (it != id.end()) {
      out.push_back(it->second);
      continue;
    }
    for (char c : t) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", unsigned(uint8_t(c)));
      out.push_back(id.at(buf));
    }
  }
  return out;
}

// The first `n` bytes of a text, cut back to a character boundary.
std::string head_of(const std::string& rel, size_t n) {
  std::string t = read_file(test::fixture(rel));
  if (t.size() <= n) return t;
  while (n > 0 && (uint8_t(t[n]) & 0xC0) == 0x80) --n;
  return t.substr(0, n);
}

const char* kTexts[] = {"texts/pg1342_pride_and_prejudice.txt", "texts/pg2701_moby_dick.txt",
                        "texts/pg2600_war_and_peace.txt", "texts/tinyshakespeare_input.txt"};

TEST(Tokenizer, SpmAgreesWithNaiveReferenceOnRealText) {
  const GGUFFile f(test::fixture("models/stories260K.gguf"));
  const auto tok = load_tokenizer(f);
  for (const char* rel : kTexts) {
    // War and Peace starts with a BOM and Moby Dick has CRLF: both need byte fallback.
    const std::string t = head_of(rel, 3000);
    EXPECT_EQ(ids_str(tok->encode(t, false)), ids_str(naive_spm(f, t))) << rel;
  }
}

TEST(Tokenizer, TextsRoundTrip) {
  for (const char* v : {"models/stories260K.gguf", "tokenizers/ggml-vocab-gpt-2.gguf",
                        "tokenizers/ggml-vocab-falcon.gguf"}) {
    const Tokenizer& tok = vocab(v);
    for (const char* rel : kTexts) {
      const std::string t = head_of(rel, 200 * 1024);
      const Ids ids = tok.encode(t, false);
      EXPECT_LT(ids.size(), t.size()) << v << " " << rel;
      EXPECT_TRUE(tok.decode(ids) == t) << v << " does not round-trip " << rel;
    }
  }
}

TEST(Tokenizer, WholeBookEncodesFast) {
  const Tokenizer& tok = vocab("models/stories260K.gguf");
  const std::string t = read_file(test::fixture("texts/pg2600_war_and_peace.txt"));
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = tok.encode(t, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("War and Peace: %zu bytes -> %zu tokens in %.2f s (%.0f tokens/s)\n", t.size(),
              ids.size(), s, ids.size() / s);
  EXPECT_GT(ids.size(), 1000000u);
  // Quadratic behaviour would take hours; the linked-list merge takes about a second.
  EXPECT_LT(s, 30.0);
  EXPECT_TRUE(tok.decode(ids) == t);
}

// Plain structural UTF-8 check (lead byte, then the right number of continuation bytes).
bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto b = uint8_t(s[i]);
    const size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((uint8_t(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

TEST(Tokenizer, StreamDecoderEmitsSplitCharactersWhole) {
  const Tokenizer& tok = vocab("models/stories260K.gguf");
  // Neither CJK character is in the 512-token vocabulary: each is spelled with 3 byte tokens.
  const std::string text = "a \xE6\x97\xA5\xE6\x9C\xAC!";  // "a 日本!"
  const Ids ids = tok.encode(text, true);
  int byte_tokens = 0;
  for (int32_t id : ids) byte_tokens += int(tok.piece(id).size() == 1 && uint8_t(tok.piece(id)[0]) >= 0x80);
  ASSERT_EQ(byte_tokens, 6);
  StreamDecoder d(tok);
  std::string joined;
  int pushes_with_cjk = 0;
  for (int32_t id : ids) {
    const std::string s = d.push(id);
    EXPECT_TRUE(valid_utf8(s)) << "emitted a partial character";
    pushes_with_cjk += int(s.find("\xE6") != std::string::npos);
    joined += s;
  }
  EXPECT_EQ(d.flush(), "");
  EXPECT_EQ(joined, text);  // each character exactly once
  EXPECT_EQ(pushes_with_cjk, 2);

  // Token by token: nothing is emitted until the third byte of a character arrives.
  const int32_t e6 = tok.find("<0xE6>"), x97 = tok.find("<0x97>"), xa5 = tok.find("<0xA5>");
  ASSERT_GE(std::min({e6, x97, xa5}), 0);
  StreamDecoder d2(tok);
  EXPECT_EQ(d2.push(e6), "");
  EXPECT_EQ(d2.push(x97), "");
  EXPECT_EQ(d2.push(xa5), "\xE6\x97\xA5");
  // A stream cut inside a character ends with one replacement character.
  EXPECT_EQ(d2.push(e6), "");
  EXPECT_EQ(d2.flush(), "\xEF\xBF\xBD");
  // A stray continuation byte is malformed: replaced, and the text after it still comes through.
  StreamDecoder d3(tok);
  EXPECT_EQ(d3.push(x97), "\xEF\xBF\xBD");
  EXPECT_EQ(d3.push(tok.find("<0x41>")), "A");
}

TEST(Tokenizer, SpmDecodeStripsOnlyTheAddedSpace) {
  const Tokenizer& tok = vocab("models/stories260K.gguf");
  for (const std::string t : {" leading", "  two", "x", "\n", " "}) EXPECT_EQ(tok.decode(tok.encode(t, true)), t);
}

// ---- malformed vocabularies ----

std::string write_vocab(const std::string& name, const std::map<std::string, GGUFValue>& kv) {
  GGUFWriter w;
  for (const auto& [k, v] : kv) w.set(k, v);
  const std::string path = (std::filesystem::temp_directory_path() / name).string();
  w.write(path);
  return path;
}

GGUFValue str(const std::string& s) { return {GGUFType::STRING, s}; }
GGUFValue strings(const std::vector<std::string>& v) {
  GGUFArray a{GGUFType::STRING, {}};
  for (const auto& s : v) a.items.push_back(str(s));
  return {GGUFType::ARRAY, a};
}
GGUFValue floats(const std::vector<double>& v) {
  GGUFArray a{GGUFType::FLOAT32, {}};
  for (double x : v) a.items.push_back({GGUFType::FLOAT32, x});
  return {GGUFType::ARRAY, a};
}

void expect_load_error(const std::string& name, const std::map<std::string, GGUFValue>& kv,
                       const std::string& needle) {
  const std::string path = write_vocab(name, kv);
  const GGUFFile f(path);
  try {
    load_tokenizer(f);
    ADD_FAILURE() << name << ": loaded without error";
  } catch (const GGUFError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
}

TEST(Tokenizer, MalformedVocabulariesAreRejectedByName) {
  expect_load_error("tok_nomodel.gguf", {{"general.name", str("x")}}, "tokenizer.ggml.model");
  expect_load_error("tok_badmodel.gguf", {{"tokenizer.ggml.model", str("wordpiece")}}, "'wordpiece'");
  expect_load_error("tok_notokens.gguf", {{"tokenizer.ggml.model", str("llama")}}, "tokenizer.ggml.tokens");
  expect_load_error("tok_scores.gguf",
                    {{"tokenizer.ggml.model", str("llama")},
                     {"tokenizer.ggml.tokens", strings({"<unk>", "<s>", "</s>", "a"})},
                     {"tokenizer.ggml.scores", floats({0, 0})}},
                    "tokenizer.ggml.scores");
  expect_load_error("tok_bos.gguf",
                    {{"tokenizer.ggml.model", str("llama")},
                     {"tokenizer.ggml.tokens", strings({"<unk>", "<s>", "</s>"})},
                     {"tokenizer.ggml.bos_token_id", {GGUFType::UINT32, uint64_t(7)}}},
                    "tokenizer.ggml.bos_token_id");
  expect_load_error("tok_nomerges.gguf",
                    {{"tokenizer.ggml.model", str("gpt2")}, {"tokenizer.ggml.tokens", strings({"a", "b"})}},
                    "tokenizer.ggml.merges");
  expect_load_error("tok_badmerge.gguf",
                    {{"tokenizer.ggml.model", str("gpt2")},
                     {"tokenizer.ggml.tokens", strings({"a", "b", "ab"})},
                     {"tokenizer.ggml.merges", strings({"ab"})}},
                    "merge 0 'ab'");
  expect_load_error("tok_pre.gguf",
                    {{"tokenizer.ggml.model", str("gpt2")},
                     {"tokenizer.ggml.pre", str("qwen2")},
                     {"tokenizer.ggml.tokens", strings({"a", "b", "ab"})},
                     {"tokenizer.ggml.merges", strings({"a b"})}},
                    "'qwen2'");
}

// A tiny vocabulary built in the test: merges and byte mapping work on any vocabulary, and a
// byte the vocabulary cannot spell becomes <unk> rather than vanishing or crashing.
TEST(Tokenizer, TinyBpeVocabulary) {
  const std::string path = write_vocab(
      "tok_tiny.gguf", {{"tokenizer.ggml.model", str("gpt2")},
                        {"tokenizer.ggml.tokens", strings({"<unk>", "a", "b", "ab", "\xC4\xA0", "\xC4\xA0" "ab"})},
                        {"tokenizer.ggml.merges", strings({"a b", "\xC4\xA0 ab"})},
                        {"tokenizer.ggml.unknown_token_id", {GGUFType::UINT32, uint64_t(0)}}});
  const GGUFFile f(path);
  const auto tok = load_tokenizer(f);
  EXPECT_EQ(tok->encode("ab ab", false), (Ids{3, 5}));
  EXPECT_EQ(tok->encode("abc", false), (Ids{3, 0}));
  EXPECT_EQ(tok->decode({3, 5}), "ab ab");
  EXPECT_EQ(tok->bos(), -1);
  EXPECT_EQ(tok->eos(), -1);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace sinkserve
