#include "runtime/tokenizer_json.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "runtime/tokenizer_internal.h"

namespace sinkserve {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace tok;

// GPT-2's ByteLevel split as tokenizers writes it (with the trailing \s+).
constexpr std::string_view kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

GGUFValue str(std::string s) { return {GGUFType::STRING, std::move(s)}; }
GGUFValue boolean(bool b) { return {GGUFType::BOOL, b}; }
GGUFValue u32(int64_t v) { return {GGUFType::UINT32, uint64_t(v)}; }
GGUFValue strings(const std::vector<std::string>& v) {
  GGUFArray a{GGUFType::STRING, {}};
  a.items.reserve(v.size());
  for (const std::string& s : v) a.items.push_back(str(s));
  return {GGUFType::ARRAY, std::move(a)};
}
GGUFValue int32s(const std::vector<int32_t>& v) {
  GGUFArray a{GGUFType::INT32, {}};
  a.items.reserve(v.size());
  for (int32_t x : v) a.items.push_back({GGUFType::INT32, int64_t(x)});
  return {GGUFType::ARRAY, std::move(a)};
}

std::optional<json> read_optional_json(const fs::path& p) {
  if (!fs::exists(p)) return std::nullopt;
  std::ifstream in(p, std::ios::binary);
  if (!in) throw GGUFError(p.string() + ": cannot read");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw GGUFError(p.string() + ": not valid JSON: " + e.what());
  }
}

// A literal string as a split pattern of the regex engine.
std::string escape_pattern(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const size_t n = utf8_next(s, i, &cp);
    const bool word = cp < 128 && (std::isalnum(int(cp)) || cp == ' ');
    if (word) {
      out += char(cp);
    } else {
      char buf[16];
      std::snprintf(buf, sizeof buf, "\\x{%X}", unsigned(cp));
      out += buf;
    }
    i += n;
  }
  return out;
}

class Reader {
 public:
  Reader(const fs::path& dir, json tokenizer)
      : dir_(dir), path_((dir / "tokenizer.json").string()), t_(std::move(tokenizer)) {}

  [[noreturn]] void fail(const std::string& what) const { throw GGUFError(path_ + ": " + what); }

  void read(int64_t vocab_rows, std::map<std::string, GGUFValue>& kv) {
    if (!t_.is_object()) fail("not a JSON object");
    read_model();
    read_added_tokens();
    if (vocab_rows > 0 && int64_t(text_.size()) > vocab_rows)
      fail("token id " + std::to_string(text_.size() - 1) + " ('" + text_.back() + "') lies beyond the model's " +
           std::to_string(vocab_rows) + " embedding rows (config.json vocab_size)");
    // Ids the tokenizer never produces (padding of the embedding) become unused tokens.
    for (size_t i = 0; i < text_.size(); ++i)
      if (!assigned_[i]) text_[i] = "[PAD" + std::to_string(i) + "]", type_[i] = kTypeUnused;
    for (int64_t i = int64_t(text_.size()); i < vocab_rows; ++i) {
      text_.push_back("[PAD" + std::to_string(i) + "]");
      type_.push_back(kTypeUnused);
    }
    read_normalizer(get("normalizer"));
    read_pre_tokenizer(get("pre_tokenizer"), true);
    read_decoder(get("decoder"));
    read_post_processor(get("post_processor"));
    read_companions();

    kv["tokenizer.ggml.model"] = str(byte_level_ ? "gpt2" : "llama");
    kv["tokenizer.ggml.tokens"] = strings(text_);
    kv["tokenizer.ggml.token_type"] = int32s(type_);
    for (auto [key, id] : {std::pair{"bos", bos_}, {"eos", eos_}, {"unknown", unk_}, {"eot", eot_}, {"eom", eom_}})
      if (id >= 0) kv[std::string("tokenizer.ggml.") + key + "_token_id"] = u32(id);
    kv["tokenizer.ggml.add_bos_token"] = boolean(add_bos_ && bos_ >= 0);
    if (!chat_template_.empty()) kv["tokenizer.chat_template"] = str(chat_template_);
    kv["tokenizer.hf.merges"] = int32s(merges_);
    kv["tokenizer.hf.byte_level"] = boolean(byte_level_);
    kv["tokenizer.hf.byte_fallback"] = boolean(byte_fallback_);
    kv["tokenizer.hf.fuse_unk"] = boolean(fuse_unk_);
    kv["tokenizer.hf.ignore_merges"] = boolean(ignore_merges_);
    kv["tokenizer.hf.normalizer"] = strings(normalizer_);
    kv["tokenizer.hf.pre"] = strings(patterns_);
    kv["tokenizer.hf.decode_space"] = str(decode_space_);
    kv["tokenizer.hf.strip_leading_space"] = boolean(strip_leading_space_);
  }

 private:
  const json& get(const char* key) const {
    static const json null;
    auto it = t_.find(key);
    return it == t_.end() ? null : *it;
  }
  static std::string type_of(const json& j) {
    auto it = j.find("type");
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  }
  static std::string string_or(const json& j, const char* key, std::string fallback) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
  }
  static bool bool_or(const json& j, const char* key, bool fallback) {
    auto it = j.find(key);
    return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
  }

  void set_token(int64_t id, const std::string& text, int32_t type, const std::string& what) {
    if (id < 0 || id >= (int64_t(1) << 24)) fail(what + " has id " + std::to_string(id) + ", out of range");
    if (size_t(id) >= text_.size()) {
      text_.resize(size_t(id) + 1);
      type_.resize(size_t(id) + 1, kTypeNormal);
      assigned_.resize(size_t(id) + 1, false);
    }
    if (assigned_[size_t(id)] && text_[size_t(id)] != text)
      fail(what + " '" + text + "' has id " + std::to_string(id) + ", which '" + text_[size_t(id)] + "' has too");
    text_[size_t(id)] = text;
    type_[size_t(id)] = type;
    assigned_[size_t(id)] = true;
  }

  int32_t id_of(const std::string& text) const {
    auto it = ids_.find(text);
    return it == ids_.end() ? -1 : it->second;
  }

  void read_model() {
    const json& m = get("model");
    if (!m.is_object()) fail("no 'model' object");
    const std::string type = type_of(m);
    if (!type.empty() && type != "BPE")
      fail("model type '" + type + "' is not supported (sinkserve reads BPE tokenizers)");
    if (auto d = m.find("dropout"); d != m.end() && d->is_number() && d->get<double>() > 0)
      fail("BPE dropout is set: encoding would be random");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (!string_or(m, k, "").empty()) fail(std::string("BPE '") + k + "' is not supported");
    byte_fallback_ = bool_or(m, "byte_fallback", false);
    fuse_unk_ = bool_or(m, "fuse_unk", false);
    ignore_merges_ = bool_or(m, "ignore_merges", false);

    const auto vocab = m.find("vocab");
    if (vocab == m.end() || !vocab->is_object()) fail("model has no 'vocab' object");
    for (const auto& [text, id] : vocab->items()) {
      if (!id.is_number_integer()) fail("vocab entry '" + text + "' has no integer id");
      set_token(id.get<int64_t>(), text, kTypeNormal, "vocab entry");
      ids_[text] = int32_t(id.get<int64_t>());
    }
    if (byte_fallback_)
      for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        if (const int32_t id = id_of(name); id >= 0) type_[size_t(id)] = kTypeByte;
      }
    if (const std::string unk = string_or(m, "unk_token", ""); !unk.empty()) {
      unk_ = id_of(unk);
      if (unk_ < 0) fail("unk_token '" + unk + "' is not in the vocabulary");
    }

    const auto merges = m.find("merges");
    if (merges == m.end()) return;
    if (!merges->is_array()) fail("model 'merges' is not an array");
    merges_.reserve(merges->size() * 2);
    for (size_t i = 0; i < merges->size(); ++i) {
      const json& e = (*merges)[i];
      std::string l, r;
      if (e.is_string()) {  // "l r", tokenizers < 0.20
        const std::string s = e.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) fail("merge " + std::to_string(i) + " '" + s + "' is not two tokens separated by a space");
        l = s.substr(0, sp), r = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {  // ["l", "r"]
        l = e[0].get<std::string>(), r = e[1].get<std::string>();
      } else {
        fail("merge " + std::to_string(i) + " is neither \"l r\" nor [\"l\", \"r\"]: " + e.dump());
      }
      const int32_t a = id_of(l), b = id_of(r);
      for (const auto& [part, id] : {std::pair{l, a}, {r, b}, {l + r, id_of(l + r)}})
        if (id < 0) fail("merge " + std::to_string(i) + " ('" + l + "', '" + r + "'): '" + part + "' is not in the vocabulary");
      merges_.push_back(a);
      merges_.push_back(b);
    }
  }

  void read_added_tokens() {
    const json& added = get("added_tokens");
    if (added.is_null()) return;
    if (!added.is_array()) fail("'added_tokens' is not an array");
    for (const json& a : added) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string())
        fail("an added token has no integer 'id' and string 'content': " + a.dump());
      const std::string content = a["content"].get<std::string>();
      for (const char* flag : {"single_word", "lstrip", "rstrip"})
        if (bool_or(a, flag, false))
          fail("added token '" + content + "' sets '" + flag + "', which sinkserve does not implement");
      const int64_t id = a["id"].get<int64_t>();
      const int32_t type = id == unk_ ? kTypeUnknown : bool_or(a, "special", false) ? kTypeControl : kTypeUserDefined;
      if (size_t(id) < assigned_.size() && assigned_[size_t(id)] && text_[size_t(id)] == content) {
        type_[size_t(id)] = type;
      } else {
        set_token(id, content, type, "added token");
        ids_[content] = int32_t(id);
      }
    }
  }

  void read_normalizer(const json& n) {
    if (n.is_null()) return;
    const std::string type = type_of(n);
    if (type == "Sequence") {
      for (const json& k : n.value("normalizers", json::array())) read_normalizer(k);
    } else if (type == "Prepend") {
      normalizer_.insert(normalizer_.end(), {"prepend", string_or(n, "prepend", ""), ""});
    } else if (type == "Replace") {
      const json& p = n.value("pattern", json::object());
      if (!p.contains("String") || !p["String"].is_string())
        fail("normalizer Replace with a pattern other than a string is not supported: " + p.dump());
      normalizer_.insert(normalizer_.end(), {"replace", p["String"].get<std::string>(), string_or(n, "content", "")});
    } else {
      fail("normalizer '" + type + "' is not supported (sinkserve implements Prepend, Replace and Sequence)");
    }
  }

  void read_pre_tokenizer(const json& p, bool first) {
    if (p.is_null()) return;
    const std::string type = type_of(p);
    if (type == "Sequence") {
      bool at_first = first;
      for (const json& k : p.value("pretokenizers", json::array())) {
        read_pre_tokenizer(k, at_first);
        at_first = false;
      }
    } else if (type == "ByteLevel") {
      byte_level_ = true;
      if (bool_or(p, "add_prefix_space", false)) {
        if (!first) fail("pre-tokenizer ByteLevel with add_prefix_space after another pre-tokenizer is not supported");
        normalizer_.insert(normalizer_.end(), {"prepend_if_missing", " ", ""});
      }
      if (bool_or(p, "use_regex", true)) patterns_.emplace_back(kByteLevelPattern);
    } else if (type == "Split") {
      const std::string behavior = string_or(p, "behavior", "");
      if (behavior != "Isolated" || bool_or(p, "invert", false))
        fail("pre-tokenizer Split with behavior '" + behavior + "'" + (bool_or(p, "invert", false) ? " inverted" : "") +
             " is not supported (sinkserve implements Isolated)");
      const json& pat = p.value("pattern", json::object());
      std::string pattern;
      if (pat.contains("Regex") && pat["Regex"].is_string()) pattern = pat["Regex"].get<std::string>();
      else if (pat.contains("String") && pat["String"].is_string()) pattern = escape_pattern(pat["String"].get<std::string>());
      else fail("pre-tokenizer Split has no Regex or String pattern: " + pat.dump());
      check_pattern(pattern);
      patterns_.push_back(pattern);
    } else if (type == "Metaspace") {
      // Its space replacement and prefix happen before its own split, so they run as a normalizer;
      // that is only the same when nothing splits before it.
      if (!first) fail("pre-tokenizer Metaspace after another pre-tokenizer is not supported");
      const std::string rep = string_or(p, "replacement", "\xE2\x96\x81");
      std::string scheme = string_or(p, "prepend_scheme", "");
      if (scheme.empty()) scheme = bool_or(p, "add_prefix_space", true) ? "always" : "never";
      normalizer_.insert(normalizer_.end(), {"replace", " ", rep});
      if (scheme == "always") normalizer_.insert(normalizer_.end(), {"prepend_if_missing", rep, ""});
      else if (scheme == "first") normalizer_.insert(normalizer_.end(), {"prepend_if_missing_first", rep, ""});
      else if (scheme != "never") fail("Metaspace prepend_scheme '" + scheme + "' is not known");
      if (bool_or(p, "split", true)) {
        const std::string r = escape_pattern(rep);
        patterns_.push_back(r + "(?:(?!" + r + ")[\\s\\S])*");
        check_pattern(patterns_.back());
      }
    } else if (type == "Digits") {
      patterns_.emplace_back(bool_or(p, "individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
    } else {
      fail("pre-tokenizer '" + type + "' is not supported (sinkserve implements ByteLevel, Split, Metaspace, Digits "
           "and Sequence)");
    }
  }

  void check_pattern(const std::string& p) const {
    try {
      SplitPattern check(p);
    } catch (const std::invalid_argument& e) {
      fail(std::string("pre-tokenizer ") + e.what());
    }
  }

  void read_decoder(const json& d) {
    if (d.is_null()) return;
    const std::string type = type_of(d);
    if (type == "Sequence") {
      for (const json& k : d.value("decoders", json::array())) read_decoder(k);
    } else if (type == "ByteLevel") {
      byte_level_ = true;
    } else if (type == "Replace") {
      const json& p = d.value("pattern", json::object());
      if (!p.contains("String") || !p["String"].is_string() || string_or(d, "content", "") != " ")
        fail("decoder Replace other than of a string by a space is not supported: " + d.dump());
      decode_space_ = p["String"].get<std::string>();
    } else if (type == "Strip") {
      const int64_t start = d.value("start", int64_t(0)), stop = d.value("stop", int64_t(0));
      if (string_or(d, "content", "") != " " || start > 1 || stop != 0)
        fail("decoder Strip other than of one leading space is not supported: " + d.dump());
      strip_leading_space_ = start == 1;
    } else if (type == "Metaspace") {
      decode_space_ = string_or(d, "replacement", "\xE2\x96\x81");
      std::string scheme = string_or(d, "prepend_scheme", "");
      if (scheme.empty()) scheme = bool_or(d, "add_prefix_space", true) ? "always" : "never";
      strip_leading_space_ = scheme != "never";
    } else if (type != "ByteFallback" && type != "Fuse") {
      fail("decoder '" + type + "' is not supported (sinkserve implements ByteLevel, Replace, ByteFallback, Fuse, "
           "Strip, Metaspace and Sequence)");
    }
  }

  void read_post_processor(const json& p) {
    if (p.is_null()) return;
    const std::string type = type_of(p);
    if (type == "Sequence") {
      for (const json& k : p.value("processors", json::array())) read_post_processor(k);
    } else if (type == "TemplateProcessing") {
      const json& single = p.value("single", json::array());
      bool seen_text = false;
      for (const json& piece : single) {
        if (piece.contains("Sequence")) {
          seen_text = true;
          continue;
        }
        const std::string name = piece.value("SpecialToken", json::object()).value("id", "");
        if (seen_text) fail("post-processor TemplateProcessing adds '" + name + "' after the text, which sinkserve does not do");
        if (bos_ >= 0 && add_bos_) fail("post-processor TemplateProcessing adds more than one token before the text");
        int32_t id = id_of(name);
        const json& specials = p.value("special_tokens", json::object());
        if (auto s = specials.find(name); s != specials.end() && s->contains("ids") && (*s)["ids"].size() == 1)
          id = (*s)["ids"][0].get<int32_t>();
        if (id < 0) fail("post-processor TemplateProcessing adds '" + name + "', which is not a token");
        bos_ = id;
        add_bos_ = true;
      }
    } else if (type != "ByteLevel") {
      fail("post-processor '" + type + "' is not supported (sinkserve implements TemplateProcessing, ByteLevel and "
           "Sequence)");
    }
  }

  // A special token named in tokenizer_config.json: a string or {"content": ...}.
  int32_t config_token(const json& c, const char* key, const std::string& file) const {
    auto it = c.find(key);
    if (it == c.end() || it->is_null()) return -1;
    const std::string s = it->is_string() ? it->get<std::string>() : it->is_object() ? it->value("content", "") : "";
    const int32_t id = id_of(s);
    if (id < 0) throw GGUFError(file + ": " + key + " '" + s + "' is not a token of tokenizer.json");
    return id;
  }

  void read_companions() {
    const fs::path tc_path = dir_ / "tokenizer_config.json";
    const std::optional<json> tc = read_optional_json(tc_path);
    const std::optional<json> gen = read_optional_json(dir_ / "generation_config.json");
    const std::optional<json> cfg = read_optional_json(dir_ / "config.json");
    // Stop ids: generation_config.json's eos_token_id (one id or a list), else config.json's.
    std::vector<int64_t> stops;
    for (const auto* j : {&gen, &cfg}) {
      if (!*j || !(*j)->is_object() || !stops.empty()) continue;
      const json& e = (**j).value("eos_token_id", json());
      if (e.is_number_integer()) stops.push_back(e.get<int64_t>());
      for (const json& x : e.is_array() ? e : json::array())
        if (x.is_number_integer()) stops.push_back(x.get<int64_t>());
    }
    if (tc && tc->is_object()) {
      if (const int32_t id = config_token(*tc, "bos_token", tc_path.string()); id >= 0) bos_ = id;
      if (const int32_t id = config_token(*tc, "eos_token", tc_path.string()); id >= 0) eos_ = id;
      if (auto b = tc->find("add_bos_token"); b != tc->end() && b->is_boolean()) add_bos_ = b->get<bool>();
      if (bool_or(*tc, "add_eos_token", false))
        throw GGUFError(tc_path.string() + ": add_eos_token is true: sinkserve never appends EOS to a prompt");
      if (auto t = tc->find("chat_template"); t != tc->end()) {
        if (t->is_string()) chat_template_ = t->get<std::string>();
        for (const json& named : t->is_array() ? *t : json::array())
          if (chat_template_.empty() || named.value("name", "") == "default") chat_template_ = named.value("template", "");
      }
    }
    if (chat_template_.empty() && fs::exists(dir_ / "chat_template.jinja")) {
      std::ifstream in(dir_ / "chat_template.jinja", std::ios::binary);
      chat_template_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    for (const auto* j : {&gen, &cfg})
      if (bos_ < 0 && *j && (*j)->is_object() && (**j).value("bos_token_id", json()).is_number_integer())
        bos_ = (**j)["bos_token_id"].get<int32_t>();
    if (eos_ < 0 && !stops.empty()) eos_ = int32_t(stops[0]);
    const int64_t n = int64_t(text_.size());
    const std::string gen_path = (dir_ / (gen ? "generation_config.json" : "config.json")).string();
    for (int64_t id : stops) {
      if (id < 0 || id >= n)
        throw GGUFError(gen_path + ": eos_token_id " + std::to_string(id) + " is not a token of tokenizer.json");
      if (id == eos_ || id == eot_ || id == eom_) continue;
      if (text_[size_t(id)] == "<|eom_id|>" && eom_ < 0) eom_ = int32_t(id);
      else if (eot_ < 0) eot_ = int32_t(id);
      else
        std::fprintf(stderr, "sinkserve: warning: %s: eos_token_id %lld ('%s') will not stop generation: sinkserve "
                     "stops at one end-of-text, one end-of-turn and one end-of-message token\n",
                     gen_path.c_str(), (long long)id, text_[size_t(id)].c_str());
    }
    if (bos_ >= n || eos_ >= n)
      throw GGUFError(gen_path + ": bos_token_id or eos_token_id lies outside the vocabulary of tokenizer.json");
  }

  fs::path dir_;
  std::string path_;
  json t_;
  std::vector<std::string> text_;
  std::vector<int32_t> type_;
  std::vector<bool> assigned_;
  std::unordered_map<std::string, int32_t> ids_;
  std::vector<int32_t> merges_;
  std::vector<std::string> normalizer_, patterns_;
  std::string decode_space_, chat_template_;
  bool byte_level_ = false, byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  bool strip_leading_space_ = false, add_bos_ = false;
  int32_t bos_ = -1, eos_ = -1, unk_ = -1, eot_ = -1, eom_ = -1;
};

}  // namespace

void add_tokenizer_json(const std::string& dir, int64_t vocab_rows, std::map<std::string, GGUFValue>& kv) {
  const fs::path p = fs::path(dir) / "tokenizer.json";
  std::optional<json> t = read_optional_json(p);
  if (!t) return;
  Reader(dir, std::move(*t)).read(vocab_rows, kv);
}

namespace {

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush()) throw std::runtime_error("cannot write " + p.string());
}

}  // namespace

void write_tokenizer_json(const std::string& dir, const GGUFFile& vocab) {
  using ojson = nlohmann::ordered_json;
  if (vocab.find_string("tokenizer.ggml.model").value_or("") != "llama")
    throw std::runtime_error(vocab.path() + ": only a SentencePiece-style vocabulary (tokenizer.ggml.model llama) can "
                             "be written as tokenizer.json");
  std::vector<std::string> text;
  for (const GGUFValue& v : vocab.get_array("tokenizer.ggml.tokens").items) text.push_back(std::get<std::string>(v.v));
  const size_t n = text.size();
  std::vector<double> score(n, 0.0);
  std::vector<int64_t> type(n, kTypeNormal);
  if (vocab.find("tokenizer.ggml.scores")) {
    const auto& a = vocab.get_array("tokenizer.ggml.scores").items;
    for (size_t i = 0; i < n && i < a.size(); ++i)
      score[i] = std::holds_alternative<double>(a[i].v) ? std::get<double>(a[i].v) : 0.0;
  }
  if (vocab.find("tokenizer.ggml.token_type")) {
    const auto& a = vocab.get_array("tokenizer.ggml.token_type").items;
    for (size_t i = 0; i < n && i < a.size(); ++i)
      type[i] = std::holds_alternative<int64_t>(a[i].v) ? std::get<int64_t>(a[i].v) : int64_t(std::get<uint64_t>(a[i].v));
  }
  auto id_key = [&](const char* key, int64_t fallback) { return vocab.find_int(key).value_or(fallback); };
  const int64_t bos = id_key("tokenizer.ggml.bos_token_id", 1), eos = id_key("tokenizer.ggml.eos_token_id", 2),
                unk = id_key("tokenizer.ggml.unknown_token_id", 0);
  const bool add_bos = vocab.find_bool("tokenizer.ggml.add_bos_token").value_or(true);
  const bool prefix = vocab.find_bool("tokenizer.ggml.add_space_prefix").value_or(true);

  std::unordered_map<std::string, int64_t> ids;
  ojson model_vocab = ojson::object();
  for (size_t i = 0; i < n; ++i)
    if (ids.emplace(text[i], int64_t(i)).second) model_vocab[text[i]] = i;
  // LlamaConverter's merges: every split of a piece into two pieces (split at characters),
  // a piece's own splits ordered by the ids of their halves, all ordered by the piece's score.
  struct Merge {
    int64_t left, right;
    double score;
  };
  std::vector<Merge> merges;
  for (size_t i = 0; i < n; ++i) {
    std::vector<Merge> local;
    const std::string& t = text[i];
    for (size_t at = 0; at < t.size();) {
      uint32_t cp;
      at += utf8_next(t, at, &cp);
      if (at >= t.size()) break;
      auto l = ids.find(t.substr(0, at)), r = ids.find(t.substr(at));
      if (l != ids.end() && r != ids.end()) local.push_back({l->second, r->second, score[i]});
    }
    std::sort(local.begin(), local.end(),
              [](const Merge& a, const Merge& b) { return a.left < b.left || (a.left == b.left && a.right < b.right); });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) { return a.score > b.score; });
  ojson merge_list = ojson::array();
  for (const Merge& m : merges) merge_list.push_back({text[size_t(m.left)], text[size_t(m.right)]});

  ojson added = ojson::array();
  for (size_t i = 0; i < n; ++i)
    if (type[i] == kTypeControl || type[i] == kTypeUnknown || type[i] == kTypeUserDefined)
      added.push_back({{"id", i}, {"content", text[i]}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", false}, {"special", type[i] != kTypeUserDefined}});
  const std::string space = "\xE2\x96\x81";
  ojson normalizers = ojson::array();
  if (prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", space}});
  normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}});
  ojson post = nullptr;
  if (add_bos && bos >= 0 && size_t(bos) < n) {
    const std::string b = text[size_t(bos)];
    post = {{"type", "TemplateProcessing"},
            {"single", {{{"SpecialToken", {{"id", b}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair",
             {{{"SpecialToken", {{"id", b}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
              {{"SpecialToken", {{"id", b}, {"type_id", 1}}}},
              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens", {{b, {{"id", b}, {"ids", {bos}}, {"tokens", {b}}}}}}};
  }
  ojson decoders = ojson::array();
  decoders.push_back({{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}});
  decoders.push_back({{"type", "ByteFallback"}});
  decoders.push_back({{"type", "Fuse"}});
  if (prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  ojson tok = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
               {"normalizer", {{"type", "Sequence"}, {"normalizers", normalizers}}}, {"pre_tokenizer", nullptr},
               {"post_processor", post}, {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}}};
  tok["model"] = {{"type", "BPE"}, {"dropout", nullptr},
                  {"unk_token", unk >= 0 && size_t(unk) < n ? ojson(text[size_t(unk)]) : ojson(nullptr)},
                  {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", true},
                  {"byte_fallback", true}, {"ignore_merges", false}, {"vocab", model_vocab}, {"merges", merge_list}};
  write_text(fs::path(dir) / "tokenizer.json", tok.dump(2));

  auto token_or_null = [&](int64_t id) { return id >= 0 && size_t(id) < n ? ojson(text[size_t(id)]) : ojson(nullptr); };
  ojson config = {{"add_bos_token", add_bos}, {"add_eos_token", false}, {"bos_token", token_or_null(bos)},
                  {"eos_token", token_or_null(eos)}, {"unk_token", token_or_null(unk)},
                  {"tokenizer_class", "LlamaTokenizer"}, {"legacy", true}};
  if (auto t = vocab.find_string("tokenizer.chat_template")) config["chat_template"] = *t;
  write_text(fs::path(dir) / "tokenizer_config.json", config.dump(2));
  write_text(fs::path(dir) / "generation_config.json", ojson({{"bos_token_id", bos}, {"eos_token_id", eos}}).dump(2));
}

}  // namespace sinkserve
