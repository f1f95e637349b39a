// Byte-level BPE ("gpt2" vocabularies): the text is pre-split into words by the pre-tokenizer the
// vocabulary names (tokenizer.ggml.pre), each word's bytes become GPT-2's printable stand-in
// characters, and ranked merges apply lowest rank first, as in llama.cpp's llm_tokenizer_bpe.
// The pre-tokenizer regexes are implemented by hand over Unicode category tables: their \p{L},
// \p{N}, \p{P} classes are beyond std::regex.
#include <algorithm>
#include <stdexcept>

#include "runtime/gguf.h"
#include "runtime/tokenizer_internal.h"

namespace sinkserve::tok {

namespace {

enum class PreTokenizer { kGpt2, kFalcon };

// A word of the pre-tokenizer, as a half-open range of codepoint indices.
struct Span {
  size_t begin, end;
};

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ over cps[begin, end),
// where `end` acts as the end of the text (the regex only ever sees one span).
void split_gpt2(const std::vector<uint32_t>& cps, const std::vector<CharClass>& cls,
                const std::vector<uint8_t>& ws, Span in, std::vector<Span>& out) {
  const size_t end = in.end;
  auto letter = [&](size_t p) { return p < end && cls[p] == CharClass::kLetter; };
  auto number = [&](size_t p) { return p < end && cls[p] == CharClass::kNumber; };
  auto space = [&](size_t p) { return p < end && ws[p]; };
  auto other = [&](size_t p) {
    return p < end && !ws[p] && cls[p] != CharClass::kLetter && cls[p] != CharClass::kNumber;
  };
  size_t start = in.begin;
  auto emit = [&](size_t p) {
    out.push_back({start, p});
    start = p;
  };
  for (size_t pos = in.begin; pos < end;) {
    const uint32_t c = cps[pos];
    if (c == '\'' && pos + 1 < end) {
      const uint32_t c1 = cps[pos + 1];
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        emit(pos += 2);
        continue;
      }
      if (pos + 2 < end) {
        const uint32_t c2 = cps[pos + 2];
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
          emit(pos += 3);
          continue;
        }
      }
    }
    const size_t q = c == ' ' ? pos + 1 : pos;  // the optional leading space
    if (letter(q)) {
      for (pos = q; letter(pos);) ++pos;
      emit(pos);
    } else if (number(q)) {
      for (pos = q; number(pos);) ++pos;
      emit(pos);
    } else if (other(q)) {
      for (pos = q; other(pos);) ++pos;
      emit(pos);
    } else {
      // Whitespace (every character is letter, number, other or space). \s+(?!\S) leaves the
      // last space of a run to prefix the next word; at the end of the span the run is whole.
      size_t n = 0;
      while (space(pos + n)) ++n;
      pos += (n > 1 && pos + n < end) ? n - 1 : n;
      emit(pos);
    }
  }
}

// Falcon's pre-tokenizer: runs of punctuation split off first ([\p{P}$+<=>^~|`]+), then the GPT-2
// split, then digit runs cut into groups of three from the left ([0-9][0-9][0-9]).
void split_falcon(const std::vector<uint32_t>& cps, const std::vector<CharClass>& cls,
                  const std::vector<uint8_t>& ws, Span in, std::vector<Span>& out) {
  auto punct = [&](size_t p) {
    const uint32_t c = cps[p];
    return cls[p] == CharClass::kPunct || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' ||
           c == '^' || c == '~' || c == '|' || c == '`';
  };
  auto digit = [&](size_t p) { return cps[p] >= '0' && cps[p] <= '9'; };
  std::vector<Span> words;
  for (size_t b = in.begin; b < in.end;) {
    const bool p = punct(b);
    size_t e = b + 1;
    while (e < in.end && punct(e) == p) ++e;
    split_gpt2(cps, cls, ws, {b, e}, words);
    b = e;
  }
  for (const Span& w : words) {
    size_t rest = w.begin;
    for (size_t p = w.begin; p + 3 <= w.end;) {
      if (digit(p) && digit(p + 1) && digit(p + 2)) {
        if (p > rest) out.push_back({rest, p});
        out.push_back({p, p + 3});
        rest = p += 3;
      } else {
        ++p;
      }
    }
    if (w.end > rest) out.push_back({rest, w.end});
  }
}

class BpeTokenizer final : public VocabTokenizer {
 public:
  explicit BpeTokenizer(const GGUFFile& f) : VocabTokenizer(f, /*spm=*/false) {
    const std::string pre = f.find_string("tokenizer.ggml.pre").value_or("default");
    if (pre == "default" || pre == "gpt-2" || pre == "gpt2")
      pre_ = PreTokenizer::kGpt2;
    else if (pre == "falcon")
      pre_ = PreTokenizer::kFalcon;
    else
      throw GGUFError(f.path() + ": pre-tokenizer '" + pre +
                      "' (tokenizer.ggml.pre) is not supported (supported: default, gpt-2, falcon)");

    // GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others map in
    // order to U+0100 onwards.
    std::array<uint32_t, 256> cp_of_byte{};
    from_cp_.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      cp_of_byte[b] = printable ? b : next++;
      from_cp_[cp_of_byte[b]] = int16_t(b);
      std::string s;
      utf8_append(s, cp_of_byte[b]);
      byte_token_[b] = v_.find(s);
    }

    pieces_.resize(v_.text.size());
    for (int32_t id = 0; id < v_.size(); ++id) {
      switch (v_.type[id]) {
        case kTypeNormal:
        case kTypeByte:
          pieces_[id] = unmap_bytes(v_.text[id]);
          break;
        case kTypeUserDefined:  // added tokens are stored as plain text, not byte-mapped
          pieces_[id] = v_.text[id];
          break;
        default:  // control, unknown and unused tokens have no text
          break;
      }
    }

    const GGUFArray& merges = f.get_array("tokenizer.ggml.merges");
    merges_.reserve(merges.items.size());
    for (size_t rank = 0; rank < merges.items.size(); ++rank) {
      const auto* m = std::get_if<std::string>(&merges.items[rank].v);
      if (!m) throw GGUFError(f.path() + ": metadata key 'tokenizer.ggml.merges' must be an array of strings");
      // Search from 1: the left part is never empty, though it may itself be a space.
      const size_t sp = m->find(' ', 1);
      if (sp == std::string::npos)
        throw GGUFError(f.path() + ": merge " + std::to_string(rank) + " '" + *m +
                        "' in 'tokenizer.ggml.merges' is not two tokens separated by a space");
      const int32_t a = v_.find(std::string_view(*m).substr(0, sp));
      const int32_t b = v_.find(std::string_view(*m).substr(sp + 1));
      const int32_t r = v_.find(m->substr(0, sp) + m->substr(sp + 1));
      // Symbols are tracked as token ids, so a merge of or into a non-token can never apply.
      if (a < 0 || b < 0 || r < 0) continue;
      merges_.emplace(key(a, b), Merge{int32_t(rank), r});  // an earlier duplicate keeps its rank
    }
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> out;
    if (add_bos && v_.add_bos) out.push_back(v_.bos);
    std::vector<Fragment> fragments;
    v_.partition(text, fragments);
    Scratch s;
    for (const Fragment& fr : fragments) {
      if (fr.token >= 0)
        out.push_back(fr.token);
      else
        encode_raw(fr.text, s, out);
    }
    return out;
  }

  std::string model_name() const override { return "gpt2"; }

 private:
  struct Merge {
    int32_t rank, token;
  };
  struct Symbol {
    int32_t prev, next;
    uint32_t len;   // bytes; 0 once merged into the left neighbour
    int32_t token;  // -1 for a byte the vocabulary lacks
  };
  struct Pair {
    int32_t rank, left, right;
    uint32_t len;  // len of left + right when queued: a mismatch later means the pair is stale
    int32_t token;
  };
  // Buffers reused across the words of one encode call.
  struct Scratch {
    std::vector<uint32_t> cps;
    std::vector<CharClass> cls;
    std::vector<uint8_t> ws;
    std::vector<size_t> offsets;
    std::vector<Span> words;
    std::vector<Symbol> sym;
    std::vector<Pair> heap;
  };

  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  std::string unmap_bytes(const std::string& t) const {
    std::string out;
    for (size_t i = 0; i < t.size();) {
      uint32_t cp;
      const size_t n = utf8_next(t, i, &cp);
      if (cp < from_cp_.size() && from_cp_[cp] >= 0)
        out += char(from_cp_[cp]);
      else  // not a byte stand-in: keep the character itself
        out.append(t, i, n);
      i += n;
    }
    return out;
  }

  void encode_raw(std::string_view text, Scratch& s, std::vector<int32_t>& out) const {
    s.cps.clear();
    s.cls.clear();
    s.ws.clear();
    s.offsets.clear();
    for (size_t i = 0; i < text.size();) {
      uint32_t cp;
      const size_t n = utf8_next(text, i, &cp);
      s.cps.push_back(cp);
      // A malformed byte is "other" (neither letter, number nor space) and keeps its bytes.
      s.cls.push_back(cp == kInvalidCodepoint ? CharClass::kOther : char_class(cp));
      s.ws.push_back(cp != kInvalidCodepoint && is_whitespace(cp));
      s.offsets.push_back(i);
      i += n;
    }
    s.offsets.push_back(text.size());

    s.words.clear();
    const Span all{0, s.cps.size()};
    if (pre_ == PreTokenizer::kFalcon)
      split_falcon(s.cps, s.cls, s.ws, all, s.words);
    else
      split_gpt2(s.cps, s.cls, s.ws, all, s.words);

    for (const Span& w : s.words)
      encode_word(text.substr(s.offsets[w.begin], s.offsets[w.end] - s.offsets[w.begin]), s, out);
  }

  void encode_word(std::string_view word, Scratch& s, std::vector<int32_t>& out) const {
    auto& sym = s.sym;
    auto& heap = s.heap;
    sym.clear();
    heap.clear();
    for (size_t i = 0; i < word.size(); ++i)
      sym.push_back({int32_t(i) - 1, i + 1 < word.size() ? int32_t(i) + 1 : -1, 1,
                     byte_token_[uint8_t(word[i])]});

    // Lowest rank first, then leftmost (std heaps pop the "largest").
    auto later = [](const Pair& a, const Pair& b) {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    };
    auto try_pair = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0 || sym[l].token < 0 || sym[r].token < 0) return;
      auto it = merges_.find(key(sym[l].token, sym[r].token));
      if (it == merges_.end()) return;
      heap.push_back({it->second.rank, l, r, sym[l].len + sym[r].len, it->second.token});
      std::push_heap(heap.begin(), heap.end(), later);
    };
    for (int32_t i = 1; i < int32_t(sym.size()); ++i) try_pair(i - 1, i);

    merge_symbols(sym, heap, later, try_pair);

    for (int32_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
      if (sym[i].token >= 0)
        out.push_back(sym[i].token);
      else if (v_.unk >= 0)
        out.push_back(v_.unk);
    }
  }

  PreTokenizer pre_ = PreTokenizer::kGpt2;
  std::array<int16_t, 324> from_cp_;  // byte of each stand-in character (the largest is U+0143)
  std::array<int32_t, 256> byte_token_;
  std::unordered_map<uint64_t, Merge> merges_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const GGUFFile& f) { return std::make_unique<BpeTokenizer>(f); }

}  // namespace sinkserve::tok
