#include "runtime/hf_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <optional>

#include <nlohmann/json.hpp>

#include "runtime/arch.h"
#include "runtime/mapped_file.h"
#include "runtime/model_config.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer_json.h"

namespace sinkserve {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";
// The bounds read_model_config applies, so that a checkpoint is refused here, naming config.json.
constexpr int64_t kMaxDim = 1 << 20;
constexpr int64_t kMaxLayers = 1 << 12;
constexpr int64_t kMaxVocab = 1 << 24;

GGUFValue u32(int64_t v) { return {GGUFType::UINT32, uint64_t(v)}; }
GGUFValue f32(double v) { return {GGUFType::FLOAT32, v}; }
GGUFValue str(std::string s) { return {GGUFType::STRING, std::move(s)}; }

// config.json, read the way transformers reads it: an attribute may go by several names (its
// configs' attribute_map), and an explicit null means "not set".
class Config {
 public:
  Config(json j, std::string path) : j_(std::move(j)), path_(std::move(path)) {
    if (!j_.is_object()) fail("not a JSON object");
  }
  [[noreturn]] void fail(const std::string& what) const { throw GGUFError(path_ + ": " + what); }

  const json* find(std::initializer_list<const char*> keys, std::string* which = nullptr) const {
    for (const char* k : keys) {
      auto it = j_.find(k);
      if (it == j_.end() || it->is_null()) continue;
      if (which) *which = k;
      return &*it;
    }
    return nullptr;
  }
  std::optional<int64_t> find_int(std::initializer_list<const char*> keys, int64_t max) const {
    std::string k;
    const json* v = find(keys, &k);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) fail("key '" + k + "' is " + v->dump() + ", not an integer");
    const int64_t x = v->get<int64_t>();
    if (x <= 0 || x > max)
      fail("key '" + k + "' is " + std::to_string(x) + " (must be 1 to " + std::to_string(max) + ")");
    return x;
  }
  int64_t get_int(std::initializer_list<const char*> keys, int64_t max) const {
    if (auto v = find_int(keys, max)) return *v;
    fail("key '" + std::string(*keys.begin()) + "' is missing");
  }
  std::optional<double> find_float(std::initializer_list<const char*> keys) const {
    std::string k;
    const json* v = find(keys, &k);
    if (!v) return std::nullopt;
    if (!v->is_number()) fail("key '" + k + "' is " + v->dump() + ", not a number");
    const double x = v->get<double>();
    if (!std::isfinite(x) || x <= 0) fail("key '" + k + "' is " + v->dump() + " (must be positive)");
    return x;
  }
  std::optional<bool> find_bool(const char* key) const {
    const json* v = find({key});
    if (!v) return std::nullopt;
    if (!v->is_boolean()) fail("key '" + std::string(key) + "' is " + v->dump() + ", not true or false");
    return v->get<bool>();
  }
  std::optional<std::string> find_string(const char* key) const {
    const json* v = find({key});
    if (!v) return std::nullopt;
    if (!v->is_string()) fail("key '" + std::string(key) + "' is " + v->dump() + ", not a string");
    return v->get<std::string>();
  }

 private:
  json j_;
  std::string path_;
};

json read_json(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw GGUFError(p.string() + ": cannot read");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw GGUFError(p.string() + ": not valid JSON: " + e.what());
  }
}

// Llama-3's rope_freqs factors from config.json's rope_scaling, computed as transformers'
// _compute_llama3_parameters computes the scaled frequencies (float32 tensors): pair i keeps its
// frequency above the high-frequency band, turns `factor` times slower below the low one, and
// interpolates in between. The factor of pair i is its frequency's divisor.
std::vector<float> llama3_factors(const Config& cfg, const json& s, int n_rot, double theta) {
  auto num = [&](const char* key) {
    auto it = s.find(key);
    if (it == s.end() || !it->is_number() || !(it->get<double>() > 0))
      cfg.fail("rope_scaling (llama3) needs a positive '" + std::string(key) + "'");
    return it->get<double>();
  };
  const float factor = float(num("factor")), low = float(num("low_freq_factor")), high = float(num("high_freq_factor"));
  const float old_ctx = float(num("original_max_position_embeddings"));
  if (!(high > low)) cfg.fail("rope_scaling (llama3): high_freq_factor must exceed low_freq_factor");
  const float low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
  std::vector<float> f;
  for (int i = 0; i < n_rot; i += 2) {
    const float inv_freq = 1.0f / std::pow(float(theta), float(i) / float(n_rot));
    const float wavelen = float(2 * M_PI) / inv_freq;
    if (wavelen < high_wavelen) {
      f.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      f.push_back(factor);
    } else {
      const float smooth = (old_ctx / wavelen - low) / (high - low);
      f.push_back(1.0f / ((1 - smooth) / factor + smooth));
    }
  }
  return f;
}

struct Dims {
  int64_t dim, q, kv, ffn, vocab;
};

// A layer tensor's shape in the checkpoint ([out][in], as PyTorch stores nn.Linear weights).
std::vector<int64_t> layer_shape(LayerTensor t, const Dims& d) {
  using enum LayerTensor;
  const int64_t qkv = d.q + 2 * d.kv;
  switch (t) {
    case AttnQkv: return {qkv, d.dim};
    case AttnQkvB: return {qkv};
    case AttnQ: return {d.q, d.dim};
    case AttnQB: return {d.q};
    case AttnK: case AttnV: return {d.kv, d.dim};
    case AttnKB: case AttnVB: return {d.kv};
    case AttnOut: return {d.dim, d.q};
    case FfnGate: case FfnUp: return {d.ffn, d.dim};
    case FfnUpB: return {d.ffn};
    case FfnDown: return {d.dim, d.ffn};
    default: return {d.dim};  // norms and the biases of the residual's width
  }
}

struct Found {
  int shard;
  const SafetensorsTensor* t;
};

// The checkpoint's tensors by name: those model.safetensors.index.json maps to shards (each shard
// opened once), or those of model.safetensors.
struct Weights {
  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  std::map<std::string, Found> tensors;
  std::string listing;  // the file that says which tensors exist, for messages
};

Weights find_weights(const fs::path& dir) {
  Weights w;
  const fs::path index = dir / kIndexFile;
  if (fs::exists(index)) {
    w.listing = index.string();
    const json j = read_json(index);
    const auto map = j.is_object() ? j.find("weight_map") : j.end();
    if (map == j.end() || !map->is_object()) throw GGUFError(w.listing + ": no 'weight_map' object");
    std::map<std::string, int> by_file;
    for (const auto& [name, file] : map->items()) {
      if (!file.is_string()) throw GGUFError(w.listing + ": the shard of tensor '" + name + "' is not a string");
      const std::string f = file.get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..")
        throw GGUFError(w.listing + ": tensor '" + name + "' is in '" + f + "', not a file of this directory");
      auto [it, fresh] = by_file.emplace(f, int(w.shards.size()));
      if (fresh) w.shards.push_back(std::make_unique<SafetensorsFile>((dir / f).string()));
      const SafetensorsFile& shard = *w.shards[size_t(it->second)];
      const SafetensorsTensor* t = shard.find(name);
      if (!t) throw GGUFError(shard.path() + ": tensor '" + name + "', which " + kIndexFile + " places here, is not in the file");
      w.tensors.emplace(name, Found{it->second, t});
    }
  } else if (fs::exists(dir / kSingleFile)) {
    w.shards.push_back(std::make_unique<SafetensorsFile>((dir / kSingleFile).string()));
    w.listing = w.shards[0]->path();
    for (const SafetensorsTensor& t : w.shards[0]->tensors()) w.tensors.emplace(t.name, Found{0, &t});
  } else {
    throw GGUFError(dir.string() + ": neither " + kSingleFile + " nor " + kIndexFile +
                    " (sinkserve reads safetensors weights; a PyTorch .bin checkpoint must be saved again with "
                    "safe_serialization=True)");
  }
  return w;
}

std::optional<DType> torch_dtype(const Config& cfg, std::string* spelled) {
  // transformers writes "torch_dtype", and "dtype" from 4.56 on.
  const json* v = cfg.find({"torch_dtype", "dtype"});
  if (!v || !v->is_string()) return std::nullopt;
  *spelled = v->get<std::string>();
  if (*spelled == "float32") return DType::F32;
  if (*spelled == "float16") return DType::F16;
  if (*spelled == "bfloat16") return DType::BF16;
  cfg.fail("torch_dtype '" + *spelled + "' is not one sinkserve computes with (float32, float16, bfloat16)");
}

class Reader {
 public:
  Reader(const fs::path& dir, const Config& cfg) : dir_(dir), cfg_(cfg) {}

  void read(std::map<std::string, GGUFValue>& kv, std::vector<GGUFTensorInfo>& tensors,
            std::vector<std::shared_ptr<const MappedFile>>& sources, std::vector<std::vector<uint8_t>>& owned,
            int64_t* vocab_rows) {
    const std::string model_type = cfg_.find_string("model_type").value_or("");
    spec_ = model_type.empty() ? nullptr : find_hf_arch(model_type);
    if (!spec_) {
      std::string archs;
      if (const json* a = cfg_.find({"architectures"}); a && a->is_array() && !a->empty()) archs = " (" + a->at(0).dump() + ")";
      cfg_.fail((model_type.empty() ? std::string("no model_type") : "model_type '" + model_type + "'") + archs +
                ": not a family sinkserve reads from Hugging Face checkpoints (supported model types: " +
                supported_hf_model_types() + ")");
    }
    layout_ = spec_->hf;
    read_hparams(kv);
    Weights w = find_weights(dir_);
    if (!d_.vocab) {
      auto it = w.tensors.find(std::string(layout_->embd));
      if (it == w.tensors.end() || it->second.t->shape.size() != 2)
        throw GGUFError(w.listing + ": tensor '" + std::string(layout_->embd) + "' is missing (required by " +
                        std::string(spec_->name) + ")");
      d_.vocab = it->second.t->shape[0];
    }
    std::string dtype_name;
    const std::optional<DType> dtype = torch_dtype(cfg_, &dtype_name);

    std::vector<uint32_t> have(size_t(n_layers_), 0);
    bool have_embd = false, have_norm = false, have_output = false;
    for (const auto& [name, found] : w.tensors) {
      const SafetensorsFile& shard = *w.shards[size_t(found.shard)];
      std::string gguf;
      std::vector<int64_t> want;
      if (name == layout_->embd) {
        gguf = "token_embd.weight", want = {d_.vocab, d_.dim}, have_embd = true;
      } else if (name == layout_->output_norm) {
        gguf = "output_norm.weight", want = {d_.dim}, have_norm = true;
      } else if (!layout_->output_norm_bias.empty() && name == layout_->output_norm_bias) {
        gguf = "output_norm.bias", want = {d_.dim};
      } else if (name == layout_->output) {
        // transformers ties the head to the embedding after loading, so a saved copy is unused.
        if (tied_) continue;
        gguf = "output.weight", want = {d_.vocab, d_.dim}, have_output = true;
      } else if (!layout_->output_bias.empty() && name == layout_->output_bias) {
        gguf = "output.bias", want = {d_.vocab};
      } else if (auto l = layer_tensor(shard, name, &gguf, &want, have)) {
        if (*l < 0) continue;  // a buffer
      } else {
        throw GGUFError(shard.path() + ": tensor '" + name + "' is not part of a " + std::string(spec_->name) +
                        " checkpoint (" + w.listing + ")");
      }
      tensors.push_back(tensor_info(shard, found.shard, *found.t, gguf, want, dtype, dtype_name, owned));
    }
    auto missing = [&](const std::string& name) {
      throw GGUFError(w.listing + ": tensor '" + name + "' is missing (required by " + std::string(spec_->name) + ")");
    };
    if (!have_embd) missing(std::string(layout_->embd));
    if (!have_norm) missing(std::string(layout_->output_norm));
    if (!tied_ && !have_output)
      throw GGUFError(w.listing + ": tensor '" + std::string(layout_->output) +
                      "' is missing (config.json: tie_word_embeddings is false)");
    check_layers(have, missing);

    for (auto& s : w.shards) sources.push_back(s->file());
    *vocab_rows = d_.vocab;
  }

 private:
  void read_hparams(std::map<std::string, GGUFValue>& kv) {
    const std::string a(spec_->name);
    const bool rms = spec_->norm == NormKind::Rms;
    for (std::string_view flag : layout_->unsupported) {
      const bool refuse_false = flag[0] == '!';
      const std::string key(refuse_false ? flag.substr(1) : flag);
      if (auto v = cfg_.find_bool(key.c_str()); v && *v != refuse_false)
        cfg_.fail("'" + key + "' is " + (*v ? "true" : "false") + ": sinkserve does not implement that variant of " +
                  std::string(spec_->name));
    }
    d_.dim = cfg_.get_int({"hidden_size", "n_embd", "d_model"}, kMaxDim);
    n_layers_ = cfg_.get_int({"num_hidden_layers", "n_layer", "n_layers"}, kMaxLayers);
    const int64_t heads = cfg_.get_int({"num_attention_heads", "n_head", "n_heads"}, kMaxDim);
    // Falcon-7B's multi-query attention: one KV head, whatever num_kv_heads says, unless the
    // new decoder architecture (40B) groups them.
    const bool one_kv = cfg_.find_bool("multi_query").value_or(false) &&
                        !cfg_.find_bool("new_decoder_architecture").value_or(false);
    const int64_t kv_heads =
        one_kv ? 1 : cfg_.find_int({"num_key_value_heads", "num_kv_heads", "n_head_kv"}, heads).value_or(heads);
    // GPT-J writes n_inner null and Falcon omits ffn_hidden_size for the usual 4 x hidden.
    d_.ffn = cfg_.find_int({"intermediate_size", "n_inner", "ffn_hidden_size"}, 4 * kMaxDim).value_or(4 * d_.dim);
    if (d_.dim % heads)
      cfg_.fail("num_attention_heads " + std::to_string(heads) + " does not divide hidden_size " + std::to_string(d_.dim));
    if (heads % kv_heads)
      cfg_.fail("num_key_value_heads " + std::to_string(kv_heads) + " does not divide num_attention_heads " +
                std::to_string(heads));
    const int64_t head_dim = d_.dim / heads;
    if (auto hd = cfg_.find_int({"head_dim"}, kMaxDim); hd && *hd != head_dim)
      cfg_.fail("head_dim is " + std::to_string(*hd) + ", but sinkserve needs heads of hidden_size / num_attention_heads = " +
                std::to_string(head_dim));
    d_.q = heads * head_dim;
    d_.kv = kv_heads * head_dim;
    d_.vocab = cfg_.find_int({"vocab_size"}, kMaxVocab).value_or(0);
    tied_ = cfg_.find_bool("tie_word_embeddings").value_or(layout_->tied_default);

    const auto eps = rms ? cfg_.find_float({"rms_norm_eps"}) : cfg_.find_float({"layer_norm_eps", "layer_norm_epsilon"});
    if (!eps) cfg_.fail(std::string("key '") + (rms ? "rms_norm_eps" : "layer_norm_eps") + "' is missing");
    const std::initializer_list<const char*> ctx_keys = {"max_position_embeddings", "n_positions", "max_seq_len"};
    const int64_t ctx = layout_->ctx_default ? cfg_.find_int(ctx_keys, int64_t(1) << 32).value_or(layout_->ctx_default)
                                             : cfg_.get_int(ctx_keys, int64_t(1) << 32);

    kv["general.architecture"] = str(a);
    std::string name = cfg_.find_string("_name_or_path").value_or("");
    if (name.empty()) name = fs::path(dir_).lexically_normal().filename().string();
    if (name.empty()) name = fs::path(dir_).lexically_normal().parent_path().filename().string();
    kv["general.name"] = str(name);
    kv[a + ".context_length"] = {GGUFType::UINT64, uint64_t(ctx)};
    kv[a + ".embedding_length"] = u32(d_.dim);
    kv[a + ".block_count"] = u32(n_layers_);
    kv[a + ".feed_forward_length"] = u32(d_.ffn);
    kv[a + ".attention.head_count"] = u32(heads);
    kv[a + ".attention.head_count_kv"] = u32(kv_heads);
    kv[a + (rms ? ".attention.layer_norm_rms_epsilon" : ".attention.layer_norm_epsilon")] = f32(*eps);
    if (spec_->parallel_key)
      kv[a + ".use_parallel_residual"] = {GGUFType::BOOL,
                                          cfg_.find_bool("use_parallel_residual").value_or(layout_->parallel_default)};
    if (const json* sw = cfg_.find({"sliding_window"}); sw && sw->is_number_integer() &&
                                                        cfg_.find_bool("use_sliding_window").value_or(true))
      kv[a + ".attention.sliding_window"] = u32(sw->get<int64_t>());
    if (spec_->positions != Positions::Rope) return;

    const double theta = cfg_.find_float({"rope_theta", "rotary_emb_base"}).value_or(10000.0);
    kv[a + ".rope.freq_base"] = f32(theta);
    // Rotated dimensions as transformers computes them: int(head_dim * factor), or GPT-J's
    // rotary_dim.
    int64_t n_rot = head_dim;
    if (auto share = cfg_.find_float({"partial_rotary_factor", "rotary_pct"})) {
      if (*share > 1) cfg_.fail("partial_rotary_factor is above 1");
      n_rot = int64_t(double(head_dim) * *share);
    }
    if (auto dims = cfg_.find_int({"rotary_dim"}, head_dim)) n_rot = *dims;
    if (n_rot % 2) cfg_.fail("the rotary dimensions (" + std::to_string(n_rot) + " of each head) are odd");
    kv[a + ".rope.dimension_count"] = u32(n_rot);
    read_rope_scaling(kv, a, int(n_rot), theta);
  }

  // rope_scaling: none, "linear" (positions divided by `factor`) or Llama-3's frequency bands.
  // Anything else is refused by name: ignoring it would silently change every position.
  void read_rope_scaling(std::map<std::string, GGUFValue>& kv, const std::string& a, int n_rot, double theta) {
    const json* s = cfg_.find({"rope_scaling"});
    if (!s) return;
    if (!s->is_object()) cfg_.fail("rope_scaling is " + s->dump() + ", not an object");
    std::string type;
    for (const char* k : {"rope_type", "type"})
      if (auto it = s->find(k); it != s->end() && it->is_string()) {
        type = it->get<std::string>();
        break;
      }
    if (type == "default") return;
    if (type == "linear") {
      auto f = s->find("factor");
      if (f == s->end() || !f->is_number() || !(f->get<double>() > 0))
        cfg_.fail("rope_scaling (linear) needs a positive 'factor'");
      kv[a + ".rope.scaling.type"] = str("linear");
      kv[a + ".rope.scaling.factor"] = f32(f->get<double>());
      return;
    }
    if (type == "llama3") {
      rope_freqs_ = llama3_factors(cfg_, *s, n_rot, theta);
      return;
    }
    cfg_.fail("rope_scaling type '" + type + "' is not supported (sinkserve implements 'linear' and 'llama3'): " +
              s->dump());
  }

 public:
  // The owned tensor of rope_freqs factors, when rope_scaling asked for them.
  void add_rope_freqs(std::vector<GGUFTensorInfo>& tensors, std::vector<std::vector<uint8_t>>& owned) const {
    if (rope_freqs_.empty()) return;
    const auto* p = reinterpret_cast<const uint8_t*>(rope_freqs_.data());
    owned.emplace_back(p, p + rope_freqs_.size() * sizeof(float));
    GGUFTensorInfo t;
    t.name = "rope_freqs.weight";
    t.ne = {int64_t(rope_freqs_.size())};
    t.bytes = owned.back().size();
    t.data = owned.back().data();
    t.origin = "config.json rope_scaling (llama3)";
    tensors.push_back(std::move(t));
  }

 private:
  // For a tensor under the layers' prefix: its GGUF name and expected shape, and its layer; -1 for
  // a buffer. nullopt: not a layer tensor of this family.
  std::optional<int64_t> layer_tensor(const SafetensorsFile& shard, const std::string& name, std::string* gguf,
                                      std::vector<int64_t>* want, std::vector<uint32_t>& have) const {
    const std::string_view prefix = layout_->layers;
    if (name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
    size_t i = prefix.size();
    int64_t l = 0;
    const size_t digits = i;
    while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i - digits < 6) l = l * 10 + (name[i++] - '0');
    if (i == digits || i >= name.size() || name[i] != '.') return std::nullopt;
    const std::string_view rest = std::string_view(name).substr(i + 1);
    for (std::string_view b : layout_->buffers)
      if (rest == b) return -1;
    for (const HfTensorName& t : layout_->layer) {
      if (t.name != rest) continue;
      if (l >= n_layers_)
        throw GGUFError(shard.path() + ": tensor '" + name + "' belongs to layer " + std::to_string(l) +
                        ", but config.json has num_hidden_layers " + std::to_string(n_layers_));
      *gguf = "blk." + std::to_string(l) + "." + std::string(layer_tensor_name(t.t));
      *want = layer_shape(t.t, d_);
      have[size_t(l)] |= bit(t.t);
      return l;
    }
    return std::nullopt;
  }

  std::string hf_name(int64_t l, LayerTensor t) const {
    for (const HfTensorName& n : layout_->layer)
      if (n.t == t) return std::string(layout_->layers) + std::to_string(l) + "." + std::string(n.name);
    return "blk." + std::to_string(l) + "." + std::string(layer_tensor_name(t));
  }

  template <class Missing>
  void check_layers(const std::vector<uint32_t>& have, Missing missing) const {
    using enum LayerTensor;
    for (int64_t l = 0; l < n_layers_; ++l) {
      for (unsigned i = 0; i < unsigned(LayerTensor::Count); ++i)
        if ((spec_->required & bit(LayerTensor(i))) && !(have[size_t(l)] & bit(LayerTensor(i))))
          missing(hf_name(l, LayerTensor(i)));
      const uint32_t apart = bit(AttnQ) | bit(AttnK) | bit(AttnV);
      if (have[size_t(l)] & bit(AttnQkv)) continue;
      for (LayerTensor t : {AttnQ, AttnK, AttnV})
        if ((have[size_t(l)] & apart) != apart && !(have[size_t(l)] & bit(t))) missing(hf_name(l, t));
    }
  }

  GGUFTensorInfo tensor_info(const SafetensorsFile& shard, int source, const SafetensorsTensor& t, const std::string& gguf,
                             const std::vector<int64_t>& want, std::optional<DType> dtype, const std::string& dtype_name,
                             std::vector<std::vector<uint8_t>>& owned) const {
    const std::string where = shard.path() + ": tensor '" + t.name + "'";
    if (!t.type) throw GGUFError(where + " has dtype " + t.dtype + " (sinkserve reads F32, F16 and BF16 weights)");
    if (t.shape != want)
      throw GGUFError(where + " has shape " + shape_string(t.shape) + ", but config.json implies " + shape_string(want));
    if (want.size() >= 2 && dtype && *t.type != *dtype)
      throw GGUFError(where + " is " + t.dtype + ", but config.json's torch_dtype is " + dtype_name);
    GGUFTensorInfo ti;
    ti.name = gguf;
    ti.ne.assign(t.shape.rbegin(), t.shape.rend());
    ti.type = *t.type;
    ti.offset = t.begin;
    ti.bytes = t.end - t.begin;
    ti.source = source;
    ti.file_offset = shard.data_start() + t.begin;  // no `data`: the shard is read, not mapped
    ti.origin = t.name + " in " + fs::path(shard.path()).filename().string();
    if (want.size() == 1 && ti.type != DType::F32) {
      // Norm weights and biases are F32 in the engine (GGUF converters store them so too).
      std::vector<uint8_t> raw(size_t(ti.bytes));
      shard.file()->read(ti.file_offset, raw.size(), raw.data());
      std::vector<uint8_t> wide(size_t(want[0]) * sizeof(float));
      dequantize_row(ti.type, raw.data(), reinterpret_cast<float*>(wide.data()), want[0]);
      owned.push_back(std::move(wide));
      ti.type = DType::F32;
      ti.bytes = owned.back().size();
      ti.data = owned.back().data();
      ti.source = -1;
    }
    return ti;
  }

  const fs::path& dir_;
  const Config& cfg_;
  const ArchSpec* spec_ = nullptr;
  const HfLayout* layout_ = nullptr;
  Dims d_{};
  int64_t n_layers_ = 0;
  bool tied_ = false;
  std::vector<float> rope_freqs_;
};

}  // namespace

std::unique_ptr<GGUFFile> open_hf_checkpoint(const std::string& path, ModelParts parts) {
  const fs::path dir(path);
  const fs::path config = dir / "config.json";
  std::map<std::string, GGUFValue> kv;
  std::vector<GGUFTensorInfo> tensors;
  std::vector<std::shared_ptr<const MappedFile>> sources;
  std::vector<std::vector<uint8_t>> owned;
  int64_t vocab_rows = 0;
  if (parts == ModelParts::All) {
    if (!fs::exists(config))
      throw GGUFError(path + ": no config.json (a model directory holds a Hugging Face checkpoint: config.json, "
                      "safetensors weights, tokenizer.json)");
    const Config cfg(read_json(config), config.string());
    Reader r(dir, cfg);
    r.read(kv, tensors, sources, owned, &vocab_rows);
    r.add_rope_freqs(tensors, owned);
  } else if (fs::exists(config)) {
    const Config cfg(read_json(config), config.string());
    vocab_rows = cfg.find_int({"vocab_size"}, kMaxVocab).value_or(0);
  }
  add_tokenizer_json(path, vocab_rows, kv);
  return std::make_unique<GGUFFile>(path, ModelFormat::HfCheckpoint, std::move(kv), std::move(tensors),
                                    std::move(sources), std::move(owned));
}

std::unique_ptr<GGUFFile> open_model(const std::string& path, ModelParts parts) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return open_hf_checkpoint(path, parts);
  return std::make_unique<GGUFFile>(path);
}

// ---------------------------------------------------------------------------------------------
// Writing

namespace {

const char* safetensors_dtype(DType t, const std::string& tensor) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    default: throw std::runtime_error("tensor '" + tensor + "' is " + std::string(dtype_name(t)) +
                                      ", which safetensors checkpoints do not hold (F32, F16, BF16)");
  }
}

// One checkpoint tensor: rows `rows` (indices into the GGUF tensor's rows) of GGUF tensor `src`.
struct OutTensor {
  std::string name;
  const ModelTensor* src;
  std::vector<int64_t> rows;  // empty: all, in order
};

void write_json_file(const fs::path& p, const nlohmann::ordered_json& j) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << j.dump(2) << "\n";
  if (!out.flush()) throw std::runtime_error("cannot write " + p.string());
}

}  // namespace

void write_hf_checkpoint(const std::string& dir, const std::map<std::string, GGUFValue>& kv,
                         const std::vector<ModelTensor>& tensors, uint64_t shard_bytes) {
  using ojson = nlohmann::ordered_json;
  // The metadata as the reader sees it, with tensor shapes (and rope_freqs' values) for the config.
  std::vector<GGUFTensorInfo> infos;
  std::vector<std::vector<uint8_t>> owned;
  for (const ModelTensor& t : tensors) {
    GGUFTensorInfo ti;
    ti.name = t.name;
    ti.ne = t.ne;
    ti.type = t.type;
    if (t.name == "rope_freqs.weight") {
      owned.emplace_back(size_t(t.ne[0]) * sizeof(float));
      t.fill(owned.back().data(), owned.back().size());
      ti.data = owned.back().data();
      ti.bytes = owned.back().size();
    }
    infos.push_back(std::move(ti));
  }
  const GGUFFile meta(dir, ModelFormat::Gguf, kv, infos, {}, std::move(owned));
  const ModelConfig c = read_model_config(meta);
  const ArchSpec& spec = *c.spec;
  if (!spec.hf) throw std::runtime_error(c.arch + " has no Hugging Face checkpoint layout in sinkserve");
  const HfLayout& L = *spec.hf;
  const std::string a = c.arch;
  const int64_t hd = c.head_dim, q = int64_t(c.n_heads) * hd, kvd = int64_t(c.n_kv_heads) * hd;
  const int n_rot = c.rope.rotated(c.head_dim);
  const GGUFTensorInfo* embd = meta.find_tensor("token_embd.weight");
  if (!embd) throw std::runtime_error("no token_embd.weight to write");

  ojson cfg;
  const std::string_view types = spec.hf_model_types;
  cfg["model_type"] = std::string(types.substr(0, types.find(' ')));
  cfg["hidden_size"] = c.dim;
  cfg["intermediate_size"] = c.ffn;
  cfg["num_hidden_layers"] = c.n_layers;
  cfg["num_attention_heads"] = c.n_heads;
  cfg["num_key_value_heads"] = c.n_kv_heads;
  cfg["max_position_embeddings"] = c.ctx_train;
  cfg["vocab_size"] = c.vocab;
  cfg["tie_word_embeddings"] = c.tied_output;
  cfg["torch_dtype"] = embd->type == DType::F32 ? "float32" : embd->type == DType::F16 ? "float16" : "bfloat16";
  cfg[spec.norm == NormKind::Rms ? "rms_norm_eps" : "layer_norm_eps"] = double(c.norm_eps);
  if (spec.positions == Positions::Rope) {
    cfg["rope_theta"] = double(c.rope.freq_base);
    if (n_rot != hd) {
      const double share = double(n_rot) / double(hd);
      if (int64_t(double(hd) * share) != n_rot)
        throw std::runtime_error("rotary dimensions " + std::to_string(n_rot) + " of " + std::to_string(hd) +
                                 " do not survive partial_rotary_factor");
      cfg["partial_rotary_factor"] = share;
    }
    if (!c.rope.freq_factors.empty()) {
      // The factors of Llama-3.1's rope_scaling (what `synth --rope-freqs` writes); others have
      // no config.json form.
      const json llama31 = {{"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}};
      const std::vector<float> want = llama3_factors(Config(json{{"rope_scaling", llama31}}, dir), llama31, n_rot,
                                                     double(c.rope.freq_base));
      for (size_t i = 0; i < want.size(); ++i)
        if (std::fabs(want[i] / c.rope.freq_factors[i] - 1) > 1e-5)
          throw std::runtime_error("rope_freqs.weight holds factors other than Llama-3.1's rope_scaling");
      cfg["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
    } else if (c.rope.freq_scale != 1.0f) {
      cfg["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 1.0 / double(c.rope.freq_scale)}};
    }
  }
  if (spec.parallel_key) cfg["use_parallel_residual"] = c.parallel_residual;
  if (a == "falcon") {
    const bool grouped = c.n_kv_heads > 1 || meta.find_tensor("blk.0.attn_norm_2.weight");
    cfg["new_decoder_architecture"] = grouped;
    cfg["multi_query"] = !grouped;
    cfg["parallel_attn"] = true;
    cfg["alibi"] = false;
  }
  for (auto [key, gguf] : {std::pair{"bos_token_id", "tokenizer.ggml.bos_token_id"}, {"eos_token_id", "tokenizer.ggml.eos_token_id"}})
    if (auto id = meta.find_int(gguf)) cfg[key] = *id;

  // Which rows of a GGUF q or k block (or bias) make the checkpoint's rows: llama.cpp permuted
  // llama's and mistral's from rotate_half's pairs (i, i + n/2) to adjacent ones (2i, 2i + 1).
  const bool permute = spec.rope_neox != L.rope_neox;
  auto head_rows = [&](int64_t first, int64_t n) {
    std::vector<int64_t> r;
    for (int64_t h = 0; h < n / hd; ++h)
      for (int64_t k = 0; k < hd; ++k) {
        int64_t src = k;
        if (permute && k < n_rot) src = 2 * (k % (n_rot / 2)) + k / (n_rot / 2);
        r.push_back(first + h * hd + src);
      }
    return r;
  };
  auto name_of = [&](LayerTensor t) -> std::string_view {
    for (const HfTensorName& n : L.layer)
      if (n.t == t) return n.name;
    return {};
  };
  std::vector<OutTensor> out;
  for (const ModelTensor& t : tensors) {
    const std::string& n = t.name;
    if (n == "rope_freqs.weight") continue;
    std::string hf;
    if (n == "token_embd.weight") hf = L.embd;
    else if (n == "output_norm.weight") hf = L.output_norm;
    else if (n == "output_norm.bias") hf = L.output_norm_bias;
    else if (n == "output.weight") hf = L.output;
    else if (n == "output.bias") hf = L.output_bias;
    if (!hf.empty()) {
      out.push_back({hf, &t, {}});
      continue;
    }
    const size_t dot = n.find('.', 4);
    std::optional<LayerTensor> lt;
    if (n.rfind("blk.", 0) == 0 && dot != std::string::npos)
      for (unsigned i = 0; i < unsigned(LayerTensor::Count); ++i)
        if (layer_tensor_name(LayerTensor(i)) == std::string_view(n).substr(dot + 1)) lt = LayerTensor(i);
    if (!lt) throw std::runtime_error("tensor '" + n + "' has no place in a " + a + " checkpoint");
    const std::string prefix = std::string(L.layers) + n.substr(4, dot - 4) + ".";
    using enum LayerTensor;
    if (*lt == AttnQkv || *lt == AttnQkvB) {
      const std::vector<int64_t> qr = head_rows(0, q), kr = head_rows(q, kvd);
      std::vector<int64_t> vr(static_cast<size_t>(kvd));
      for (int64_t i = 0; i < kvd; ++i) vr[size_t(i)] = q + kvd + i;
      if (!name_of(*lt).empty()) {
        std::vector<int64_t> rows;
        if (L.qkv == QkvLayout::Blocked) {
          rows = qr, rows.insert(rows.end(), kr.begin(), kr.end()), rows.insert(rows.end(), vr.begin(), vr.end());
        } else {
          const int64_t per_kv = c.n_heads / c.n_kv_heads;
          for (int64_t g = 0; g < c.n_kv_heads; ++g) {
            rows.insert(rows.end(), qr.begin() + g * per_kv * hd, qr.begin() + (g + 1) * per_kv * hd);
            rows.insert(rows.end(), kr.begin() + g * hd, kr.begin() + (g + 1) * hd);
            rows.insert(rows.end(), vr.begin() + g * hd, vr.begin() + (g + 1) * hd);
          }
        }
        out.push_back({prefix + std::string(name_of(*lt)), &t, rows});
      } else {  // the checkpoint keeps q, k and v apart
        const bool b = *lt == AttnQkvB;
        const LayerTensor parts[3] = {b ? AttnQB : AttnQ, b ? AttnKB : AttnK, b ? AttnVB : AttnV};
        const std::vector<int64_t>* rows[3] = {&qr, &kr, &vr};
        for (int i = 0; i < 3; ++i) {
          if (name_of(parts[i]).empty()) throw std::runtime_error("tensor '" + n + "' has no place in a " + a + " checkpoint");
          out.push_back({prefix + std::string(name_of(parts[i])), &t, *rows[i]});
        }
      }
      continue;
    }
    if (name_of(*lt).empty()) throw std::runtime_error("tensor '" + n + "' has no place in a " + a + " checkpoint");
    std::vector<int64_t> rows;
    if (permute && (*lt == AttnQ || *lt == AttnQB)) rows = head_rows(0, q);
    if (permute && (*lt == AttnK || *lt == AttnKB)) rows = head_rows(0, kvd);
    out.push_back({prefix + std::string(name_of(*lt)), &t, rows});
  }

  fs::create_directories(dir);
  write_json_file(fs::path(dir) / "config.json", cfg);
  // Shards in the order of the tensors, each at most shard_bytes (or one tensor).
  std::vector<std::vector<const OutTensor*>> shards(1);
  uint64_t in_shard = 0, total = 0;
  // A checkpoint tensor's rows: of the matrix, or the elements of a vector.
  auto row_bytes = [](const ModelTensor& t) { return dtype_row_bytes(t.type, t.ne.size() > 1 ? t.ne[0] : 1); };
  auto n_rows = [](const OutTensor& o) {
    return o.rows.empty() ? (o.src->ne.size() > 1 ? o.src->ne[1] : o.src->ne[0]) : int64_t(o.rows.size());
  };
  auto out_bytes = [&](const OutTensor& o) { return uint64_t(row_bytes(*o.src) * n_rows(o)); };
  for (const OutTensor& o : out) {
    const uint64_t b = out_bytes(o);
    if (in_shard > 0 && in_shard + b > shard_bytes) shards.emplace_back(), in_shard = 0;
    shards.back().push_back(&o);
    in_shard += b;
    total += b;
  }
  ojson weight_map = ojson::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    if (shards.size() == 1) std::snprintf(name, sizeof name, "model.safetensors");
    else std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    SafetensorsWriter w;
    for (const OutTensor* o : shards[s]) {
      const ModelTensor& src = *o->src;
      const int64_t row = row_bytes(src);
      const std::vector<int64_t> shape =
          src.ne.size() > 1 ? std::vector<int64_t>{n_rows(*o), src.ne[0]} : std::vector<int64_t>{n_rows(*o)};
      const std::vector<int64_t>* rows = &o->rows;
      w.add(o->name, safetensors_dtype(src.type, src.name), shape, [&src, rows, row](uint8_t* dst, size_t bytes) {
        if (rows->empty()) return src.fill(dst, bytes);
        std::vector<uint8_t> all(size_t(dtype_row_bytes(src.type, src.ne[0]) * (src.ne.size() > 1 ? src.ne[1] : 1)));
        src.fill(all.data(), all.size());
        for (size_t i = 0; i < rows->size(); ++i)
          std::memcpy(dst + i * size_t(row), all.data() + size_t((*rows)[i] * row), size_t(row));
      });
      weight_map[o->name] = name;
    }
    w.write((fs::path(dir) / name).string());
  }
  if (shards.size() > 1)
    write_json_file(fs::path(dir) / kIndexFile, {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
  if (meta.find_string("tokenizer.ggml.model")) write_tokenizer_json(dir, meta);
}

}  // namespace sinkserve
