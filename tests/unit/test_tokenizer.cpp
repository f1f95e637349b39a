// Tokenizers against llama.cpp's test vectors (ids produced by the Hugging Face reference
// tokenizers) for every vocabulary that has them, the pre-tokenizer table and its pattern engine,
// round trips over real texts, an independent naive SentencePiece reference, streaming decode of
// split UTF-8, special and end-of-turn tokens, speed and malformed or unknown vocabularies.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/gguf.h"
#include "runtime/tokenizer.h"
#include "runtime/tokenizer_internal.h"
#include "tests/fixtures.h"
#include "tests/tokenizer_vectors.h"

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

std::string ids_str(const Ids& ids) {
  std::string s;
  for (int32_t id : ids) {
    s += ' ';
    s += std::to_string(id);
  }
  return s;
}

TEST(Tokenizer, EveryReferenceVocabularyHasVectors) {
  const std::vector<std::string> have = test::vocabularies_with_vectors();
  for (const std::string& v : test::kVocabulariesWithVectors)
    EXPECT_NE(std::find(have.begin(), have.end(), v), have.end())
        << v << " with .inp and .out in " << test::fixtures_dir() << "/tokenizers";
}

class Vectors : public ::testing::TestWithParam<std::string> {};

TEST_P(Vectors, EncodeMatchesReferenceIdsAndDecodeRoundTrips) {
  const Tokenizer& tok = vocab("tokenizers/" + GetParam());
  const auto vectors = test::read_vectors(GetParam());
  ASSERT_FALSE(vectors.empty());
  for (const auto& [text, want] : vectors) {
    // As llama.cpp's test-tokenizer-0 encodes them: no BOS, control-token texts not parsed.
    const Ids got = tok.encode(text, /*add_bos=*/false, /*parse_special=*/false);
    EXPECT_EQ(ids_str(got), ids_str(want)) << "text: '" << visible_text(text) << "'";
    EXPECT_EQ(tok.decode(got), text);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, Vectors, ::testing::ValuesIn(test::vocabularies_with_vectors()),
                         [](const auto& info) { return test::vocabulary_label(info.param); });

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

  // GPT-NeoX names no pre-tokenizer: llama.cpp's 'default' split applies (no reference ids for it).
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
                     {"tokenizer.ggml.pre", str("no-such-pre")},
                     {"tokenizer.ggml.tokens", strings({"a", "b", "ab"})},
                     {"tokenizer.ggml.merges", strings({"a b"})}},
                    "unknown pre-tokenizer 'no-such-pre' (tokenizer.ggml.pre)");
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


// ---- special and end-of-turn tokens ----

TEST(Tokenizer, ControlTokensAreParsedOnlyWhenAsked) {
  const Tokenizer& llama3 = vocab("tokenizers/ggml-vocab-llama-bpe.gguf");
  const std::string t = "Hi<|eot_id|>";
  const Ids parsed = llama3.encode(t, false, /*parse_special=*/true);
  EXPECT_EQ(parsed, (Ids{13347, 128009}));
  const Ids plain = llama3.encode(t, false, /*parse_special=*/false);
  EXPECT_GT(plain.size(), 3u);
  EXPECT_EQ(std::find(plain.begin(), plain.end(), 128009), plain.end());
  EXPECT_EQ(llama3.decode(plain), t);
  const Tokenizer& spm = vocab("tokenizers/ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(spm.encode("<s>", false, true), Ids{1});
  const Ids spm_plain = spm.encode("<s>", false, false);
  EXPECT_EQ(std::find(spm_plain.begin(), spm_plain.end(), 1), spm_plain.end());
  EXPECT_EQ(spm.decode(spm_plain), "<s>");
  // User-defined tokens match either way: DeepSeek's U+00F8 (o with stroke) is one.
  const Tokenizer& ds = vocab("tokenizers/ggml-vocab-deepseek-llm.gguf");
  EXPECT_EQ(ds.encode("\xC3\xB8", false, false), Ids{100002});
  // Llama-3's pre-tokenizer adds BOS when the file has no add_bos_token key; GPT-2's does not.
  EXPECT_EQ(llama3.encode("", true), Ids{128000});
  EXPECT_EQ(vocab("tokenizers/ggml-vocab-qwen2.gguf").encode("", true), Ids{});
}

TEST(Tokenizer, EndOfTurnTokens) {
  const Tokenizer& llama3 = vocab("tokenizers/ggml-vocab-llama-bpe.gguf");
  EXPECT_EQ(llama3.eos(), 128001);
  EXPECT_EQ(llama3.eot(), 128009);  // <|eot_id|>, by its text: the file has no eot_token_id
  EXPECT_EQ(llama3.eom(), -1);      // Llama 3.0 has no <|eom_id|>
  EXPECT_TRUE(llama3.ends_generation(128001));
  EXPECT_TRUE(llama3.ends_generation(128009));
  EXPECT_FALSE(llama3.ends_generation(128000));
  EXPECT_FALSE(llama3.ends_generation(-1));
  EXPECT_EQ(vocab("tokenizers/ggml-vocab-qwen2.gguf").eot(), 151645);  // <|im_end|>
  EXPECT_EQ(vocab("tokenizers/ggml-vocab-phi-3.gguf").eot(), 32007);   // <|end|>
  EXPECT_EQ(vocab("tokenizers/ggml-vocab-llama-spm.gguf").eot(), -1);
  EXPECT_FALSE(vocab("tokenizers/ggml-vocab-llama-spm.gguf").ends_generation(-1));
}

// ---- the split-pattern engine and the pre-tokenizer table ----

using Words = std::vector<std::string>;

Words words_of(const tok::CodepointText& t, const std::string& text, const std::vector<tok::Span>& spans) {
  Words w;
  for (const tok::Span& s : spans)
    w.push_back(text.substr(t.offsets[s.begin], t.offsets[s.end] - t.offsets[s.begin]));
  return w;
}

Words split_words(std::string_view pattern, const std::string& text) {
  const tok::SplitPattern p(pattern);
  tok::CodepointText t;
  t.assign(text);
  std::vector<tok::Span> spans;
  tok::SplitPattern::State state;
  p.split(t, {0, t.cps.size()}, spans, state);
  return words_of(t, text, spans);
}

// The words a table entry's patterns leave, applied in order as the BPE tokenizer applies them.
Words pre_split(std::string_view name, const std::string& text) {
  const tok::PreTokenizerRules* r = tok::find_pre_tokenizer(name);
  if (!r) {
    ADD_FAILURE() << "no pre-tokenizer '" << name << "'";
    return {};
  }
  tok::CodepointText t;
  t.assign(text);
  std::vector<tok::Span> words{{0, t.cps.size()}}, next;
  tok::SplitPattern::State state;
  for (std::string_view p : r->patterns) {
    const tok::SplitPattern sp(p);
    next.clear();
    for (const tok::Span& w : words) sp.split(t, w, next, state);
    words.swap(next);
  }
  return words_of(t, text, words);
}

TEST(SplitPattern, MatchesAndTheTextBetweenThemBecomePieces) {
  // The first alternative that matches wins, even where a later one would match more.
  EXPECT_EQ(split_words("a|ab", "abab"), (Words{"a", "b", "a", "b"}));
  EXPECT_EQ(split_words("ab|a", "abab"), (Words{"ab", "ab"}));
  EXPECT_EQ(split_words(R"(\p{N}{1,3})", "1234567"), (Words{"123", "456", "7"}));
  EXPECT_EQ(split_words(R"(\p{N}{2,})", "1a2345"), (Words{"1a", "2345"}));
  EXPECT_EQ(split_words(R"((?:ab)+)", "xababx"), (Words{"x", "abab", "x"}));
  EXPECT_EQ(split_words(R"([^\s\p{L}]+)", "ab,; cd!"), (Words{"ab", ",;", " cd", "!"}));
  EXPECT_EQ(split_words(R"([\$\-\x{FF01}-\x{FF0F}]+)", "a$-\xEF\xBC\x81" "b"), (Words{"a", "$-\xEF\xBC\x81", "b"}));
  // Categories beyond ASCII: Greek letters, Arabic-Indic digits, ideographic punctuation.
  EXPECT_EQ(split_words(R"(\p{L}+|\p{N}+|\p{P}+)", "\xCE\xB1\xCE\xB2\xD9\xA1\xD9\xA2\xE3\x80\x82"),
            (Words{"\xCE\xB1\xCE\xB2", "\xD9\xA1\xD9\xA2", "\xE3\x80\x82"}));
  // \s is White_Space: U+3000 is one, U+200B (zero width space) is not.
  EXPECT_EQ(split_words(R"(\s+)", "a\xE3\x80\x80" "b\xE2\x80\x8B"), (Words{"a", "\xE3\x80\x80", "b\xE2\x80\x8B"}));
  // Lookahead: \s+(?!\S) leaves the last space of a run to the word after it.
  EXPECT_EQ(split_words(R"( ?\p{L}+|\s+(?!\S)|\s+)", "a   b  "), (Words{"a", "  ", " b", "  "}));
  EXPECT_EQ(split_words(R"(a(?=b))", "aab"), (Words{"a", "a", "b"}));
  // $ is the end of the piece being split.
  EXPECT_EQ(split_words(R"(\s+$)", "a  b  "), (Words{"a  b", "  "}));
  // A malformed byte is no letter, number or space: only negated classes take it, bytes intact.
  EXPECT_EQ(split_words(R"([^\p{L}]+)", "a\xFF\xFE" "b"), (Words{"a", "\xFF\xFE", "b"}));
  // (?i:...) folds ASCII letters, as Llama-3's tokenizer.json writes its contractions.
  EXPECT_EQ(split_words(R"((?i:'s|'ll)|\p{L}+)", "it'S he'Ll"), (Words{"it", "'S", " ", "he", "'Ll"}));
}

// Searching start after start through text that never matches must not rescan it each time:
// DeepSeek LLM's \s+$ over a long run of spaces before a digit would take minutes if it did.
TEST(SplitPattern, FailedSearchesStayLinear) {
  const std::string text = std::string(200000, ' ') + "1";
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(split_words(R"(\s+$)", text), Words{text});
  EXPECT_EQ(split_words(R"(\s+(?!\S)|\s*[\r\n]+)", text), (Words{text.substr(0, 199999), " 1"}));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
}

TEST(SplitPattern, UnsupportedOrEmptyMatchingPatternsAreRefusedWithTheReason) {
  for (const auto& [pattern, why] : std::vector<std::pair<std::string, std::string>>{
           {"a*", "can match empty text"},
           {"(a|)+", "can match empty text"},
           {"(?=a)", "can match empty text"},
           {"(?<a>b)", "only (?:...)"},
           {"(?i:[a])", "character classes inside (?i:...)"},
           {"(?i:\xC3\xA9)", "non-ASCII"},
           {"a+?", "lazy"},
           {"[a-", "missing ']'"},
           {"[z-a]", "range out of order"},
           {"(a", "missing ')'"},
           {"a)", "unbalanced ')'"},
           {R"(\p{Lu})", "one-letter categories"},
           {R"(\d)", "unsupported escape"},
           {"a{2,1}", "m < n"},
           {"a{1000}", "repeat count above"},
           {".", "'.' is not supported"}}) {
    try {
      const tok::SplitPattern p(pattern);
      ADD_FAILURE() << pattern << " compiled";
    } catch (const std::invalid_argument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(why), std::string::npos) << pattern << ": " << msg;
      EXPECT_NE(msg.find("'" + pattern + "'"), std::string::npos) << msg;
    }
  }
}

TEST(PreTokenizers, TheTableNamesEveryFamilyOnceAndEveryPatternCompiles) {
  std::vector<std::string_view> seen;
  for (const tok::PreTokenizerRules& r : tok::pre_tokenizer_table()) {
    EXPECT_FALSE(r.patterns.empty()) << r.names[0];
    for (std::string_view n : r.names) {
      EXPECT_EQ(std::find(seen.begin(), seen.end(), n), seen.end()) << "'" << n << "' is listed twice";
      seen.push_back(n);
    }
    for (std::string_view p : r.patterns) EXPECT_NO_THROW(tok::SplitPattern{p}) << p;
  }
  for (const char* n : {"default", "llama-bpe", "llama3", "llama-v3", "qwen2", "mpt", "gpt-2", "gpt-neox", "falcon",
                        "starcoder", "refact", "command-r", "deepseek-llm", "deepseek-coder", "phi-2", "stablelm2",
                        "smollm", "olmo", "dbrx"})
    EXPECT_NE(tok::find_pre_tokenizer(n), nullptr) << n;
  EXPECT_EQ(tok::find_pre_tokenizer("no-such-pre"), nullptr);
}

// Names without reference vectors, against splits worked out by hand from their patterns.
TEST(PreTokenizers, SplitsOfTheFamiliesWithoutVectors) {
  const std::string code = "x = foo(12345);  // ok\n";
  EXPECT_EQ(pre_split("gpt-2", code), (Words{"x", " =", " foo", "(", "12345", ");", " ", " //", " ok", "\n"}));
  // Starcoder-style: every digit alone.
  EXPECT_EQ(pre_split("starcoder", code),
            (Words{"x", " =", " foo", "(", "1", "2", "3", "4", "5", ");", " ", " //", " ok", "\n"}));
  // 'default': punctuation runs first, digit runs cut into threes.
  EXPECT_EQ(pre_split("default", code),
            (Words{"x", " ", "=", " foo", "(", "123", "45", ");", "  ", "//", " ok", "\n"}));
  // Llama-3: digits in threes, a non-letter may lead a word, newlines join punctuation.
  EXPECT_EQ(pre_split("llama3", code), (Words{"x", " =", " foo", "(", "123", "45", ");", " ", " //", " ok", "\n"}));
  // DeepSeek Coder: newlines, letter and punctuation runs with one leading space, CJK, single digits.
  EXPECT_EQ(pre_split("deepseek-coder", "Hello, \xE4\xB8\x96\xE7\x95\x8C" "12\n"),
            (Words{"Hello", ",", " ", "\xE4\xB8\x96\xE7\x95\x8C", "1", "2", "\n"}));
}

// ---- unknown pre-tokenizers ----

// Digits only: "123123" is one token when merged whole, two when the digits are cut into threes.
std::map<std::string, GGUFValue> digit_vocab(const std::string& pre) {
  return {{"tokenizer.ggml.model", str("gpt2")},
          {"tokenizer.ggml.pre", str(pre)},
          {"tokenizer.ggml.tokens", strings({"1", "2", "3", "12", "123", "123123"})},
          {"tokenizer.ggml.merges", strings({"1 2", "12 3", "123 123"})}};
}

TEST(Tokenizer, UnknownPreTokenizerIsRefusedByName) {
  expect_load_error("tok_unknown_pre.gguf", digit_vocab("x-unknown"),
                    "unknown pre-tokenizer 'x-unknown' (tokenizer.ggml.pre); known: default, llama-bpe");
  expect_load_error("tok_unknown_pre2.gguf", digit_vocab("x-unknown"), "--allow-unknown-pretokenizer");
}

TEST(Tokenizer, AllowUnknownPreTokenizerFallsBackToDefaultWithAWarning) {
  const std::string path = write_vocab("tok_allow_pre.gguf", digit_vocab("x-unknown"));
  const GGUFFile f(path);
  ::testing::internal::CaptureStderr();
  const auto tok = load_tokenizer(f, {.allow_unknown_pretokenizer = true});
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("warning: " + path + ": unknown pre-tokenizer 'x-unknown'"), std::string::npos) << err;
  EXPECT_NE(err.find("splitting with 'default' instead"), std::string::npos) << err;
  // 'default' cuts digit runs into threes; GPT-2's rules would have kept the run whole.
  EXPECT_EQ(tok->encode("123123", false), (Ids{4, 4}));
  const std::string gpt2_path = write_vocab("tok_gpt2_pre.gguf", digit_vocab("gpt-2"));
  const GGUFFile gpt2_file(gpt2_path);
  EXPECT_EQ(load_tokenizer(gpt2_file)->encode("123123", false), Ids{5});
  std::filesystem::remove(path);
  std::filesystem::remove(gpt2_path);
}

TEST(Tokenizer, EndOfTurnKeysWinOverTexts) {
  const std::string path = write_vocab(
      "tok_eot.gguf", {{"tokenizer.ggml.model", str("gpt2")},
                       {"tokenizer.ggml.pre", str("gpt-2")},
                       {"tokenizer.ggml.tokens", strings({"a", "<|eot_id|>", "<|im_end|>", "<|eom_id|>"})},
                       {"tokenizer.ggml.merges", strings({})},
                       {"tokenizer.ggml.eot_token_id", {GGUFType::UINT32, uint64_t(2)}}});
  const GGUFFile f(path);
  const auto tok = load_tokenizer(f);
  EXPECT_EQ(tok->eot(), 2);
  EXPECT_EQ(tok->eom(), 3);
  EXPECT_EQ(tok->eos(), -1);
  EXPECT_TRUE(tok->ends_generation(3));
  EXPECT_FALSE(tok->ends_generation(1));
  std::filesystem::remove(path);
}

TEST(Tokenizer, VisibleTextEscapesWhatWouldNotShow) {
  EXPECT_EQ(visible_text("a\nb\t\r\\ \x01\x7F caf\xC3\xA9"), "a\\nb\\t\\r\\\\ \\x01\\x7f caf\xC3\xA9");
  EXPECT_EQ(visible_text("\xE6\x97"), "\\xe6\\x97");  // half a character
}

}  // namespace
}  // namespace sinkserve
