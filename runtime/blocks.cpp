#include "runtime/blocks.h"

namespace sinkserve {

void apply_norm(Backend& be, const ModelConfig& c, const NormWeights& n, const float* in, float* out,
                int64_t rows) {
  if (c.spec->norm == NormKind::Rms) be.rmsnorm(out, in, n.w, rows, c.dim, c.norm_eps);
  else be.layernorm(out, in, n.w, n.b, rows, c.dim, c.norm_eps);
}

void LayerPass::norm(const NormWeights& n, const float* in, float* out) {
  apply_norm(be_, cfg_, n, in, out, plan_.T);
}

void LayerPass::add_norm(const float* y, const NormWeights& n, float* out) {
  if (cfg_.spec->norm == NormKind::Rms)
    be_.add_rmsnorm(b_.x, y, out, n.w, plan_.T, cfg_.dim, cfg_.norm_eps);
  else
    be_.add_layernorm(b_.x, y, out, n.w, n.b, plan_.T, cfg_.dim, cfg_.norm_eps);
}

void LayerPass::attention(const LayerWeights& w, const float* in, float* out) {
  const int64_t T = plan_.T, hd = cfg_.head_dim;
  const int64_t q_w = int64_t(sh_.n_heads) * hd, kv_w = int64_t(sh_.n_kv) * hd, qkv_w = q_w + 2 * kv_w;
  if (w.wqkv.data) {  // rows q|k|v
    be_.matmul(w.wqkv, in, T, b_.qkv);
  } else {
    float* q = b_.parts;
    float* k = q + T * q_w;
    float* v = k + T * kv_w;
    be_.matmul(w.wq, in, T, q);
    be_.matmul(w.wk, in, T, k);
    be_.matmul(w.wv, in, T, v);
    const size_t f = sizeof(float), pitch = size_t(qkv_w) * f;
    be_.copy_2d(b_.qkv, pitch, q, size_t(q_w) * f, size_t(q_w) * f, size_t(T));
    be_.copy_2d(b_.qkv + q_w, pitch, k, size_t(kv_w) * f, size_t(kv_w) * f, size_t(T));
    be_.copy_2d(b_.qkv + q_w + kv_w, pitch, v, size_t(kv_w) * f, size_t(kv_w) * f, size_t(T));
  }
  if (cfg_.clamp_kqv > 0) be_.clamp(b_.qkv, T * qkv_w, cfg_.clamp_kqv);
  const float* q_sink = plan_.pos_sink ? b_.q_sink : b_.q;
  be_.rope_and_store(b_.qkv, qkv_w, T, sh_.n_heads, sh_.n_kv, int(hd), plan_.pos_win, plan_.pos_sink,
                     cfg_.rope, b_.q, b_.q_sink, cache_.kv_type(), cache_.k(layer_), cache_.v(layer_),
                     plan_.store);
  be_.attention(b_.q, q_sink, T, sh_.n_heads, sh_.n_kv, int(hd), cache_.kv_type(), cache_.k(layer_),
                cache_.v(layer_), plan_.spans, plan_.alibi_slopes, b_.att);
  be_.matmul(w.wo, b_.att, T, out);
}

void LayerPass::mlp(const LayerWeights& w, const float* in, float* out) {
  const int64_t T = plan_.T, ffn = sh_.ffn;
  const Activation act = cfg_.spec->act;
  if (!cfg_.spec->gated) {
    be_.matmul(w.w_up, in, T, b_.ffn);
    be_.activate(act, b_.ffn, b_.ffn, nullptr, T, ffn, ffn);
  } else if (w.w_gate_up.data) {  // rows gate|up
    be_.matmul(w.w_gate_up, in, T, b_.gate_up);
    be_.activate(act, b_.ffn, b_.gate_up, b_.gate_up + ffn, T, ffn, 2 * ffn);
  } else {
    be_.matmul(w.w_gate, in, T, b_.gate_up);
    be_.matmul(w.w_up, in, T, b_.gate_up + T * ffn);
    be_.activate(act, b_.ffn, b_.gate_up, b_.gate_up + T * ffn, T, ffn, ffn);
  }
  be_.matmul(w.w_down, b_.ffn, T, out);
}

void LayerPass::add(float* y, const float* z) { be_.add(y, z, rows()); }

void LayerPass::reduce(float* y) {
  if (comm_.size() > 1) comm_.all_reduce_sum(y, size_t(rows()));
}

void LayerPass::next(const float* y) {
  if (next_) add_norm(y, next_, b_.xb);
  else be_.add(b_.x, y, rows());
}

}  // namespace sinkserve
