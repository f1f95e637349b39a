#include "runtime/llama_model.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>

#include "kernels/block_split.h"
#include "runtime/gguf.h"

namespace sinkserve {

// Activations of one step, sized for the largest step seen so far.
struct LlamaModel::Scratch {
  int64_t cap_tok = 0, cap_out = 0;
  StepBuffers buf;
  float *xo = nullptr, *logits = nullptr, *gathered = nullptr, *full = nullptr;
  std::vector<float*> all() {
    return {buf.x, buf.xb, buf.xb2, buf.qkv, buf.parts, buf.q, buf.q_sink, buf.att, buf.o, buf.o2,
            buf.gate_up, buf.ffn, xo, logits, gathered, full};
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

// The LayerTensor bits of the tensors named blk.<l>.*; a tensor the family does not know is an
// error naming it (a silently ignored tensor would compute a different model).
uint32_t layer_tensors(const GGUFFile& f, const ModelConfig& c, int l) {
  const std::string prefix = "blk." + std::to_string(l) + ".";
  const uint32_t allowed = c.spec->required | c.spec->optional;
  uint32_t have = 0;
  for (const GGUFTensorInfo& t : f.tensors()) {
    if (t.name.rfind(prefix, 0) != 0) continue;
    const std::string_view rest = std::string_view(t.name).substr(prefix.size());
    uint32_t b = 0;
    for (unsigned i = 0; i < unsigned(LayerTensor::Count); ++i)
      if (layer_tensor_name(LayerTensor(i)) == rest) b = bit(LayerTensor(i));
    if (!(b & allowed))
      throw GGUFError(f.path() + ": tensor '" + t.name + "' is not part of a " + c.arch + " layer");
    have |= b;
  }
  for (unsigned i = 0; i < unsigned(LayerTensor::Count); ++i)
    if ((c.spec->required & bit(LayerTensor(i))) && !(have & bit(LayerTensor(i))))
      throw GGUFError(f.path() + ": tensor '" + prefix + std::string(layer_tensor_name(LayerTensor(i))) +
                      "' not found (required by " + c.arch + ")");
  using enum LayerTensor;
  const uint32_t apart = bit(AttnQ) | bit(AttnK) | bit(AttnV);
  if (!(have & bit(AttnQkv)) && (have & apart) != apart)
    throw GGUFError(f.path() + ": tensor '" + prefix + "attn_qkv.weight' not found (nor all of attn_q, attn_k, attn_v)");
  return have;
}

}  // namespace

LlamaModel::LlamaModel(const GGUFFile& f, Backend& backend, Communicator& comm)
    : cfg_(read_model_config(f)), backend_(backend), comm_(comm), s_(std::make_unique<Scratch>()) {
  const int R = comm.size(), r = comm.rank();
  const int dim = cfg_.dim;
  if (cfg_.n_heads % R) throw std::runtime_error(shard_error(f, "attention heads", cfg_.n_heads, R));
  shard_.n_heads = cfg_.n_heads / R;
  split_ffn(f, R, r);
  // KV heads are split like the query heads when they divide; otherwise every rank keeps the one
  // KV head its query heads share (replication), which needs ranks to be a multiple of KV heads.
  const KvHeadShare kv = kv_head_share(cfg_.n_heads, cfg_.n_kv_heads, R, r);
  if (kv.count == 0)
    throw std::runtime_error(f.path() + ": cannot shard " + std::to_string(cfg_.n_kv_heads) +
                             " KV heads over " + std::to_string(R) +
                             " ranks: one must be a multiple of the other");
  shard_.n_kv = kv.count;
  const int kv_begin = kv.first;
  vocab_local_ = (cfg_.vocab + R - 1) / R;
  vocab_begin_ = r * vocab_local_;
  const int vocab_rows = std::max(0, std::min(cfg_.vocab - vocab_begin_, vocab_local_));
  if (cfg_.spec->positions == Positions::Alibi)
    alibi_ = alibi_slopes(cfg_.n_heads, cfg_.alibi_bias_max, r * shard_.n_heads, shard_.n_heads);

  ShardLoader ld(f, backend_, r, R, owned_);
  tok_embd_ = ld.whole("token_embd.weight", cfg_.vocab, dim);
  layers_.reserve(size_t(cfg_.n_layers));
  for (int l = 0; l < cfg_.n_layers; ++l) layers_.push_back(load_layer(ld, l, kv_begin));
  const bool layer_norm = cfg_.spec->norm == NormKind::Layer;
  output_norm_.w = ld.vector("output_norm.weight", dim);
  if (layer_norm) output_norm_.b = ld.vector("output_norm.bias", dim, !cfg_.spec->output_norm_bias);
  const bool output_bias = f.find_tensor("output.bias") != nullptr;
  if (cfg_.spec->output_bias && !output_bias && !cfg_.tied_output)
    throw GGUFError(f.path() + ": tensor 'output.bias' not found (required by " + cfg_.arch + ")");
  output_ = ld.slice(dim, {cfg_.tied_output ? "token_embd.weight" : "output.weight",
                           output_bias ? "output.bias" : "", cfg_.vocab, vocab_begin_, vocab_rows});
  weight_bytes_ = ld.bytes();
  // Every matrix above is read once per forward step; the embedding table only row by row.
  streamed_bytes_ = weight_bytes_;
  const int64_t embd = int64_t(f.tensor("token_embd.weight").bytes);
  weight_bytes_ += cfg_.tied_output ? embd - dtype_row_bytes(output_.type, dim) * vocab_rows : embd;
  // The backends copy what they compute with (CPU: into huge pages; CUDA: to the device), so the
  // mapped file no longer needs to occupy this rank's memory.
  f.drop_resident_pages();
}

void LlamaModel::split_ffn(const GGUFFile& f, int R, int r) {
  // Each rank's ffn_down columns must be whole blocks of its type (K-quants: 256 values), so the
  // width splits on the largest block any layer's ffn_down uses - unevenly when the blocks do not
  // divide by the ranks (11008 over 2 ranks: 5632 + 5376). The all-reduce sums the same terms.
  int64_t block = 1;
  DType block_type = DType::F32;
  for (int l = 0; l < cfg_.n_layers; ++l)
    if (const GGUFTensorInfo* t = f.find_tensor("blk." + std::to_string(l) + ".ffn_down.weight"))
      if (dtype_block_values(t->type) > block) {
        block = dtype_block_values(t->type);
        block_type = t->type;
      }
  if (cfg_.ffn % block || cfg_.ffn / block < R)
    throw std::runtime_error(f.path() + ": cannot shard the feed-forward width " + std::to_string(cfg_.ffn) +
                             " over " + std::to_string(R) + " ranks in whole " + std::string(dtype_name(block_type)) +
                             " blocks of " + std::to_string(block) + " values");
  const std::vector<int64_t> sizes = block_aligned_split(cfg_.ffn, block, R);
  shard_.ffn = int(sizes[size_t(r)]);
  ffn_begin_ = std::accumulate(sizes.begin(), sizes.begin() + r, int64_t(0));
}

LayerWeights LlamaModel::load_layer(ShardLoader& ld, int l, int kv_begin) {
  using enum LayerTensor;
  const GGUFFile& f = ld.file();
  const uint32_t have = layer_tensors(f, cfg_, l);
  const std::string p = "blk." + std::to_string(l) + ".";
  auto name = [&](LayerTensor t) { return (have & bit(t)) ? p + std::string(layer_tensor_name(t)) : std::string(); };
  const int64_t hd = cfg_.head_dim, dim = cfg_.dim, r = ld.rank();
  const int64_t q_dim = int64_t(cfg_.n_heads) * hd, kv_dim = int64_t(cfg_.n_kv_heads) * hd;
  const int64_t q0 = r * shard_.n_heads * hd, q_rows = shard_.n_heads * hd;
  const int64_t kv0 = int64_t(kv_begin) * hd, kv_rows = shard_.n_kv * hd;
  auto norm = [&](LayerTensor w, LayerTensor b) {
    NormWeights n;
    if (!(have & bit(w))) return n;
    n.w = ld.vector(name(w), dim);
    if (have & bit(b)) n.b = ld.vector(name(b), dim);
    return n;
  };

  LayerWeights L;
  L.attn_norm = norm(AttnNorm, AttnNormB);
  L.attn_norm_2 = norm(AttnNorm2, AttnNorm2B);
  L.ffn_norm = norm(FfnNorm, FfnNormB);
  // QKV-parallel: this rank's query heads and KV heads, from the fused q|k|v rows or the three
  // tensors.
  std::vector<RowSlice> qkv;
  if (have & bit(AttnQkv)) {
    const std::string w = name(AttnQkv), b = name(AttnQkvB);
    const int64_t total = q_dim + 2 * kv_dim;
    if (cfg_.qkv_layout == QkvLayout::Blocked) {
      qkv = {{w, b, total, q0, q_rows}, {w, b, total, q_dim + kv0, kv_rows}, {w, b, total, q_dim + kv_dim + kv0, kv_rows}};
    } else {
      // Group g holds its query heads, its key head and its value head: this rank's query heads,
      // then their key and value heads, become row ranges of those groups, stacked q | k | v.
      const int64_t per_kv = cfg_.n_heads / cfg_.n_kv_heads, group = (per_kv + 2) * hd;
      const int64_t h0 = r * shard_.n_heads, h1 = h0 + shard_.n_heads;
      for (int64_t h = h0; h < h1;) {
        const int64_t g = h / per_kv, end = std::min(h1, (g + 1) * per_kv);
        qkv.push_back({w, b, total, g * group + (h - g * per_kv) * hd, (end - h) * hd});
        h = end;
      }
      for (int64_t k = 0; k < 2; ++k)
        for (int64_t g = kv_begin; g < kv_begin + shard_.n_kv; ++g)
          qkv.push_back({w, b, total, g * group + (per_kv + k) * hd, hd});
    }
  } else {
    qkv = {{name(AttnQ), name(AttnQB), q_dim, q0, q_rows},
           {name(AttnK), name(AttnKB), kv_dim, kv0, kv_rows},
           {name(AttnV), name(AttnVB), kv_dim, kv0, kv_rows}};
  }
  L.wqkv = ld.stacked(dim, qkv);
  if (!L.wqkv.data) {
    L.wq = ld.slice(dim, qkv[0]);
    L.wk = ld.slice(dim, qkv[1]);
    L.wv = ld.slice(dim, qkv[2]);
  }
  L.wo = ld.row_parallel(name(AttnOut), name(AttnOutB), q_dim, dim, q0, q_rows);
  // Column-parallel gate|up (or up alone), row-parallel down.
  const int64_t f0 = ffn_begin_, f_rows = shard_.ffn;
  const RowSlice up{name(FfnUp), name(FfnUpB), cfg_.ffn, f0, f_rows};
  if (cfg_.spec->gated) {
    const std::vector<RowSlice> gate_up = {{name(FfnGate), "", cfg_.ffn, f0, f_rows}, up};
    L.w_gate_up = ld.stacked(dim, gate_up);
    if (!L.w_gate_up.data) {
      L.w_gate = ld.slice(dim, gate_up[0]);
      L.w_up = ld.slice(dim, gate_up[1]);
    }
  } else {
    L.w_up = ld.slice(dim, up);
  }
  L.w_down = ld.row_parallel(name(FfnDown), name(FfnDownB), cfg_.ffn, dim, f0, f_rows);
  return L;
}

LlamaModel::~LlamaModel() {
  for (float* p : s_->all()) if (p) backend_.release(p);
  for (void* p : owned_) backend_.release(p);
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
  const int64_t T = s.cap_tok, O = s.cap_out, hd = cfg_.head_dim, ffn = shard_.ffn;
  StepBuffers& b = s.buf;
  b.x = a(T, cfg_.dim);
  b.xb = a(T, cfg_.dim);
  b.xb2 = a(T, cfg_.dim);
  const int64_t qkv_w = (shard_.n_heads + 2 * shard_.n_kv) * hd;
  b.qkv = a(T, qkv_w);
  b.parts = a(T, qkv_w);
  b.q = a(T, shard_.n_heads * hd);
  b.q_sink = a(T, shard_.n_heads * hd);
  b.att = a(T, shard_.n_heads * hd);
  b.o = a(T, cfg_.dim);
  b.o2 = a(T, cfg_.dim);
  b.gate_up = a(T, 2 * ffn);
  b.ffn = a(T, ffn);
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
  // Whether any query sees its sinks from a shifted position; never for unrotated (ALiBi) models.
  bool shifted = false;
  const bool rotates = cfg_.rope.rotated(cfg_.head_dim) > 0;
  for (size_t i = 0; i < n; ++i) {
    s.store[i] = s.plan[i].store_row;
    s.pos_win[i] = s.plan[i].pos_win;
    s.pos_sink[i] = s.plan[i].pos_sink;
    s.spans[i] = s.plan[i].span;
    shifted |= rotates && s.pos_sink[i] != s.pos_win[i];
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
  const StepBuffers& b = s.buf;
  const StepPlan plan{T, s.pos_win.data(), shifted ? s.pos_sink.data() : nullptr, s.store.data(),
                      s.spans.data(), alibi_.empty() ? nullptr : alibi_.data()};
  LayerPass pass(backend_, comm_, cfg_, shard_, cache, b, plan);
  backend_.embed(tok_embd_, s.tokens.data(), T, b.x);
  // Each layer ends with the residual add fused with the next layer's first norm (next()); so
  // the first norm stands alone.
  pass.norm(layers_[0].attn_norm, b.x, b.xb);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const bool last = l + 1 == cfg_.n_layers;
    pass.begin_layer(l, last ? NormWeights{} : layers_[size_t(l + 1)].attn_norm);
    cfg_.spec->layer(pass, layers_[size_t(l)]);
  }
  // Output head, only for the rows whose logits were asked for.
  backend_.gather_rows(s.xo, cfg_.dim, s.out_rows.data(), b.x, O);
  apply_norm(backend_, cfg_, output_norm_, s.xo, s.xo, O);
  backend_.matmul(output_, s.xo, O, s.logits);
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
