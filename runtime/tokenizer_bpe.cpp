// Byte-level BPE ("gpt2" vocabularies): the text is pre-split into words by the rules the
// vocabulary's tokenizer.ggml.pre names (tokenizer_pre.cpp), each word's bytes become GPT-2's
// printable stand-in characters, and ranked merges apply lowest rank first, as in llama.cpp's
// llm_tokenizer_bpe.
#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "runtime/gguf.h"
#include "runtime/tokenizer_internal.h"

namespace sinkserve::tok {

namespace {

class BpeTokenizer final : public VocabTokenizer {
 public:
  BpeTokenizer(const GGUFFile& f, const PreTokenizerRules& pre)
      : VocabTokenizer(f, /*spm=*/false, pre.add_bos), whole_word_tokens_(pre.whole_word_tokens) {
    for (std::string_view p : pre.patterns) patterns_.emplace_back(p);

    // GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others map in
    // order to U+0100 onwards.
    from_cp_.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const uint32_t cp = printable ? b : next++;
      from_cp_[cp] = int16_t(b);
      utf8_append(byte_char_[b], cp);
      byte_token_[b] = v_.find(byte_char_[b]);
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
  // Buffers reused across the words of one text.
  struct Scratch {
    CodepointText text;
    std::vector<Span> words, split;
    SplitPattern::State state;
    std::string mapped;
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

  void encode_text(std::string_view text, bool /*after_special*/, std::vector<int32_t>& out) const override {
    Scratch s;
    s.text.assign(text);
    s.words.push_back({0, s.text.cps.size()});
    for (const SplitPattern& p : patterns_) {
      s.split.clear();
      for (const Span& w : s.words) p.split(s.text, w, s.split, s.state);
      std::swap(s.words, s.split);
    }
    const auto& at = s.text.offsets;
    for (const Span& w : s.words) encode_word(text.substr(at[w.begin], at[w.end] - at[w.begin]), s, out);
  }

  void encode_word(std::string_view word, Scratch& s, std::vector<int32_t>& out) const {
    if (whole_word_tokens_) {
      s.mapped.clear();
      for (char c : word) s.mapped += byte_char_[uint8_t(c)];
      if (const int32_t id = v_.find(s.mapped); id >= 0) {
        out.push_back(id);
        return;
      }
    }
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

  std::vector<SplitPattern> patterns_;
  bool whole_word_tokens_;
  std::array<int16_t, 324> from_cp_;      // byte of each stand-in character (the largest is U+0143)
  std::array<std::string, 256> byte_char_;  // stand-in character of each byte, UTF-8
  std::array<int32_t, 256> byte_token_;
  std::unordered_map<uint64_t, Merge> merges_;
};

std::string known_pre_tokenizers() {
  std::string names;
  for (const PreTokenizerRules& r : pre_tokenizer_table())
    for (std::string_view n : r.names) names += (names.empty() ? "" : ", ") + std::string(n);
  return names;
}

void warn(const std::string& message) { std::fprintf(stderr, "sinkserve: warning: %s\n", message.c_str()); }

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const GGUFFile& f, const TokenizerOptions& opt) {
  const std::optional<std::string> name = f.find_string("tokenizer.ggml.pre");
  if (!name)
    warn(f.path() + ": no pre-tokenizer named (tokenizer.ggml.pre); using 'default', which may split "
         "words differently from the model's own tokenizer");
  const PreTokenizerRules* rules = find_pre_tokenizer(name.value_or("default"));
  if (!rules) {
    const std::string what = f.path() + ": unknown pre-tokenizer '" + *name + "' (tokenizer.ggml.pre)";
    if (!opt.allow_unknown_pretokenizer)
      throw GGUFError(what + "; known: " + known_pre_tokenizers() +
                      ". --allow-unknown-pretokenizer splits with 'default' instead");
    warn(what + "; splitting with 'default' instead (--allow-unknown-pretokenizer), so ids may differ "
         "from the model's own tokenizer");
    rules = find_pre_tokenizer("default");
  }
  return std::make_unique<BpeTokenizer>(f, *rules);
}

}  // namespace sinkserve::tok
