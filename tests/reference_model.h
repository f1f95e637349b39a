// A plain, independent forward pass for tests, in the style of llama2.c: one token at a time, F32
// weights, double accumulation, and positions the StreamingLLM way. Keys are cached UN-rotated and
// re-rotated at their in-cache positions on every step (RoPE), or scored with the ALiBi bias of
// their in-cache distance (MPT): the paper's (and HF SinkCache's) method, O(cache) work per token.
//
// It shares no code with the engine beyond the GGUF reader and dequantisation: each family's
// tensor names, norm, activation, residual shape and positions are stated here, in ref_family(),
// not taken from the engine's architecture table.
#pragma once
#include <cmath>
#include <deque>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "runtime/gguf.h"

namespace sinkserve::test {

struct RefFamily {
  bool layer_norm = false;      // LayerNorm (bias when present) instead of RMSNorm
  enum Act { Silu, GeluTanh, GeluErf } act = Silu;
  bool gated = true;            // act(ffn_gate x) * ffn_up x, else act(ffn_up x)
  bool alibi = false;
  bool neox = false;            // rotate (i, i + d/2) instead of (2i, 2i + 1)
  bool parallel = false;        // x + attn(n1 x) + mlp(n2 x)
  const char* parallel_key = nullptr;  // metadata that overrides `parallel`
};

// The families as their papers and reference implementations define them.
inline RefFamily ref_family(const std::string& arch) {
  RefFamily f;
  if (arch == "llama" || arch == "mistral") return f;
  if (arch == "qwen2") { f.neox = true; return f; }
  f.layer_norm = true;
  f.gated = false;
  if (arch == "gptneox") { f.act = RefFamily::GeluErf; f.neox = true; f.parallel = true; f.parallel_key = "use_parallel_residual"; }
  else if (arch == "falcon") { f.act = RefFamily::GeluErf; f.neox = true; f.parallel = true; }
  else if (arch == "mpt") { f.act = RefFamily::GeluErf; f.alibi = true; }
  else if (arch == "phi2") { f.act = RefFamily::GeluTanh; f.neox = true; f.parallel = true; }
  else if (arch == "gptj") { f.act = RefFamily::GeluTanh; f.parallel = true; }
  else if (arch == "stablelm") { f.gated = true; f.neox = true; f.parallel_key = "use_parallel_residual"; }
  else throw std::invalid_argument("reference: no family '" + arch + "'");
  return f;
}

class ReferenceModel {
 public:
  // sink/window: keep the first `sink` tokens and the last `window` (current included);
  // window < 0 keeps everything (dense).
  ReferenceModel(const GGUFFile& f, int sink, int window) : sink_(sink), window_(window) {
    const std::string a = f.get_string("general.architecture");
    fam_ = ref_family(a);
    dim_ = int(f.get_int(a + ".embedding_length"));
    layers_ = int(f.get_int(a + ".block_count"));
    heads_ = int(f.get_int(a + ".attention.head_count"));
    kv_heads_ = int(f.find_int(a + ".attention.head_count_kv").value_or(heads_));
    ffn_ = int(f.get_int(a + ".feed_forward_length"));
    eps_ = f.get_float(a + (fam_.layer_norm ? ".attention.layer_norm_epsilon" : ".attention.layer_norm_rms_epsilon"));
    hd_ = dim_ / heads_;
    if (fam_.parallel_key) fam_.parallel = f.find_bool(a + "." + fam_.parallel_key).value_or(fam_.parallel);
    clamp_ = f.find_float(a + ".attention.clamp_kqv").value_or(0.0);
    if (fam_.alibi) {
      // Press et al.: for the largest power of two n <= heads, slope h = 2^(-8 (h+1) / n) scaled
      // by max_bias / 8; the remaining heads take every other slope of 2n heads.
      const double max_bias = f.find_float(a + ".attention.max_alibi_bias").value_or(8.0);
      int n = 1;
      while (2 * n <= heads_) n *= 2;
      for (int h = 0; h < heads_; ++h)
        slopes_.push_back(h < n ? std::pow(2.0, -max_bias * (h + 1) / n)
                                : std::pow(2.0, -max_bias * (2 * (h - n) + 1) / (2 * n)));
    } else {
      n_rot_ = int(f.find_int(a + ".rope.dimension_count").value_or(hd_));
      base_ = f.find_float(a + ".rope.freq_base").value_or(10000.0);
      if (f.find_string(a + ".rope.scaling.type").value_or("") == "linear")
        scale_ = 1.0 / f.get_float(a + ".rope.scaling.factor");
      if (f.find_tensor("rope_freqs.weight")) factors_ = load(f, "rope_freqs.weight");
    }
    embd_ = load(f, "token_embd.weight");
    vocab_ = int(embd_.size() / size_t(dim_));
    out_ = f.find_tensor("output.weight") ? load(f, "output.weight") : embd_;
    out_b_ = maybe(f, "output.bias");
    out_norm_ = {load(f, "output_norm.weight"), maybe(f, "output_norm.bias")};
    for (int l = 0; l < layers_; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      Layer L;
      L.attn_norm = {load(f, p + "attn_norm.weight"), maybe(f, p + "attn_norm.bias")};
      L.attn_norm_2 = {maybe(f, p + "attn_norm_2.weight"), maybe(f, p + "attn_norm_2.bias")};
      L.ffn_norm = {maybe(f, p + "ffn_norm.weight"), maybe(f, p + "ffn_norm.bias")};
      if (f.find_tensor(p + "attn_qkv.weight")) {
        L.wqkv = load(f, p + "attn_qkv.weight");
        L.bqkv = maybe(f, p + "attn_qkv.bias");
      } else {
        L.wq = load(f, p + "attn_q.weight");
        L.wk = load(f, p + "attn_k.weight");
        L.wv = load(f, p + "attn_v.weight");
        L.bq = maybe(f, p + "attn_q.bias");
        L.bk = maybe(f, p + "attn_k.bias");
        L.bv = maybe(f, p + "attn_v.bias");
      }
      L.wo = load(f, p + "attn_output.weight");
      L.bo = maybe(f, p + "attn_output.bias");
      if (fam_.gated) L.w_gate = load(f, p + "ffn_gate.weight");
      L.w_up = load(f, p + "ffn_up.weight");
      L.b_up = maybe(f, p + "ffn_up.bias");
      L.w_down = load(f, p + "ffn_down.weight");
      L.b_down = maybe(f, p + "ffn_down.bias");
      L_.push_back(std::move(L));
    }
  }

  int vocab() const { return vocab_; }

  // Feeds one token and returns its logits.
  std::vector<float> step(int token) {
    std::vector<double> x(embd_.begin() + size_t(token) * dim_, embd_.begin() + size_t(token + 1) * dim_);
    const int qd = heads_ * hd_, kvd = kv_heads_ * hd_;
    for (Layer& L : L_) {
      const std::vector<double> h = norm(x, L.attn_norm);
      Entry e;
      if (!L.wqkv.empty()) {  // rows q | k | v
        const std::vector<double> qkv = linear(L.wqkv, L.bqkv, h, qd + 2 * kvd);
        e.q.assign(qkv.begin(), qkv.begin() + qd);
        e.k.assign(qkv.begin() + qd, qkv.begin() + qd + kvd);
        e.v.assign(qkv.begin() + qd + kvd, qkv.end());
      } else {
        e = {linear(L.wq, L.bq, h, qd), linear(L.wk, L.bk, h, kvd), linear(L.wv, L.bv, h, kvd)};
      }
      if (clamp_ > 0)
        for (auto* v : {&e.q, &e.k, &e.v})
          for (double& z : *v) z = std::min(clamp_, std::max(-clamp_, z));
      L.cache.push_back(e);
      if (window_ >= 0)
        while (int(L.cache.size()) > sink_ + window_) L.cache.erase(L.cache.begin() + sink_);
      const std::vector<double> attn = linear(L.wo, L.bo, attend(L.cache), dim_);
      if (fam_.parallel) {
        // The MLP reads the block input through its own norm where the model has one.
        const Norm& n2 = !L.attn_norm_2.w.empty() ? L.attn_norm_2 : !L.ffn_norm.w.empty() ? L.ffn_norm : L.attn_norm;
        const std::vector<double> m = mlp(L, norm(x, n2));
        for (int i = 0; i < dim_; ++i) x[size_t(i)] += attn[size_t(i)] + m[size_t(i)];
      } else {
        for (int i = 0; i < dim_; ++i) x[size_t(i)] += attn[size_t(i)];
        const std::vector<double> m = mlp(L, norm(x, L.ffn_norm));
        for (int i = 0; i < dim_; ++i) x[size_t(i)] += m[size_t(i)];
      }
    }
    const std::vector<double> logits = linear(out_, out_b_, norm(x, out_norm_), vocab_);
    return std::vector<float>(logits.begin(), logits.end());
  }

 private:
  struct Entry { std::vector<double> q, k, v; };
  struct Norm { std::vector<float> w, b; };
  struct Layer {
    Norm attn_norm, attn_norm_2, ffn_norm;
    std::vector<float> wqkv, bqkv, wq, wk, wv, bq, bk, bv, wo, bo, w_gate, w_up, b_up, w_down, b_down;
    std::deque<Entry> cache;
  };

  static std::vector<float> load(const GGUFFile& f, const std::string& name) {
    const GGUFTensorInfo& t = f.tensor(name);
    std::vector<float> out(size_t(t.elements()));
    dequantize_row(t.type, t.data, out.data(), t.elements());
    return out;
  }
  static std::vector<float> maybe(const GGUFFile& f, const std::string& name) {
    return f.find_tensor(name) ? load(f, name) : std::vector<float>{};
  }

  std::vector<double> norm(const std::vector<double>& x, const Norm& n) const {
    const double d = double(x.size());
    double mean = 0;
    if (fam_.layer_norm)
      for (double v : x) mean += v / d;
    double ss = 0;
    for (double v : x) ss += (v - mean) * (v - mean);
    const double r = 1.0 / std::sqrt(ss / d + eps_);
    std::vector<double> o(x.size());
    for (size_t i = 0; i < x.size(); ++i) o[i] = (x[i] - mean) * r * n.w[i] + (n.b.empty() ? 0.0 : n.b[i]);
    return o;
  }
  static std::vector<double> linear(const std::vector<float>& w, const std::vector<float>& b,
                                    const std::vector<double>& x, int rows) {
    std::vector<double> y(static_cast<size_t>(rows));
    const size_t cols = x.size();
    for (int r = 0; r < rows; ++r) {
      double acc = b.empty() ? 0.0 : b[size_t(r)];
      for (size_t c = 0; c < cols; ++c) acc += double(w[size_t(r) * cols + c]) * x[c];
      y[size_t(r)] = acc;
    }
    return y;
  }
  double act(double v) const {
    switch (fam_.act) {
      case RefFamily::Silu: return v / (1.0 + std::exp(-v));
      case RefFamily::GeluTanh: return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
      case RefFamily::GeluErf: return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
    }
    return v;
  }
  std::vector<double> mlp(const Layer& L, const std::vector<double>& h) const {
    std::vector<double> u = linear(L.w_up, L.b_up, h, ffn_);
    if (fam_.gated) {
      const std::vector<double> g = linear(L.w_gate, {}, h, ffn_);
      for (int i = 0; i < ffn_; ++i) u[size_t(i)] *= act(g[size_t(i)]);
    } else {
      for (double& v : u) v = act(v);
    }
    return linear(L.w_down, L.b_down, u, dim_);
  }
  // Rotation of every head's first n_rot dimensions at position pos.
  void rope(std::vector<double>& v, int n_heads, int64_t pos) const {
    const int half = n_rot_ / 2;
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < half; ++i) {
        double th = double(pos) * scale_ * std::pow(base_, -2.0 * i / n_rot_);
        if (!factors_.empty()) th /= factors_[size_t(i)];
        const double c = std::cos(th), s = std::sin(th);
        double& a = v[size_t(h * hd_ + (fam_.neox ? i : 2 * i))];
        double& b = v[size_t(h * hd_ + (fam_.neox ? i + half : 2 * i + 1))];
        const double a0 = a, b0 = b;
        a = a0 * c - b0 * s;
        b = a0 * s + b0 * c;
      }
  }
  // The newest entry's query against every cached entry, entry i at in-cache position i.
  std::vector<double> attend(const std::deque<Entry>& cache) const {
    const int n = int(cache.size());
    std::vector<double> q = cache.back().q;
    std::vector<std::vector<double>> keys(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) keys[size_t(i)] = cache[size_t(i)].k;
    if (!fam_.alibi) {
      rope(q, heads_, n - 1);
      for (int i = 0; i < n; ++i) rope(keys[size_t(i)], kv_heads_, i);
    }
    std::vector<double> out(size_t(heads_ * hd_), 0.0);
    for (int h = 0; h < heads_; ++h) {
      const int kh = h / (heads_ / kv_heads_);
      std::vector<double> s(static_cast<size_t>(n));
      double mx = -1e300;
      for (int i = 0; i < n; ++i) {
        double d = 0;
        for (int j = 0; j < hd_; ++j) d += q[size_t(h * hd_ + j)] * keys[size_t(i)][size_t(kh * hd_ + j)];
        s[size_t(i)] = d / std::sqrt(double(hd_)) - (fam_.alibi ? slopes_[size_t(h)] * (n - 1 - i) : 0.0);
        mx = std::max(mx, s[size_t(i)]);
      }
      double z = 0;
      for (double& v : s) z += (v = std::exp(v - mx));
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < hd_; ++j)
          out[size_t(h * hd_ + j)] += s[size_t(i)] / z * cache[size_t(i)].v[size_t(kh * hd_ + j)];
    }
    return out;
  }

  int sink_, window_;
  RefFamily fam_;
  int dim_, layers_, heads_, kv_heads_, ffn_, hd_, vocab_, n_rot_ = 0;
  double eps_, base_ = 10000.0, scale_ = 1.0, clamp_ = 0.0;
  std::vector<double> slopes_;
  std::vector<float> factors_, embd_, out_, out_b_;
  Norm out_norm_;
  std::vector<Layer> L_;
};

}  // namespace sinkserve::test
