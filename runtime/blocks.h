// The shared blocks every family's layer is built from (runtime/models/*.cpp): norms, the
// attention block, the feed-forward block and the residual stream, each one or a few backend
// operations on the step's buffers. A block computes this rank's share: attention and MLP
// outputs are partial sums until reduce() adds them over the ranks.
#pragma once
#include <cstdint>

#include "cache/kv_cache.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "runtime/model_config.h"

namespace sinkserve {

struct NormWeights {
  const float* w = nullptr;
  const float* b = nullptr;  // LayerNorm bias, when the model has one
  explicit operator bool() const { return w != nullptr; }
};

// One layer's weights on this rank. Q|K|V and gate|up are stacked into one matrix each when
// their types agree (one pass over the weights, one launch); otherwise the stacked weight is
// empty and the parts are used one by one. Non-gated MLPs have only w_up.
struct LayerWeights {
  NormWeights attn_norm, attn_norm_2, ffn_norm;
  Weight wqkv, wq, wk, wv, wo;
  Weight w_gate_up, w_gate, w_up, w_down;
};

// This rank's share of the model's widths.
struct ShardShape {
  int n_heads = 0, n_kv = 0, ffn = 0;
};

// Activations of one step: [T][width] each, sized by the model for its largest step.
struct StepBuffers {
  float *x = nullptr, *xb = nullptr, *xb2 = nullptr, *qkv = nullptr, *parts = nullptr,
        *q = nullptr, *q_sink = nullptr, *att = nullptr, *o = nullptr, *o2 = nullptr,
        *gate_up = nullptr, *ffn = nullptr;
};

// Where the step's tokens go and what they see (host arrays of T entries).
struct StepPlan {
  int64_t T = 0;
  const int64_t* pos_win = nullptr;
  const int64_t* pos_sink = nullptr;  // null before the first eviction: the rotations coincide
  const int64_t* store = nullptr;
  const AttnSpan* spans = nullptr;
  const float* alibi_slopes = nullptr;  // this rank's heads, for ALiBi models
};

// out = norm(in) over `rows` rows of the model width, RMSNorm or LayerNorm as the family has it.
void apply_norm(Backend& be, const ModelConfig& c, const NormWeights& n, const float* in, float* out,
                int64_t rows);

class LayerPass {
 public:
  LayerPass(Backend& be, Communicator& comm, const ModelConfig& cfg, const ShardShape& shard,
            KVCache& cache, const StepBuffers& buf, const StepPlan& plan)
      : be_(be), comm_(comm), cfg_(cfg), sh_(shard), cache_(cache), b_(buf), plan_(plan) {}

  const ModelConfig& config() const { return cfg_; }
  const StepBuffers& buf() const { return b_; }

  // Enters layer `l`; `next` is the first norm of the layer after it (empty for the last).
  void begin_layer(int l, const NormWeights& next) {
    layer_ = l;
    next_ = next;
  }

  // out = norm(in) with the model's norm kind.
  void norm(const NormWeights& n, const float* in, float* out);
  // x += y, then out = norm(x): the residual add fused with the norm after it.
  void add_norm(const float* y, const NormWeights& n, float* out);
  // Attention of `in` (normed rows) into `out`, this rank's heads: projections, clamp (MPT),
  // rotary embedding and the cache write, attention over the sink cache, output projection.
  void attention(const LayerWeights& w, const float* in, float* out);
  // Feed-forward of `in` into `out`, this rank's columns.
  void mlp(const LayerWeights& w, const float* in, float* out);
  // y += z elementwise over a step's rows of the model width.
  void add(float* y, const float* z);
  // Sums a partial result over the ranks.
  void reduce(float* y);
  // Ends the layer: x += y, and xb = the next layer's first norm of x.
  void next(const float* y);

 private:
  int64_t rows() const { return plan_.T * cfg_.dim; }

  Backend& be_;
  Communicator& comm_;
  const ModelConfig& cfg_;
  const ShardShape& sh_;
  KVCache& cache_;
  const StepBuffers& b_;
  const StepPlan& plan_;
  int layer_ = 0;
  NormWeights next_;
};

}  // namespace sinkserve
