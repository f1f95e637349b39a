#include "runtime/llama_model.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "runtime/gguf.h"

namespace sinkserve {

// Q, K and V are stacked into one matrix `wqkv`, gate and up into `w_gate_up`, so that each is one
// pass over the weights and one launch: a decode step is a chain of small, latency-bound matmuls.
// Parts stored in different types cannot share a matrix; then the stacked weight is empty (no
// data) and the parts are used one by one.
struct LlamaModel::Layer {
  float* attn_norm = nullptr;
  float* ffn_norm = nullptr;
  Weight wqkv, wq, wk, wv, wo, w_gate_up, w_gate, w_up, w_down;
};

// Activations of one step, sized for the largest step seen so far.
struct LlamaModel::Scratch {
  int64_t cap_tok = 0, cap_out = 0;
  float *x = nullptr, *xb = nullptr, *qkv = nullptr, *parts = nullptr, *q = nullptr,
        *q_sink = nullptr, *att = nullptr, *o = nullptr, *gate_up = nullptr, *ffn = nullptr,
        *xo = nullptr, *logits = nullptr, *gathered = nullptr, *full = nullptr;
  std::vector<float*> all() {
    return {x, xb, qkv, parts, q, q_sink, att, o, gate_up, ffn, xo, logits, gathered, full};
  }
  // The host-side plan of the current step (kept to reuse its memory): each token's id, where its
  // K/V go, its two rotations and attention span, and the rows whose logits are wanted.
  std::vector<int32_t> tokens;
  std::vector<TokenPlan> plan;
  std::vector<int64_t> store, pos_win, pos_sink, out_rows;
  std::vector<AttnSpan> spans;
};

namespace {

std::string shard_error(const GGUFFile& f, const std::string& what, int64_t n, int ranks) {
  return f.path() + ": cannot shard over " + std::to_string(ranks) + " ranks: " + what + " (" +
         std::to_string(n) + ") does not divide by " + std::to_string(ranks);
}

}  // namespace

LlamaModel::LlamaModel(const GGUFFile& f, Backend& backend, Communicator& comm)
    : cfg_(read_model_config(f)), backend_(backend), comm_(comm), s_(std::make_unique<Scratch>()) {
  const int R = comm.size(), r = comm.rank();
  const int hd = cfg_.head_dim, dim = cfg_.dim;
  if (cfg_.n_heads % R) throw std::runtime_error(shard_error(f, "attention heads", cfg_.n_heads, R));
  if (cfg_.ffn % R) throw std::runtime_error(shard_error(f, "feed-forward width", cfg_.ffn, R));
  n_heads_local_ = cfg_.n_heads / R;
  // KV heads are split like the query heads when they divide; otherwise every rank keeps the one
  // KV head its query heads share (replication), which needs ranks to be a multiple of KV heads.
  int kv_begin;
  if (cfg_.n_kv_heads % R == 0) {
    n_kv_local_ = cfg_.n_kv_heads / R;
    kv_begin = r * n_kv_local_;
  } else if (R % cfg_.n_kv_heads == 0) {
    n_kv_local_ = 1;
    kv_begin = r * n_heads_local_ / (cfg_.n_heads / cfg_.n_kv_heads);
  } else {
    throw std::runtime_error(f.path() + ": cannot shard " + std::to_string(cfg_.n_kv_heads) +
                             " KV heads over " + std::to_string(R) +
                             " ranks: one must be a multiple of the other");
  }
  ffn_local_ = cfg_.ffn / R;
  vocab_local_ = (cfg_.vocab + R - 1) / R;
  vocab_begin_ = r * vocab_local_;
  const int vocab_rows = std::max(0, std::min(cfg_.vocab - vocab_begin_, vocab_local_));

  auto vec = [&](const std::string& name, int64_t n) {
    const GGUFTensorInfo& t = f.tensor(name, {n});
    if (t.type != DType::F32) throw GGUFError(f.path() + ": tensor '" + name + "' must be F32");
    auto* p = static_cast<float*>(backend_.alloc(size_t(n) * 4));
    backend_.to_device(p, t.data, size_t(n) * 4);
    weight_bytes_ += n * 4;
    return p;
  };
  // Rows [row0, row0 + rows) of a [rows_total][cols] matrix (contiguous in the file), with the
  // same rows of its bias when it has one.
  struct RowSlice {
    std::string name, bias_name;
    int64_t rows_total, row0, rows;
  };
  auto bias_of = [&](const RowSlice& p) {
    const GGUFTensorInfo& b = f.tensor(p.bias_name, {p.rows_total});
    if (b.type != DType::F32) throw GGUFError(f.path() + ": tensor '" + p.bias_name + "' must be F32");
    weight_bytes_ += p.rows * 4;
    return reinterpret_cast<const float*>(b.data) + p.row0;
  };
  auto rows_of = [&](int64_t cols, const RowSlice& p) {
    const GGUFTensorInfo& t = f.tensor(p.name, {cols, p.rows_total});
    const int64_t rb = dtype_row_bytes(t.type, cols);
    const float* bias = p.bias_name.empty() ? nullptr : bias_of(p);
    weight_bytes_ += p.rows * rb;
    return backend_.prepare_weight(t.type, t.data + p.row0 * rb, p.rows, cols, bias);
  };
  // The slices stacked into one matrix, or an empty Weight when their types differ.
  auto stacked = [&](int64_t cols, const std::vector<RowSlice>& parts) {
    const DType type = f.tensor(parts[0].name, {cols, parts[0].rows_total}).type;
    int64_t rows = 0;
    for (const RowSlice& p : parts) {
      if (f.tensor(p.name, {cols, p.rows_total}).type != type) return Weight{};
      rows += p.rows;
    }
    const int64_t rb = dtype_row_bytes(type, cols);
    std::vector<uint8_t> data(size_t(rows * rb));
    std::vector<float> bias;
    uint8_t* at = data.data();
    for (const RowSlice& p : parts) {
      at = std::copy_n(f.tensor(p.name).data + p.row0 * rb, size_t(p.rows * rb), at);
      if (p.bias_name.empty()) continue;
      const float* b = bias_of(p);
      bias.insert(bias.end(), b, b + p.rows);
    }
    weight_bytes_ += rows * rb;
    return backend_.prepare_weight(type, data.data(), rows, cols, bias.empty() ? nullptr : bias.data());
  };
  // Columns [col0, col0 + cols) of every row: strided in the file, so this rank copies its shard.
  auto cols_of = [&](const std::string& name, int64_t cols_total, int64_t rows, int64_t col0,
                     int64_t cols) {
    const GGUFTensorInfo& t = f.tensor(name, {cols_total, rows});
    if (cols == cols_total) {
      weight_bytes_ += int64_t(t.bytes);
      return backend_.prepare_weight(t.type, t.data, rows, cols, nullptr);
    }
    const int64_t bv = dtype_block_values(t.type);
    if (col0 % bv || cols % bv)
      throw std::runtime_error(f.path() + ": cannot shard '" + name + "': " + std::to_string(cols) +
                               "-column slices do not align to " + std::string(dtype_name(t.type)) +
                               " blocks");
    const int64_t rb = dtype_row_bytes(t.type, cols_total), sb = dtype_row_bytes(t.type, cols),
                  ob = dtype_row_bytes(t.type, col0);
    std::vector<uint8_t> buf(size_t(rows * sb));
    for (int64_t i = 0; i < rows; ++i) std::memcpy(&buf[size_t(i * sb)], t.data + i * rb + ob, size_t(sb));
    weight_bytes_ += rows * sb;
    return backend_.prepare_weight(t.type, buf.data(), rows, cols, nullptr);
  };

  const int q_dim = cfg_.n_heads * hd, kv_dim = cfg_.n_kv_heads * hd;
  tok_embd_ = backend_.prepare_weight(f.tensor("token_embd.weight", {dim, cfg_.vocab}).type,
                                      f.tensor("token_embd.weight").data, cfg_.vocab, dim, nullptr);
  layers_.resize(size_t(cfg_.n_layers));
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    Layer& L = layers_[size_t(l)];
    L.attn_norm = vec(p + "attn_norm.weight", dim);
    L.ffn_norm = vec(p + "ffn_norm.weight", dim);
    const bool b = cfg_.qkv_bias;
    const std::vector<RowSlice> qkv = {
        {p + "attn_q.weight", b ? p + "attn_q.bias" : "", q_dim, int64_t(r) * n_heads_local_ * hd,
         int64_t(n_heads_local_) * hd},
        {p + "attn_k.weight", b ? p + "attn_k.bias" : "", kv_dim, int64_t(kv_begin) * hd,
         int64_t(n_kv_local_) * hd},
        {p + "attn_v.weight", b ? p + "attn_v.bias" : "", kv_dim, int64_t(kv_begin) * hd,
         int64_t(n_kv_local_) * hd}};
    L.wqkv = stacked(dim, qkv);
    if (!L.wqkv.data) {
      L.wq = rows_of(dim, qkv[0]);
      L.wk = rows_of(dim, qkv[1]);
      L.wv = rows_of(dim, qkv[2]);
    }
    L.wo = cols_of(p + "attn_output.weight", q_dim, dim, int64_t(r) * n_heads_local_ * hd,
                   int64_t(n_heads_local_) * hd);
    const std::vector<RowSlice> gate_up = {
        {p + "ffn_gate.weight", "", cfg_.ffn, int64_t(r) * ffn_local_, ffn_local_},
        {p + "ffn_up.weight", "", cfg_.ffn, int64_t(r) * ffn_local_, ffn_local_}};
    L.w_gate_up = stacked(dim, gate_up);
    if (!L.w_gate_up.data) {
      L.w_gate = rows_of(dim, gate_up[0]);
      L.w_up = rows_of(dim, gate_up[1]);
    }
    L.w_down = cols_of(p + "ffn_down.weight", cfg_.ffn, dim, int64_t(r) * ffn_local_, ffn_local_);
  }
  output_norm_ = vec("output_norm.weight", dim);
  output_ = rows_of(dim, {cfg_.tied_output ? "token_embd.weight" : "output.weight", "", cfg_.vocab,
                         vocab_begin_, vocab_rows});
  // Every matrix above is read once per forward step; the embedding table only row by row.
  streamed_bytes_ = weight_bytes_;
  const int64_t embd = int64_t(f.tensor("token_embd.weight").bytes);
  weight_bytes_ += cfg_.tied_output ? embd - dtype_row_bytes(output_.type, dim) * vocab_rows : embd;
  // The backends copy what they compute with (CPU: into huge pages; CUDA: to the device), so the
  // mapped file no longer needs to occupy this rank's memory.
  f.drop_resident_pages();
}

LlamaModel::~LlamaModel() {
  for (float* p : s_->all()) if (p) backend_.release(p);
  for (Layer& L : layers_) {
    backend_.release(L.attn_norm);
    backend_.release(L.ffn_norm);
  }
  backend_.release(output_norm_);
}

int64_t LlamaModel::logit_rows(std::span<const SeqStep> steps) {
  int64_t n = 0;
  for (const SeqStep& s : steps) n += s.all_logits ? s.n : 1;
  return n;
}

void LlamaModel::ensure_scratch(int64_t n_tok, int64_t n_out) {
  if (n_tok <= s_->cap_tok && n_out <= s_->cap_out) return;
  for (float* p : s_->all()) if (p) backend_.release(p);
  Scratch& s = *s_;
  s.cap_tok = std::max(n_tok, s.cap_tok);
  s.cap_out = std::max(n_out, s.cap_out);
  auto a = [&](int64_t rows, int64_t width) {
    return static_cast<float*>(backend_.alloc(size_t(rows * width) * sizeof(float)));
  };
  const int64_t T = s.cap_tok, O = s.cap_out, hd = cfg_.head_dim;
  s.x = a(T, cfg_.dim);
  s.xb = a(T, cfg_.dim);
  const int64_t qkv_w = (n_heads_local_ + 2 * n_kv_local_) * hd;
  s.qkv = a(T, qkv_w);
  s.parts = a(T, qkv_w);
  s.q = a(T, n_heads_local_ * hd);
  s.q_sink = a(T, n_heads_local_ * hd);
  s.att = a(T, n_heads_local_ * hd);
  s.o = a(T, cfg_.dim);
  s.gate_up = a(T, 2 * ffn_local_);
  s.ffn = a(T, ffn_local_);
  s.xo = a(O, cfg_.dim);
  s.logits = a(O, vocab_local_);
  s.gathered = comm_.size() > 1 ? a(O * comm_.size(), vocab_local_) : nullptr;
  s.full = comm_.size() > 1 ? a(O, cfg_.vocab) : nullptr;
}

void LlamaModel::forward(KVCache& cache, std::span<const SeqStep> steps, float* logits,
                         const SampleSpec* specs, int32_t* sampled) {
  if (cache.kv_dim() != local_kv_dim() || cache.n_layers() != cfg_.n_layers)
    throw std::invalid_argument("forward: the cache was not built for this model's shard");
  int64_t T = 0;
  for (const SeqStep& s : steps) {
    if (s.n < 1) throw std::invalid_argument("forward: a step needs at least one token");
    for (int i = 0; i < s.n; ++i)
      if (s.tokens[i] < 0 || s.tokens[i] >= cfg_.vocab)
        throw std::invalid_argument("forward: token id " + std::to_string(s.tokens[i]) +
                                    " is outside the vocabulary of " + std::to_string(cfg_.vocab));
    T += s.n;
  }
  if (T == 0) return;
  const int64_t O = logit_rows(steps);

  Scratch& s = *s_;
  const size_t n = static_cast<size_t>(T);
  s.tokens.resize(n);
  s.plan.resize(n);
  s.store.resize(n);
  s.pos_win.resize(n);
  s.pos_sink.resize(n);
  s.spans.resize(n);
  s.out_rows.clear();
  int64_t t = 0;
  for (const SeqStep& st : steps) {
    cache.plan(st.slot, st.n, &s.plan[size_t(t)]);
    std::copy(st.tokens, st.tokens + st.n, &s.tokens[size_t(t)]);
    for (int i = 0; i < st.n; ++i)
      if (st.all_logits || i == st.n - 1) s.out_rows.push_back(t + i);
    t += st.n;
  }
  bool shifted = false;  // whether any query sees its sinks from a shifted position
  for (size_t i = 0; i < n; ++i) {
    s.store[i] = s.plan[i].store_row;
    s.pos_win[i] = s.plan[i].pos_win;
    s.pos_sink[i] = s.plan[i].pos_sink;
    s.spans[i] = s.plan[i].span;
    shifted |= s.pos_sink[i] != s.pos_win[i];
  }

  ensure_scratch(T, O);
  Backend& be = backend_;
  // The step's launches up to the logits form one recurring unit (Backend::begin_step), run a
  // second time when the backend asks for it. Collectives stay outside: a communicator's own
  // synchronisation cannot be recorded.
  const bool bracket = comm_.size() == 1;
  for (bool done = false; !done;) {
    if (bracket) be.begin_step(T);
    try {
      run_layers(cache, T, O, shifted);
    } catch (...) {
      if (bracket) be.end_step();  // close the bracket before the error travels on
      throw;
    }
    done = !bracket || be.end_step();
  }
  for (const SeqStep& st : steps) cache.commit(st.slot, st.n);
  gather_and_sample(O, logits, specs, sampled);
}

void LlamaModel::run_layers(KVCache& cache, int64_t T, int64_t O, bool shifted) {
  Scratch& s = *s_;
  Backend& be = backend_;
  const int64_t* pos_sink = shifted ? s.pos_sink.data() : nullptr;
  const int hd = cfg_.head_dim, dim = cfg_.dim, kv_w = local_kv_dim();
  const int64_t q_w = int64_t(n_heads_local_) * hd, qkv_w = q_w + 2 * kv_w, ffn = ffn_local_;
  be.embed(tok_embd_, s.tokens.data(), T, s.x);
  // Each residual add is fused with the norm that follows it; so the first norm stands alone.
  be.rmsnorm(s.xb, s.x, layers_[0].attn_norm, T, dim, cfg_.norm_eps);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const Layer& L = layers_[size_t(l)];
    // Attention block: rows q|k|v, rotated and the keys and values stored in one pass.
    if (L.wqkv.data) {
      be.matmul(L.wqkv, s.xb, T, s.qkv);
    } else {
      float* q = s.parts;
      float* k = q + T * q_w;
      float* v = k + T * kv_w;
      be.matmul(L.wq, s.xb, T, q);
      be.matmul(L.wk, s.xb, T, k);
      be.matmul(L.wv, s.xb, T, v);
      const size_t f = sizeof(float), pitch = size_t(qkv_w) * f;
      be.copy_2d(s.qkv, pitch, q, size_t(q_w) * f, size_t(q_w) * f, size_t(T));
      be.copy_2d(s.qkv + q_w, pitch, k, size_t(kv_w) * f, size_t(kv_w) * f, size_t(T));
      be.copy_2d(s.qkv + q_w + kv_w, pitch, v, size_t(kv_w) * f, size_t(kv_w) * f, size_t(T));
    }
    be.rope_and_store(s.qkv, qkv_w, T, n_heads_local_, n_kv_local_, hd, s.pos_win.data(), pos_sink,
                      cfg_.rope, s.q, s.q_sink, cache.k(l), cache.v(l), s.store.data());
    be.attention(s.q, pos_sink ? s.q_sink : s.q, T, n_heads_local_, n_kv_local_, hd, cache.k(l),
                 cache.v(l), s.spans.data(), s.att);
    be.matmul(L.wo, s.att, T, s.o);
    if (comm_.size() > 1) comm_.all_reduce_sum(s.o, size_t(T) * dim);
    be.add_rmsnorm(s.x, s.o, s.xb, L.ffn_norm, T, dim, cfg_.norm_eps);
    // Feed-forward block.
    if (L.w_gate_up.data) {  // rows gate|up
      be.matmul(L.w_gate_up, s.xb, T, s.gate_up);
      be.swiglu(s.ffn, s.gate_up, s.gate_up + ffn, T, ffn, 2 * ffn);
    } else {
      be.matmul(L.w_gate, s.xb, T, s.gate_up);
      be.matmul(L.w_up, s.xb, T, s.gate_up + T * ffn);
      be.swiglu(s.ffn, s.gate_up, s.gate_up + T * ffn, T, ffn, ffn);
    }
    be.matmul(L.w_down, s.ffn, T, s.o);
    if (comm_.size() > 1) comm_.all_reduce_sum(s.o, size_t(T) * dim);
    if (l + 1 < cfg_.n_layers)
      be.add_rmsnorm(s.x, s.o, s.xb, layers_[size_t(l + 1)].attn_norm, T, dim, cfg_.norm_eps);
    else
      be.add(s.x, s.o, T * dim);
  }
  // Output head, only for the rows whose logits were asked for.
  be.gather_rows(s.xo, dim, s.out_rows.data(), s.x, O);
  be.rmsnorm(s.xo, s.xo, output_norm_, O, dim, cfg_.norm_eps);
  be.matmul(output_, s.xo, O, s.logits);
}

void LlamaModel::gather_and_sample(int64_t O, float* logits, const SampleSpec* specs,
                                   int32_t* sampled) {
  Scratch& s = *s_;
  Backend& be = backend_;
  float* full = s.logits;
  if (comm_.size() > 1) {
    // Each rank computed a vocabulary slice; gather them and interleave them into full rows.
    comm_.all_gather(s.logits, s.gathered, size_t(O) * vocab_local_);
    full = s.full;
    for (int rk = 0; rk < comm_.size(); ++rk) {
      const int64_t begin = int64_t(rk) * vocab_local_;
      const int64_t n = std::min<int64_t>(vocab_local_, cfg_.vocab - begin);
      if (n > 0)
        be.copy_2d(full + begin, size_t(cfg_.vocab) * sizeof(float), s.gathered + rk * O * vocab_local_,
                   size_t(vocab_local_) * sizeof(float), size_t(n) * sizeof(float), size_t(O));
    }
  }
  if (logits) be.to_host(logits, full, size_t(O * cfg_.vocab) * sizeof(float));
  if (specs) be.sample(full, O, cfg_.vocab, specs, sampled);
}

}  // namespace sinkserve
