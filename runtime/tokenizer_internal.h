// Shared pieces of the tokenizer implementations (runtime/tokenizer*.cpp); not a public interface.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "runtime/tokenizer.h"

namespace sinkserve {
class GGUFFile;
}

namespace sinkserve::tok {

// ---- Unicode -------------------------------------------------------------------------------

// The general-category classes the pre-tokenizer regexes name (\p{L}, \p{N}, \p{P}).
enum class CharClass : uint8_t { kOther, kLetter, kNumber, kPunct };
CharClass char_class(uint32_t cp);
// \s of the regex engines the reference tokenizers use (White_Space property).
bool is_whitespace(uint32_t cp);

// Returned by utf8_next for a byte that does not start a well-formed character.
inline constexpr uint32_t kInvalidCodepoint = 0xFFFFFFFF;

// Decodes the character at s[i]. Returns its length in bytes (>= 1 when i < s.size()) and sets
// *cp; a malformed sequence yields kInvalidCodepoint and the length of its maximal valid prefix
// (at least 1), the Unicode "maximal subpart" convention.
size_t utf8_next(std::string_view s, size_t i, uint32_t* cp);
// Like utf8_next, but reports an incomplete yet so far valid sequence at the end of `s` by
// returning 0 (more bytes could still make it whole).
size_t utf8_next_or_incomplete(std::string_view s, size_t i, uint32_t* cp);
void utf8_append(std::string& out, uint32_t cp);

// ---- Split patterns ------------------------------------------------------------------------

// The properties split patterns test, as bits: \p{L}, \p{N}, \p{P} and \s.
enum : uint8_t { kPropLetter = 1, kPropNumber = 2, kPropPunct = 4, kPropSpace = 8 };

// A text as code points with their properties, computed once per text. A malformed byte becomes
// kInvalidCodepoint with no property (so only negated classes match it) and keeps its byte.
struct CodepointText {
  std::vector<uint32_t> cps;
  std::vector<uint8_t> props;
  std::vector<size_t> offsets;  // byte offset of each code point, then the text's size
  void assign(std::string_view text);
};

// A half-open range of code point indices.
struct Span {
  size_t begin, end;
};

// A regular expression in the dialect of the pre-tokenizer patterns of tokenizer.json files:
// literals (\x{HHHH} for any code point), classes with ranges and negation, \s \S \p{L} \p{N}
// \p{P} \P{..}, groups (...) and (?:...), alternation, greedy ? * + {n} {n,} {n,m}, lookaheads
// (?=...) (?!...) and $. Matching backtracks and takes the first alternative that succeeds, as the
// Oniguruma and PCRE engines behind the reference tokenizers do; std::regex has no \p classes.
class SplitPattern {
 public:
  // Throws std::invalid_argument naming the pattern and the offset of the problem, also for a
  // pattern that can match empty text (a split would never advance).
  explicit SplitPattern(std::string_view pattern);

  // Working memory of a split, reused across calls by one thread.
  struct State {
    std::vector<std::pair<int32_t, size_t>> stack;  // backtracking: (instruction, position)
    // Split instructions already tried at a position, as bits: row pos - base, one bit per
    // instruction. Without captures a retry can only fail again, so a search that scans start
    // after start through text that does not match (\s+$ over a long run of spaces) stays linear.
    std::vector<uint64_t> tried;
    size_t base = 0, used = 0, words = 0;
  };

  // Appends the pieces of `in` to `out`: each match and each run of text between two matches, in
  // order (what Hugging Face calls an "Isolated" split). `in` acts as the whole text: lookaheads
  // and $ see its end.
  void split(const CodepointText& t, Span in, std::vector<Span>& out, State& state) const;

  // A character class: code point ranges plus properties that admit a code point.
  struct Set {
    std::vector<std::pair<uint32_t, uint32_t>> ranges;  // sorted by first
    uint8_t props = 0;      // \p{..} and \s: code points having one of these
    uint8_t not_props = 0;  // \P{..} and \S: code points lacking one of these
    bool negate = false;    // [^...]
    bool contains(uint32_t cp, uint8_t cp_props) const;
  };
  enum class Op : uint8_t { kChar, kSet, kSplit, kJump, kLookahead, kEnd, kMatch };
  struct Inst {
    Op op;
    bool negate = false;   // kLookahead: (?!...)
    uint32_t arg = 0;      // kChar: the code point; kSet: index into sets_
    int32_t x = 0, y = 0;  // kSplit: tried first, then; kJump: x; kLookahead: y follows the body
  };

 private:
  // End of the match of the program from `pc` at `pos`, or npos. `remember`: record tried
  // splits in state.tried (not inside lookaheads, whose outcome a later search must see afresh).
  size_t match(const CodepointText& t, int32_t pc, size_t pos, size_t end, State& state, bool remember) const;
  // Forgets the tried splits; rows start at `base`.
  void forget(State& state, size_t base) const;

  std::vector<Inst> prog_;
  std::vector<Set> sets_;
  friend class PatternCompiler;
};

// How a byte-level BPE vocabulary splits text into words before merging, for the values of
// tokenizer.ggml.pre that name it (docs/tokenizers.md lists them).
struct PreTokenizerRules {
  std::vector<std::string_view> names;
  // Applied in order: each splits every piece the previous ones left.
  std::vector<std::string_view> patterns;
  // A word that is itself a token is taken whole rather than merged (llama.cpp's ignore_merges:
  // Llama-3's merges cannot rebuild some of its tokens).
  bool whole_word_tokens = false;
  // BOS is added when tokenizer.ggml.add_bos_token is absent.
  bool add_bos = false;
};
const std::vector<PreTokenizerRules>& pre_tokenizer_table();
const PreTokenizerRules* find_pre_tokenizer(std::string_view name);

// ---- Vocabulary ----------------------------------------------------------------------------

// Token types of tokenizer.ggml.token_type (llama.cpp's numbering).
enum TokenType : int32_t {
  kTypeNormal = 1, kTypeUnknown = 2, kTypeControl = 3, kTypeUserDefined = 4, kTypeUnused = 5,
  kTypeByte = 6,
};

// A run of the input: raw text to tokenize, or a special token matched literally.
struct Fragment {
  std::string_view text;
  int32_t token = -1;  // -1: raw text
};

// Token strings, scores and types as the GGUF file stores them, plus the lookups every
// tokenizer needs. Not copyable: `ids_` holds views into `text`.
class Vocab {
 public:
  // spm: SentencePiece defaults for absent special-token ids. add_bos_default: whether BOS is
  // added when tokenizer.ggml.add_bos_token is absent.
  Vocab(const GGUFFile& f, bool spm, bool add_bos_default);
  Vocab(const Vocab&) = delete;
  Vocab& operator=(const Vocab&) = delete;

  int32_t size() const { return int32_t(text.size()); }
  int32_t find(std::string_view s) const {
    auto it = ids_.find(s);
    return it == ids_.end() ? -1 : it->second;
  }
  // Splits `s` at every literal occurrence of a user-defined token and, with parse_special, of a
  // control or unknown token (as llama.cpp does), leftmost first and the longest at a position.
  void partition(std::string_view s, bool parse_special, std::vector<Fragment>& out) const;

  std::vector<std::string> text;
  std::vector<float> score;
  std::vector<int32_t> type;
  int32_t bos = -1, eos = -1, unk = -1, eot = -1, eom = -1;
  bool add_bos = false;

 private:
  std::unordered_map<std::string_view, int32_t> ids_;
  // Special tokens by their first byte, longest first, so that a scan of the input touches only
  // the candidates that can start at each position.
  std::array<std::vector<int32_t>, 256> special_by_first_byte_;
};

// The merge loop of both tokenizers, over a doubly linked list of symbols: pop the best queued
// pair (heap ordered by `order`), skip it if either side merged since it was queued (symbols only
// grow, so a changed total length tells), join the right symbol into the left, and let
// `try_pair(l, r)` queue the new neighbour pairs. Symbols have prev, next, len and token; pairs
// left, right, len and token.
template <class Symbol, class Pair, class Order, class TryPair>
void merge_symbols(std::vector<Symbol>& sym, std::vector<Pair>& heap, Order order, TryPair try_pair) {
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), order);
    const Pair p = heap.back();
    heap.pop_back();
    Symbol& l = sym[size_t(p.left)];
    Symbol& r = sym[size_t(p.right)];
    if (l.len == 0 || r.len == 0 || l.len + r.len != p.len) continue;
    l.len += r.len;
    l.token = p.token;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[size_t(r.next)].prev = p.left;
    try_pair(l.prev, p.left);
    try_pair(p.left, l.next);
  }
}

// The Tokenizer answers every vocabulary-backed tokenizer gives the same way. Derived
// constructors fill pieces_ (each token's text); encode_text tokenizes one run of plain text.
class VocabTokenizer : public Tokenizer {
 public:
  VocabTokenizer(const GGUFFile& f, bool spm, bool add_bos_default) : v_(f, spm, add_bos_default) {}
  std::string piece(int32_t id) const override;
  std::string_view token_text(int32_t id) const override;
  int32_t bos() const override { return v_.bos; }
  int32_t eos() const override { return v_.eos; }
  int32_t eot() const override { return v_.eot; }
  int32_t eom() const override { return v_.eom; }
  int32_t vocab_size() const override { return v_.size(); }
  int32_t find(std::string_view text) const override { return v_.find(text); }

 protected:
  // after_special: the text starts the input or follows a special token; at_start: it starts
  // the input.
  virtual void encode_text(std::string_view text, bool after_special, bool at_start,
                           std::vector<int32_t>& out) const = 0;

  Vocab v_;
  std::vector<std::string> pieces_;

 private:
  std::vector<int32_t> encode_ids(std::string_view text, bool add_bos, bool parse_special) const override;
  void check_id(int32_t id) const;
};

std::unique_ptr<Tokenizer> make_spm_tokenizer(const GGUFFile& f);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const GGUFFile& f, const TokenizerOptions& opt);

}  // namespace sinkserve::tok
