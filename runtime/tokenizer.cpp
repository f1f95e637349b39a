#include "runtime/tokenizer.h"

#include <algorithm>
#include <cstdio>

#include "runtime/gguf.h"
#include "runtime/tokenizer_internal.h"

namespace sinkserve {

namespace tok {

namespace {

enum class Elem { kString, kNumber, kInteger };

// An optional per-token array: nullptr when absent; throws when its length or element type is
// wrong (want_len 0 = any length).
const GGUFArray* find_array(const GGUFFile& f, const std::string& key, Elem want, size_t want_len) {
  if (!f.find(key)) return nullptr;
  const GGUFArray& a = f.get_array(key);  // throws naming the key when it is not an array
  if (want_len != 0 && a.items.size() != want_len)
    throw GGUFError(f.path() + ": metadata key '" + key + "' has " + std::to_string(a.items.size()) +
                    " entries, expected " + std::to_string(want_len) + " (one per token)");
  for (const GGUFValue& item : a.items) {
    const bool integer = std::holds_alternative<int64_t>(item.v) || std::holds_alternative<uint64_t>(item.v);
    const bool ok = want == Elem::kString   ? std::holds_alternative<std::string>(item.v)
                    : want == Elem::kNumber ? integer || std::holds_alternative<double>(item.v)
                                            : integer;
    if (!ok)
      throw GGUFError(f.path() + ": metadata key '" + key + "' must be an array of " +
                      (want == Elem::kString ? "strings" : want == Elem::kNumber ? "numbers" : "integers"));
  }
  return &a;
}

double number_of(const GGUFValue& v) {
  if (auto* d = std::get_if<double>(&v.v)) return *d;
  if (auto* i = std::get_if<int64_t>(&v.v)) return double(*i);
  return double(std::get<uint64_t>(v.v));
}

int64_t integer_of(const GGUFValue& v) {
  if (auto* i = std::get_if<int64_t>(&v.v)) return *i;
  const uint64_t u = std::get<uint64_t>(v.v);
  return u > uint64_t(INT64_MAX) ? -1 : int64_t(u);
}

// A token-id key: absent, negative or UINT32_MAX (how converters write "none") mean none.
int32_t read_token_id(const GGUFFile& f, const std::string& key, int32_t fallback, int32_t n_vocab) {
  const std::optional<int64_t> v = f.find_int(key);
  if (!v) return fallback < n_vocab ? fallback : -1;
  if (*v < 0 || *v == int64_t(UINT32_MAX)) return -1;
  if (*v >= n_vocab)
    throw GGUFError(f.path() + ": metadata key '" + key + "' is " + std::to_string(*v) +
                    ", outside the vocabulary of " + std::to_string(n_vocab) + " tokens");
  return int32_t(*v);
}

// Texts of the end-of-turn and end-of-message tokens of the common chat formats, for files that do
// not name them (llama.cpp's list); the first in the vocabulary wins.
constexpr std::string_view kEndOfTurnTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    // DeepSeek's, spelled with U+FF5C and U+2581
    "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",
};
constexpr std::string_view kEndOfMessageTexts[] = {"<|eom_id|>"};

}  // namespace

void VocabTokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= v_.size())
    throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " +
                            std::to_string(v_.size()) + " tokens");
}

std::string VocabTokenizer::piece(int32_t id) const {
  check_id(id);
  return pieces_[size_t(id)];
}

std::string_view VocabTokenizer::token_text(int32_t id) const {
  check_id(id);
  return v_.text[size_t(id)];
}

std::vector<int32_t> VocabTokenizer::encode_ids(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> out;
  if (add_bos && v_.add_bos) out.push_back(v_.bos);
  std::vector<Fragment> fragments;
  v_.partition(text, parse_special, fragments);
  bool after_special = true;
  for (size_t i = 0; i < fragments.size(); ++i) {
    const Fragment& fr = fragments[i];
    if (fr.token >= 0) {
      out.push_back(fr.token);
      after_special = true;
    } else {
      encode_text(fr.text, after_special, i == 0, out);
      after_special = false;
    }
  }
  return out;
}

Vocab::Vocab(const GGUFFile& f, bool spm, bool add_bos_default) {
  const GGUFArray* tokens = find_array(f, "tokenizer.ggml.tokens", Elem::kString, 0);
  if (!tokens) throw GGUFError(f.path() + ": metadata key 'tokenizer.ggml.tokens' is missing");
  const size_t n = tokens->items.size();
  if (n == 0) throw GGUFError(f.path() + ": metadata key 'tokenizer.ggml.tokens' is empty");
  if (n > size_t(INT32_MAX))
    throw GGUFError(f.path() + ": vocabulary of " + std::to_string(n) + " tokens is too large");

  text.reserve(n);
  for (const GGUFValue& t : tokens->items) text.push_back(std::get<std::string>(t.v));

  score.assign(n, 0.0f);
  if (const GGUFArray* a = find_array(f, "tokenizer.ggml.scores", Elem::kNumber, n))
    for (size_t i = 0; i < n; ++i) score[i] = float(number_of(a->items[i]));

  type.assign(n, kTypeNormal);
  if (const GGUFArray* a = find_array(f, "tokenizer.ggml.token_type", Elem::kInteger, n)) {
    for (size_t i = 0; i < n; ++i) {
      const int64_t t = integer_of(a->items[i]);
      if (t < kTypeNormal || t > kTypeByte)
        throw GGUFError(f.path() + ": token " + std::to_string(i) + " has unknown type " +
                        std::to_string(t) + " in 'tokenizer.ggml.token_type'");
      type[i] = int32_t(t);
    }
  }

  // Later duplicates win, as in llama.cpp, so that both resolve strings to the same ids.
  ids_.reserve(n);
  for (size_t i = 0; i < n; ++i) ids_[text[i]] = int32_t(i);

  const auto nv = int32_t(n);
  bos = read_token_id(f, "tokenizer.ggml.bos_token_id", spm ? 1 : -1, nv);
  eos = read_token_id(f, "tokenizer.ggml.eos_token_id", spm ? 2 : -1, nv);
  unk = read_token_id(f, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, nv);
  add_bos = f.find_bool("tokenizer.ggml.add_bos_token").value_or(add_bos_default) && bos >= 0;
  eot = read_token_id(f, "tokenizer.ggml.eot_token_id", -1, nv);
  eom = read_token_id(f, "tokenizer.ggml.eom_token_id", -1, nv);
  for (std::string_view t : kEndOfTurnTexts)
    if (eot < 0) eot = find(t);
  for (std::string_view t : kEndOfMessageTexts)
    if (eom < 0) eom = find(t);

  for (size_t i = 0; i < n; ++i) {
    if (text[i].empty()) continue;
    if (type[i] == kTypeControl || type[i] == kTypeUserDefined || type[i] == kTypeUnknown)
      special_by_first_byte_[uint8_t(text[i][0])].push_back(int32_t(i));
  }
  for (auto& ids : special_by_first_byte_)
    std::stable_sort(ids.begin(), ids.end(),
                     [&](int32_t a, int32_t b) { return text[a].size() > text[b].size(); });
}

void Vocab::partition(std::string_view s, bool parse_special, std::vector<Fragment>& out) const {
  size_t raw_begin = 0;
  for (size_t i = 0; i < s.size();) {
    const auto& candidates = special_by_first_byte_[uint8_t(s[i])];
    int32_t hit = -1;
    for (int32_t id : candidates) {
      if (!parse_special && type[id] != kTypeUserDefined) continue;
      if (s.compare(i, text[id].size(), text[id]) == 0) {
        hit = id;
        break;
      }
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    if (i > raw_begin) out.push_back({s.substr(raw_begin, i - raw_begin), -1});
    out.push_back({s.substr(i, text[hit].size()), hit});
    i += text[hit].size();
    raw_begin = i;
  }
  if (raw_begin < s.size()) out.push_back({s.substr(raw_begin), -1});
}

}  // namespace tok

std::unique_ptr<Tokenizer> load_tokenizer(const GGUFFile& f, const TokenizerOptions& opt) {
  const std::optional<std::string> model = f.find_string("tokenizer.ggml.model");
  if (!model && f.format() == ModelFormat::HfCheckpoint)
    throw GGUFError(f.path() + ": no tokenizer.json (sinkserve reads a checkpoint's tokenizer from it)");
  if (!model) throw GGUFError(f.path() + ": metadata key 'tokenizer.ggml.model' is missing (no tokenizer)");
  // A tokenizer.json's BPE merges by rank whatever its vocabulary (tokenizer_json.cpp).
  if (f.find("tokenizer.hf.merges")) return tok::make_bpe_tokenizer(f, opt);
  if (*model == "llama") return tok::make_spm_tokenizer(f);
  if (*model == "gpt2") return tok::make_bpe_tokenizer(f, opt);
  throw GGUFError(f.path() + ": tokenizer model '" + *model + "' is not supported (supported: llama, gpt2)");
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  StreamDecoder d(*this);
  std::string out;
  for (int32_t id : ids) out += d.push(id);
  out += d.flush();
  return out;
}

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
}

std::string visible_text(std::string_view bytes) {
  std::string out;
  char esc[8];
  for (size_t i = 0; i < bytes.size();) {
    uint32_t cp;
    const size_t n = tok::utf8_next(bytes, i, &cp);
    const bool control = cp == tok::kInvalidCodepoint || cp < 0x20 || cp == 0x7F;
    if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp == '\\') {
      out += "\\\\";
    } else if (control) {
      for (size_t k = 0; k < n; ++k) {
        std::snprintf(esc, sizeof esc, "\\x%02x", unsigned(uint8_t(bytes[i + k])));
        out += esc;
      }
    } else {
      out.append(bytes, i, n);
    }
    i += n;
  }
  return out;
}

std::string StreamDecoder::push(int32_t id) {
  std::string p = tok_.piece(id);
  if (p.empty()) return {};
  if (first_) {
    first_ = false;
    if (p[0] == ' ' && tok_.strips_leading_space()) p.erase(0, 1);
  }
  pending_ += p;
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    uint32_t cp;
    const size_t n = tok::utf8_next_or_incomplete(pending_, i, &cp);
    if (n == 0) break;  // a character still missing bytes: hold it back
    if (cp == tok::kInvalidCodepoint)
      out += kReplacement;
    else
      out.append(pending_, i, n);
    i += n;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  if (pending_.empty()) return {};
  pending_.clear();
  return std::string(kReplacement);
}

}  // namespace sinkserve
