// A plain, independent llama forward pass for tests, in the style of llama2.c: one token at a
// time, F32 everywhere, keys cached UN-rotated and re-rotated at their in-cache positions on
// every step -- the StreamingLLM paper's (and HF SinkCache's) method, O(cache) work per token.
// It shares no code with the engine beyond the GGUF reader and dequantisation.
#pragma once
#include <cmath>
#include <deque>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "runtime/gguf.h"

namespace sinkserve::test {

class ReferenceLlama {
 public:
  // sink/window: keep the first `sink` tokens and the last `window` (current included);
  // window < 0 keeps everything (dense).
  ReferenceLlama(const GGUFFile& f, int sink, int window) : sink_(sink), window_(window) {
    const std::string a = f.get_string("general.architecture");
    dim_ = int(f.get_int(a + ".embedding_length"));
    layers_ = int(f.get_int(a + ".block_count"));
    heads_ = int(f.get_int(a + ".attention.head_count"));
    kv_heads_ = int(f.find_int(a + ".attention.head_count_kv").value_or(heads_));
    ffn_ = int(f.get_int(a + ".feed_forward_length"));
    eps_ = float(f.get_float(a + ".attention.layer_norm_rms_epsilon"));
    base_ = f.find_float(a + ".rope.freq_base").value_or(10000.0);
    if (f.find_string(a + ".rope.scaling.type").value_or("") == "linear")
      scale_ = 1.0 / f.get_float(a + ".rope.scaling.factor");
    neox_ = a == "qwen2";  // qwen2 rotates pairs (i, i + d/2) and adds q/k/v biases
    hd_ = dim_ / heads_;
    embd_ = load(f, "token_embd.weight");
    vocab_ = int(embd_.size() / size_t(dim_));
    out_ = f.find_tensor("output.weight") ? load(f, "output.weight") : embd_;
    out_norm_ = load(f, "output_norm.weight");
    for (int l = 0; l < layers_; ++l) {
      const std::string p = "blk." + std::to_string(l) + ".";
      L_.push_back({load(f, p + "attn_norm.weight"), load(f, p + "attn_q.weight"),
                    load(f, p + "attn_k.weight"), load(f, p + "attn_v.weight"),
                    load(f, p + "attn_output.weight"), load(f, p + "ffn_norm.weight"),
                    load(f, p + "ffn_gate.weight"), load(f, p + "ffn_up.weight"),
                    load(f, p + "ffn_down.weight"), {}, {}, {}, {}});
      if (neox_) {
        L_.back().bq = load(f, p + "attn_q.bias");
        L_.back().bk = load(f, p + "attn_k.bias");
        L_.back().bv = load(f, p + "attn_v.bias");
      }
    }
  }

  int vocab() const { return vocab_; }

  // Feeds one token and returns its logits.
  std::vector<float> step(int token) {
    std::vector<float> x(embd_.begin() + size_t(token) * dim_, embd_.begin() + size_t(token + 1) * dim_);
    const int kvd = kv_heads_ * hd_;
    for (auto& L : L_) {
      std::vector<float> xb = rmsnorm(x, L.attn_norm);
      Entry e{matvec(L.wq, xb, heads_ * hd_), matvec(L.wk, xb, kvd), matvec(L.wv, xb, kvd)};
      if (neox_) {
        add(e.q, L.bq);
        add(e.k, L.bk);
        add(e.v, L.bv);
      }
      L.cache.push_back(e);
      evict(L.cache);
      // Re-rotate everything at in-cache positions: entry i sits at position i.
      const int n = int(L.cache.size());
      std::vector<float> q = e.q;
      rope(q, heads_, n - 1);
      std::vector<std::vector<float>> keys(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        keys[size_t(i)] = L.cache[size_t(i)].k;
        rope(keys[size_t(i)], kv_heads_, i);
      }
      std::vector<float> att(size_t(heads_ * hd_), 0.0f);
      for (int h = 0; h < heads_; ++h) {
        const int kh = h / (heads_ / kv_heads_);
        std::vector<double> s(static_cast<size_t>(n));
        double mx = -1e300;
        for (int i = 0; i < n; ++i) {
          double d = 0;
          for (int j = 0; j < hd_; ++j) d += double(q[size_t(h * hd_ + j)]) * keys[size_t(i)][size_t(kh * hd_ + j)];
          s[size_t(i)] = d / std::sqrt(double(hd_));
          mx = std::max(mx, s[size_t(i)]);
        }
        double z = 0;
        for (double& v : s) z += (v = std::exp(v - mx));
        for (int i = 0; i < n; ++i)
          for (int j = 0; j < hd_; ++j)
            att[size_t(h * hd_ + j)] += float(s[size_t(i)] / z * L.cache[size_t(i)].v[size_t(kh * hd_ + j)]);
      }
      add(x, matvec(L.wo, att, dim_));
      xb = rmsnorm(x, L.ffn_norm);
      std::vector<float> g = matvec(L.w_gate, xb, ffn_), u = matvec(L.w_up, xb, ffn_);
      for (int i = 0; i < ffn_; ++i) g[size_t(i)] = g[size_t(i)] / (1.0f + std::exp(-g[size_t(i)])) * u[size_t(i)];
      add(x, matvec(L.w_down, g, dim_));
    }
    return matvec(out_, rmsnorm(x, out_norm_), vocab_);
  }

 private:
  struct Entry { std::vector<float> q, k, v; };
  struct Layer {
    std::vector<float> attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
    std::deque<Entry> cache;
    std::vector<float> bq, bk, bv;
  };

  static std::vector<float> load(const GGUFFile& f, const std::string& name) {
    const GGUFTensorInfo& t = f.tensor(name);
    std::vector<float> out(size_t(t.elements()));
    dequantize_row(t.type, t.data, out.data(), t.elements());
    return out;
  }
  void evict(std::deque<Entry>& c) const {
    if (window_ >= 0)
      while (int(c.size()) > sink_ + window_) c.erase(c.begin() + sink_);
  }
  std::vector<float> rmsnorm(const std::vector<float>& x, const std::vector<float>& w) const {
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const float r = float(1.0 / std::sqrt(ss / double(x.size()) + eps_));
    std::vector<float> o(x.size());
    for (size_t i = 0; i < x.size(); ++i) o[i] = x[i] * r * w[i];
    return o;
  }
  static std::vector<float> matvec(const std::vector<float>& w, const std::vector<float>& x, int rows) {
    std::vector<float> y(static_cast<size_t>(rows));
    const size_t cols = x.size();
    for (int r = 0; r < rows; ++r) {
      double acc = 0;
      for (size_t c = 0; c < cols; ++c) acc += double(w[size_t(r) * cols + c]) * x[c];
      y[size_t(r)] = float(acc);
    }
    return y;
  }
  static void add(std::vector<float>& x, const std::vector<float>& y) {
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  }
  // Rotation of every head at position pos: adjacent pairs (llama GGUF layout) or halves (neox).
  void rope(std::vector<float>& v, int n_heads, int64_t pos) const {
    for (int h = 0; h < n_heads; ++h)
      for (int i = 0; i < hd_ / 2; ++i) {
        const double th = double(pos) * scale_ * std::pow(base_, -2.0 * i / hd_);
        const double c = std::cos(th), s = std::sin(th);
        float& a = v[size_t(h * hd_ + (neox_ ? i : 2 * i))];
        float& b = v[size_t(h * hd_ + (neox_ ? i + hd_ / 2 : 2 * i + 1))];
        const double a0 = a, b0 = b;
        a = float(a0 * c - b0 * s);
        b = float(a0 * s + b0 * c);
      }
  }

  int sink_, window_;
  int dim_, layers_, heads_, kv_heads_, ffn_, hd_, vocab_;
  float eps_;
  double base_, scale_ = 1.0;
  bool neox_ = false;
  std::vector<float> embd_, out_, out_norm_;
  std::vector<Layer> L_;
};

}  // namespace sinkserve::test
