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
  Vocab(const GGUFFile& f, bool spm);
  Vocab(const Vocab&) = delete;
  Vocab& operator=(const Vocab&) = delete;

  int32_t size() const { return int32_t(text.size()); }
  int32_t find(std::string_view s) const {
    auto it = ids_.find(s);
    return it == ids_.end() ? -1 : it->second;
  }
  // Splits `s` at every literal occurrence of a control, user-defined or unknown token (as
  // llama.cpp does with parse_special), leftmost first and the longest token at a position.
  void partition(std::string_view s, std::vector<Fragment>& out) const;

  std::vector<std::string> text;
  std::vector<float> score;
  std::vector<int32_t> type;
  int32_t bos = -1, eos = -1, unk = -1;
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
// constructors fill pieces_ (each token's text).
class VocabTokenizer : public Tokenizer {
 public:
  VocabTokenizer(const GGUFFile& f, bool spm) : v_(f, spm) {}
  std::string piece(int32_t id) const override;
  int32_t bos() const override { return v_.bos; }
  int32_t eos() const override { return v_.eos; }
  int32_t vocab_size() const override { return v_.size(); }
  int32_t find(std::string_view text) const override { return v_.find(text); }

 protected:
  Vocab v_;
  std::vector<std::string> pieces_;
};

std::unique_ptr<Tokenizer> make_spm_tokenizer(const GGUFFile& f);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const GGUFFile& f);

}  // namespace sinkserve::tok
