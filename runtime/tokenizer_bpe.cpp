// BPE with ranked merges. From GGUF ("gpt2" vocabularies): byte-level, the text pre-split into
// words by the rules the vocabulary's tokenizer.ggml.pre names (tokenizer_pre.cpp), as in
// llama.cpp's llm_tokenizer_bpe. From a tokenizer.json (tokenizer.hf.* keys, tokenizer_json.cpp):
// the model of Hugging Face tokenizers, byte-level or over characters with <0xNN> byte fallback,
// after its normalizer and with its own split patterns. Either way each word's symbols (bytes as
// GPT-2's printable stand-ins, or characters) merge lowest rank first.
#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "runtime/gguf.h"
#include "runtime/tokenizer_internal.h"

namespace sinkserve::tok {

namespace {

// How text becomes words and words become symbols, and how tokens decode.
struct BpeRules {
  std::vector<std::string> patterns;
  bool whole_word_tokens = false;  // a word that is itself a token is taken whole
  bool add_bos = false;            // BOS is added when tokenizer.ggml.add_bos_token is absent
  bool byte_level = true;          // words are bytes as GPT-2's stand-in characters
  bool byte_fallback = false;      // a character without a token becomes its <0xNN> tokens
  bool fuse_unk = false;           // a run of unknown characters becomes one unknown token
  // tokenizer.json's normalizer, as (kind, a, b) triples applied in order to each run of text.
  std::vector<std::string> normalizer;
  std::string decode_space;  // stands for a space in token texts (U+2581)
  bool strip_leading_space = false;
};

class BpeTokenizer final : public VocabTokenizer {
 public:
  BpeTokenizer(const GGUFFile& f, BpeRules rules)
      : VocabTokenizer(f, /*spm=*/false, rules.add_bos), r_(std::move(rules)) {
    for (const std::string& p : r_.patterns) patterns_.emplace_back(p);
    for (size_t i = 0; i < r_.normalizer.size(); i += 3) {
      const std::string& kind = r_.normalizer[i];
      if (kind != "prepend" && kind != "prepend_if_missing" && kind != "prepend_if_missing_first" && kind != "replace")
        throw GGUFError(f.path() + ": unknown normalizer step '" + kind + "' in 'tokenizer.hf.normalizer'");
    }

    // GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others map in
    // order to U+0100 onwards.
    from_cp_.fill(-1);
    byte_token_.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const uint32_t cp = printable ? b : next++;
      from_cp_[cp] = int16_t(b);
      utf8_append(byte_char_[b], cp);
      if (r_.byte_level) {
        byte_token_[b] = v_.find(byte_char_[b]);
      } else if (r_.byte_fallback) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        byte_token_[b] = v_.find(name);
      }
    }

    pieces_.resize(v_.text.size());
    for (int32_t id = 0; id < v_.size(); ++id) {
      const std::string& t = v_.text[id];
      switch (v_.type[id]) {
        case kTypeNormal:
          pieces_[id] = r_.byte_level ? unmap_bytes(t) : decode_spaces(t);
          break;
        case kTypeByte:
          if (r_.byte_level) {
            pieces_[id] = unmap_bytes(t);
          } else {
            unsigned b = 0;
            int end = 0;
            if (std::sscanf(t.c_str(), "<0x%2X>%n", &b, &end) != 1 || size_t(end) != t.size())
              throw GGUFError(f.path() + ": byte token " + std::to_string(id) + " is '" + t + "', expected the form <0xNN>");
            pieces_[id] = std::string(1, char(b));
          }
          break;
        case kTypeUserDefined:  // added tokens are stored as plain text, not byte-mapped
          pieces_[id] = t;
          break;
        default:  // control, unknown and unused tokens have no text
          break;
      }
    }

    if (f.find("tokenizer.hf.merges")) read_id_merges(f);
    else read_string_merges(f);
  }

  std::string model_name() const override { return r_.byte_level ? "gpt2" : "llama"; }
  bool strips_leading_space() const override { return r_.strip_leading_space; }

 private:
  struct Merge {
    int32_t rank, token;
  };
  struct Symbol {
    int32_t prev, next;
    uint32_t len;   // bytes; 0 once merged into the left neighbour
    int32_t token;  // -1 for a byte or character the vocabulary lacks
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

  void add_merge(int32_t rank, int32_t a, int32_t b) {
    const int32_t r = v_.find(v_.text[size_t(a)] + v_.text[size_t(b)]);
    // Symbols are tracked as token ids, so a merge of or into a non-token can never apply.
    if (r < 0) return;
    merges_.emplace(key(a, b), Merge{rank, r});  // an earlier duplicate keeps its rank
  }

  void read_string_merges(const GGUFFile& f) {
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
      if (a >= 0 && b >= 0) add_merge(int32_t(rank), a, b);
    }
  }

  // Merges as pairs of token ids (left, right), lowest rank first.
  void read_id_merges(const GGUFFile& f) {
    const GGUFArray& ids = f.get_array("tokenizer.hf.merges");
    if (ids.items.size() % 2) throw GGUFError(f.path() + ": 'tokenizer.hf.merges' holds an odd number of ids");
    merges_.reserve(ids.items.size() / 2);
    for (size_t i = 0; i < ids.items.size(); i += 2) {
      const auto* a = std::get_if<int64_t>(&ids.items[i].v);
      const auto* b = std::get_if<int64_t>(&ids.items[i + 1].v);
      if (!a || !b || *a < 0 || *b < 0 || *a >= v_.size() || *b >= v_.size())
        throw GGUFError(f.path() + ": merge " + std::to_string(i / 2) + " of 'tokenizer.hf.merges' is not two token ids");
      add_merge(int32_t(i / 2), int32_t(*a), int32_t(*b));
    }
  }

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

  std::string decode_spaces(const std::string& t) const {
    if (r_.decode_space.empty()) return t;
    std::string out;
    for (size_t i = 0; i < t.size();) {
      if (t.compare(i, r_.decode_space.size(), r_.decode_space) == 0) {
        out += ' ';
        i += r_.decode_space.size();
      } else {
        out += t[i++];
      }
    }
    return out;
  }

  std::string normalize(std::string_view text, bool at_start) const {
    std::string s(text);
    for (size_t i = 0; i < r_.normalizer.size(); i += 3) {
      const std::string &kind = r_.normalizer[i], &a = r_.normalizer[i + 1], &b = r_.normalizer[i + 2];
      const bool starts = s.compare(0, a.size(), a) == 0;
      if (kind == "prepend") {
        if (!s.empty()) s.insert(0, a);
      } else if (kind == "prepend_if_missing" || kind == "prepend_if_missing_first") {
        if (!s.empty() && !starts && (kind == "prepend_if_missing" || at_start)) s.insert(0, a);
      } else if (!a.empty()) {  // replace
        std::string out;
        for (size_t p = 0;;) {
          const size_t q = s.find(a, p);
          out.append(s, p, q == std::string::npos ? std::string::npos : q - p);
          if (q == std::string::npos) break;
          out += b;
          p = q + a.size();
        }
        s = std::move(out);
      }
    }
    return s;
  }

  void encode_text(std::string_view raw, bool /*after_special*/, bool at_start,
                   std::vector<int32_t>& out) const override {
    const std::string normalized = r_.normalizer.empty() ? std::string() : normalize(raw, at_start);
    const std::string_view text = r_.normalizer.empty() ? raw : std::string_view(normalized);
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

  // The word's first symbols: one per byte (byte-level), or one per character with the
  // character's <0xNN> tokens for one the vocabulary lacks (byte fallback).
  void initial_symbols(std::string_view word, std::vector<Symbol>& sym) const {
    auto add = [&](uint32_t len, int32_t token) {
      const int32_t i = int32_t(sym.size());
      sym.push_back({i - 1, -1, len, token});
      if (i > 0) sym[size_t(i - 1)].next = i;
    };
    if (r_.byte_level) {
      for (char c : word) add(1, byte_token_[uint8_t(c)]);
      return;
    }
    for (size_t i = 0; i < word.size();) {
      uint32_t cp;
      const size_t n = utf8_next(word, i, &cp);
      const int32_t id = v_.find(word.substr(i, n));
      bool spelled = id < 0 && r_.byte_fallback;
      for (size_t k = 0; spelled && k < n; ++k) spelled = byte_token_[uint8_t(word[i + k])] >= 0;
      if (spelled)
        for (size_t k = 0; k < n; ++k) add(1, byte_token_[uint8_t(word[i + k])]);
      else
        add(uint32_t(n), id);
      i += n;
    }
  }

  void encode_word(std::string_view word, Scratch& s, std::vector<int32_t>& out) const {
    if (r_.whole_word_tokens) {
      s.mapped.clear();
      if (r_.byte_level)
        for (char c : word) s.mapped += byte_char_[uint8_t(c)];
      else
        s.mapped = word;
      if (const int32_t id = v_.find(s.mapped); id >= 0) {
        out.push_back(id);
        return;
      }
    }
    auto& sym = s.sym;
    auto& heap = s.heap;
    sym.clear();
    heap.clear();
    initial_symbols(word, sym);

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

    bool unknown_run = false;
    for (int32_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
      if (sym[i].token >= 0) {
        out.push_back(sym[i].token);
        unknown_run = false;
      } else if (v_.unk >= 0 && !(r_.fuse_unk && unknown_run)) {
        out.push_back(v_.unk);
        unknown_run = true;
      }
    }
  }

  BpeRules r_;
  std::vector<SplitPattern> patterns_;
  std::array<int16_t, 324> from_cp_;      // byte of each stand-in character (the largest is U+0143)
  std::array<std::string, 256> byte_char_;  // stand-in character of each byte, UTF-8
  std::array<int32_t, 256> byte_token_;   // the token a byte starts as (byte-level) or falls back to
  std::unordered_map<uint64_t, Merge> merges_;
};

std::string known_pre_tokenizers() {
  std::string names;
  for (const PreTokenizerRules& r : pre_tokenizer_table())
    for (std::string_view n : r.names) names += (names.empty() ? "" : ", ") + std::string(n);
  return names;
}

void warn(const std::string& message) { std::fprintf(stderr, "sinkserve: warning: %s\n", message.c_str()); }

std::vector<std::string> string_array(const GGUFFile& f, const std::string& key) {
  std::vector<std::string> v;
  if (!f.find(key)) return v;
  for (const GGUFValue& item : f.get_array(key).items) {
    const auto* s = std::get_if<std::string>(&item.v);
    if (!s) throw GGUFError(f.path() + ": metadata key '" + key + "' must be an array of strings");
    v.push_back(*s);
  }
  return v;
}

// The rules a tokenizer.json gave (tokenizer_json.cpp writes these keys).
BpeRules hf_rules(const GGUFFile& f) {
  BpeRules r;
  r.patterns = string_array(f, "tokenizer.hf.pre");
  r.normalizer = string_array(f, "tokenizer.hf.normalizer");
  if (r.normalizer.size() % 3) throw GGUFError(f.path() + ": 'tokenizer.hf.normalizer' is not a list of triples");
  r.byte_level = f.find_bool("tokenizer.hf.byte_level").value_or(true);
  r.byte_fallback = f.find_bool("tokenizer.hf.byte_fallback").value_or(false);
  r.fuse_unk = f.find_bool("tokenizer.hf.fuse_unk").value_or(false);
  r.whole_word_tokens = f.find_bool("tokenizer.hf.ignore_merges").value_or(false);
  r.decode_space = f.find_string("tokenizer.hf.decode_space").value_or("");
  r.strip_leading_space = f.find_bool("tokenizer.hf.strip_leading_space").value_or(false);
  return r;
}

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const GGUFFile& f, const TokenizerOptions& opt) {
  if (f.find("tokenizer.hf.merges")) return std::make_unique<BpeTokenizer>(f, hf_rules(f));
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
  BpeRules r;
  r.patterns.assign(rules->patterns.begin(), rules->patterns.end());
  r.whole_word_tokens = rules->whole_word_tokens;
  r.add_bos = rules->add_bos;
  return std::make_unique<BpeTokenizer>(f, std::move(r));
}

}  // namespace sinkserve::tok
