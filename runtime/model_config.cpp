#include "runtime/model_config.h"

#include <cmath>
#include <optional>

#include "runtime/gguf.h"

namespace sinkserve {

namespace {

// Bounds far beyond any released model but small enough that products of them (buffer sizes)
// stay far from overflowing: a value past them is a corrupt file, not a big model.
constexpr int64_t kMaxDim = 1 << 20;
constexpr int64_t kMaxLayers = 1 << 12;
constexpr int64_t kMaxVocab = 1 << 24;

struct Reader {
  const GGUFFile& f;
  const std::string& arch;

  [[noreturn]] void fail(const std::string& what) const { throw GGUFError(f.path() + ": " + what); }

  int checked(const std::string& key, int64_t v, int64_t max) const {
    if (v <= 0 || v > max)
      fail("metadata key '" + key + "' is " + std::to_string(v) + " (must be 1 to " + std::to_string(max) + ")");
    return int(v);
  }
  int get(const std::string& suffix, int64_t max) const {
    const std::string key = arch + "." + suffix;
    return checked(key, f.get_int(key), max);
  }
  std::optional<int> find(const std::string& suffix, int64_t max) const {
    const std::string key = arch + "." + suffix;
    auto v = f.find_int(key);
    if (!v) return std::nullopt;
    return checked(key, *v, max);
  }
  double positive_float(const std::string& key, double v, double max) const {
    if (!std::isfinite(v) || v <= 0 || v > max)
      fail("metadata key '" + key + "' is " + std::to_string(v) + " (must be positive and at most " +
           std::to_string(max) + ")");
    return v;
  }
};

// Rotary dimensions, base, scaling and Llama-3's per-pair frequency factors. A scaling type
// this engine does not implement is refused: ignoring one would silently change every position.
void read_rope(const GGUFFile& f, const Reader& r, ModelConfig& c) {
  const std::string& a = c.arch;
  const int n_rot = r.find("rope.dimension_count", kMaxDim).value_or(c.head_dim);
  if (n_rot > c.head_dim || n_rot % 2)
    r.fail(a + ".rope.dimension_count is " + std::to_string(n_rot) + ": it must be even and at most the head "
           "dimension " + std::to_string(c.head_dim));
  c.rope.n_rot = n_rot;
  // The rotation follows the rows as stored, which differ by format for families whose GGUF
  // converter permutes q/k (runtime/arch.h).
  c.rope.neox = f.format() == ModelFormat::HfCheckpoint ? c.spec->hf->rope_neox : c.spec->rope_neox;
  const std::string base_key = a + ".rope.freq_base";
  c.rope.freq_base = float(r.positive_float(base_key, f.find_float(base_key).value_or(10000.0), 1e12));
  const std::string type_key = a + ".rope.scaling.type";
  const std::string scaling = f.find_string(type_key).value_or("none");
  if (scaling == "linear") {
    const std::string factor_key = a + ".rope.scaling.factor";
    c.rope.freq_scale = float(1.0 / r.positive_float(factor_key, f.get_float(factor_key), 1e6));
  } else if (scaling != "none") {
    r.fail(type_key + " is '" + scaling + "': sinkserve implements only 'linear' RoPE scaling (and Llama-3's "
           "rope_freqs factors)");
  } else if (auto legacy = f.find_float(a + ".rope.scale_linear")) {
    // Older converters wrote the linear factor under this key instead.
    c.rope.freq_scale = float(1.0 / r.positive_float(a + ".rope.scale_linear", *legacy, 1e6));
  }
  if (const GGUFTensorInfo* t = f.find_tensor("rope_freqs.weight")) {
    if (t->type != DType::F32 || t->ne.size() != 1 || t->ne[0] != n_rot / 2)
      r.fail("tensor 'rope_freqs.weight' must be F32 with " + std::to_string(n_rot / 2) +
             " values (one per rotated pair)");
    const auto* v = reinterpret_cast<const float*>(t->data);
    c.rope.freq_factors.assign(v, v + n_rot / 2);
    for (float x : c.rope.freq_factors)
      if (!std::isfinite(x) || x <= 0) r.fail("tensor 'rope_freqs.weight' holds a factor of " + std::to_string(x));
  }
}

}  // namespace

ModelConfig read_model_config(const GGUFFile& f) {
  ModelConfig c;
  c.arch = f.get_string("general.architecture");
  c.spec = find_arch(c.arch);
  if (!c.spec)
    throw GGUFError(f.path() + ": architecture '" + c.arch + "' is not supported (supported: " +
                    supported_archs() + ")");
  const ArchSpec& spec = *c.spec;
  c.name = f.find_string("general.name").value_or("");
  if (f.format() == ModelFormat::HfCheckpoint) c.qkv_layout = spec.hf->qkv;
  const Reader r{f, c.arch};
  const std::string& a = c.arch;

  c.n_layers = r.get("block_count", kMaxLayers);
  c.dim = r.get("embedding_length", kMaxDim);
  c.ffn = r.get("feed_forward_length", kMaxDim * 4);
  c.n_heads = r.get("attention.head_count", c.dim);
  c.n_kv_heads = r.find("attention.head_count_kv", c.n_heads).value_or(c.n_heads);
  if (c.dim % c.n_heads != 0)
    r.fail(a + ".attention.head_count " + std::to_string(c.n_heads) + " does not divide " + a +
           ".embedding_length " + std::to_string(c.dim));
  if (c.n_heads % c.n_kv_heads != 0)
    r.fail(a + ".attention.head_count_kv " + std::to_string(c.n_kv_heads) + " does not divide " + a +
           ".attention.head_count " + std::to_string(c.n_heads));
  c.head_dim = c.dim / c.n_heads;
  for (const char* k : {"attention.key_length", "attention.value_length"})
    if (auto v = r.find(k, kMaxDim); v && *v != c.head_dim)
      r.fail(a + "." + k + " is " + std::to_string(*v) + ", but sinkserve needs heads of " + a +
             ".embedding_length / head_count = " + std::to_string(c.head_dim));

  if (c.head_dim % 2 != 0) r.fail("head dimension " + std::to_string(c.head_dim) + " is odd");
  const std::string eps_key =
      a + (spec.norm == NormKind::Rms ? ".attention.layer_norm_rms_epsilon" : ".attention.layer_norm_epsilon");
  c.norm_eps = float(r.positive_float(eps_key, f.get_float(eps_key), 1.0));
  c.parallel_residual = spec.parallel;
  if (spec.parallel_key)
    c.parallel_residual = f.find_bool(a + ".use_parallel_residual").value_or(spec.parallel);

  if (spec.positions == Positions::Alibi) {
    c.rope.n_rot = 0;
    const std::string bias_key = a + ".attention.max_alibi_bias";
    c.alibi_bias_max = float(r.positive_float(bias_key, f.find_float(bias_key).value_or(8.0), 1e3));
  } else {
    read_rope(f, r, c);
  }
  if (auto clamp = f.find_float(a + ".attention.clamp_kqv"))
    c.clamp_kqv = float(r.positive_float(a + ".attention.clamp_kqv", *clamp, 1e30));

  const std::string ctx_key = a + ".context_length";
  c.ctx_train = f.get_int(ctx_key);
  if (c.ctx_train <= 0 || c.ctx_train > (int64_t(1) << 32))
    r.fail("metadata key '" + ctx_key + "' is " + std::to_string(c.ctx_train) + " (must be 1 to 2^32)");
  if (auto w = f.find_int(a + ".attention.sliding_window")) {
    if (*w < 0) r.fail(a + ".attention.sliding_window is negative");
    c.sliding_window = *w;
  }

  const GGUFTensorInfo* embd = f.find_tensor("token_embd.weight");
  std::optional<int64_t> n_tokens;
  if (f.find("tokenizer.ggml.tokens")) n_tokens = int64_t(f.get_array("tokenizer.ggml.tokens").items.size());
  if (n_tokens && embd && embd->ne.size() == 2 && embd->ne[1] != *n_tokens)
    r.fail("the tokenizer has " + std::to_string(*n_tokens) + " tokens but token_embd.weight has " +
           std::to_string(embd->ne[1]) + " rows");
  if (n_tokens) c.vocab = r.checked("tokenizer.ggml.tokens (count)", *n_tokens, kMaxVocab);
  else if (embd && embd->ne.size() == 2) c.vocab = r.checked("token_embd.weight rows", embd->ne[1], kMaxVocab);
  else r.fail("no vocabulary: neither tokenizer.ggml.tokens nor a 2-D token_embd.weight is present");

  c.tied_output = f.find_tensor("output.weight") == nullptr;
  return c;
}

int64_t kv_token_bytes(const ModelConfig& c, DType t) {
  return 2 * int64_t(c.n_layers) * dtype_row_bytes(t, int64_t(c.n_kv_heads) * c.head_dim);
}

std::vector<float> alibi_slopes(int n_heads, float bias_max, int first, int n) {
  int n2 = 1;
  while (n2 * 2 <= n_heads) n2 *= 2;
  std::vector<float> s(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const int h = first + i;
    const double e = h < n2 ? -double(bias_max) * (h + 1) / n2 : -double(bias_max) * (2 * (h - n2) + 1) / (2 * n2);
    s[size_t(i)] = float(std::exp2(e));
  }
  return s;
}

KvHeadShare kv_head_share(int n_heads, int n_kv_heads, int R, int r) {
  if (n_kv_heads % R == 0) return {r * (n_kv_heads / R), n_kv_heads / R};
  if (R % n_kv_heads == 0 && n_heads % R == 0) return {r * (n_heads / R) / (n_heads / n_kv_heads), 1};
  return {};
}

}  // namespace sinkserve
