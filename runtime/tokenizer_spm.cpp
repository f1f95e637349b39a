// SentencePiece-style BPE over scored pieces ("llama" vocabularies), the algorithm of llama.cpp's
// llm_tokenizer_spm: start from single characters, repeatedly merge the adjacent pair whose
// concatenation is the highest-scoring token (leftmost on ties), and spell what never became a
// token with <0xNN> byte tokens. A heap of candidate pairs over a linked list of symbols keeps it
// O(n log n) in the text length; SentencePiece has no pre-split, so whole texts go through at once.
#include <algorithm>
#include <cstdio>
#include <limits>
#include <stdexcept>

#include "runtime/gguf.h"
#include "runtime/tokenizer_internal.h"

namespace sinkserve::tok {

namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

class SpmTokenizer final : public VocabTokenizer {
 public:
  explicit SpmTokenizer(const GGUFFile& f)
      : VocabTokenizer(f, /*spm=*/true, /*add_bos_default=*/true),
        add_space_prefix_(f.find_bool("tokenizer.ggml.add_space_prefix").value_or(true)) {
    byte_token_.fill(-1);
    pieces_.resize(v_.text.size());
    for (int32_t id = 0; id < v_.size(); ++id) {
      const std::string& t = v_.text[id];
      switch (v_.type[id]) {
        case kTypeByte: {
          unsigned b = 0;
          int end = 0;
          if (std::sscanf(t.c_str(), "<0x%2X>%n", &b, &end) != 1 || size_t(end) != t.size())
            throw GGUFError(f.path() + ": byte token " + std::to_string(id) + " is '" + t +
                            "', expected the form <0xNN>");
          if (byte_token_[b] < 0) byte_token_[b] = id;
          pieces_[id] = std::string(1, char(b));
          break;
        }
        case kTypeNormal:
          pieces_[id] = unescape(t);
          break;
        case kTypeUserDefined:
          pieces_[id] = t;
          break;
        case kTypeUnknown:
          pieces_[id] = " \xE2\x81\x87 ";  // SentencePiece's surface for <unk>: " ⁇ "
          break;
        default:  // control and unused tokens have no text
          break;
      }
    }
  }

  void encode_text(std::string_view text, bool after_special, bool /*at_start*/,
                   std::vector<int32_t>& out) const override {
    // As SentencePiece sees it, every run of text after a special token starts a new sentence.
    std::string escaped;
    if (add_space_prefix_ && after_special) escaped += kSpace;
    for (char c : text) {
      if (c == ' ')
        escaped += kSpace;
      else
        escaped += c;
    }
    tokenize(escaped, out);
  }

  std::string model_name() const override { return "llama"; }
  bool strips_leading_space() const override { return add_space_prefix_; }

 private:
  struct Symbol {
    int32_t prev, next;
    uint32_t offset, len;  // bytes of the escaped text; len 0 once merged into its left neighbour
    int32_t token;         // -1: not a token (spelled with byte tokens at the end)
  };
  struct Pair {
    float score;
    int32_t left, right;
    uint32_t len;  // len of left + right when queued: a mismatch later means the pair is stale
    int32_t token;
  };
  struct PairOrder {  // highest score first, then leftmost
    bool operator()(const Pair& a, const Pair& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  static std::string unescape(const std::string& t) {
    std::string out;
    for (size_t i = 0; i < t.size();) {
      if (t.compare(i, kSpace.size(), kSpace) == 0) {
        out += ' ';
        i += kSpace.size();
      } else {
        out += t[i++];
      }
    }
    return out;
  }

  void tokenize(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    if (text.size() > size_t(std::numeric_limits<int32_t>::max()))
      throw std::length_error("text of " + std::to_string(text.size()) + " bytes is too long to tokenize");

    std::vector<Symbol> sym;
    sym.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      uint32_t cp;
      // A malformed byte stays a symbol of its own, which byte fallback then spells exactly.
      const size_t n = utf8_next(text, i, &cp);
      const int32_t idx = int32_t(sym.size());
      sym.push_back({idx - 1, i + n < text.size() ? idx + 1 : -1, uint32_t(i), uint32_t(n),
                     v_.find(text.substr(i, n))});
      i += n;
    }

    std::vector<Pair> heap;
    heap.reserve(sym.size());
    auto add_pair = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return false;
      const uint32_t len = sym[l].len + sym[r].len;
      const int32_t id = v_.find(text.substr(sym[l].offset, len));
      if (id >= 0) heap.push_back({v_.score[id], l, r, len, id});
      return id >= 0;
    };
    // Seeding all adjacent pairs then heapifying once is linear; later pairs are pushed singly.
    for (int32_t i = 1; i < int32_t(sym.size()); ++i) add_pair(i - 1, i);
    std::make_heap(heap.begin(), heap.end(), PairOrder{});
    auto try_pair = [&](int32_t l, int32_t r) {
      if (add_pair(l, r)) std::push_heap(heap.begin(), heap.end(), PairOrder{});
    };

    merge_symbols(sym, heap, PairOrder{}, try_pair);

    for (int32_t i = 0; i >= 0; i = sym[i].next) {
      const Symbol& s = sym[i];
      if (s.token >= 0) {
        out.push_back(s.token);
        continue;
      }
      bool spellable = true;
      for (uint32_t k = 0; k < s.len; ++k) spellable &= byte_token_[uint8_t(text[s.offset + k])] >= 0;
      if (!spellable) {  // a vocabulary without byte fallback: one <unk> per character
        if (v_.unk >= 0) out.push_back(v_.unk);
        continue;
      }
      for (uint32_t k = 0; k < s.len; ++k) out.push_back(byte_token_[uint8_t(text[s.offset + k])]);
    }
  }

  bool add_space_prefix_;
  std::array<int32_t, 256> byte_token_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(const GGUFFile& f) { return std::make_unique<SpmTokenizer>(f); }

}  // namespace sinkserve::tok
