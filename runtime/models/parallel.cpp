// The parallel block of GPT-J, GPT-NeoX, Falcon and Phi-2: attention and MLP both read the block
// input, x += attn(norm(x)) + mlp(norm'(x)). The MLP's norm is its own where the model has one
// (Falcon-40B's attn_norm_2, GPT-NeoX's ffn_norm), else the attention's (GPT-J, Phi-2, Falcon-7B,
// StableLM). Both branches are partial sums on each rank, so one all-reduce carries them.
#include "runtime/blocks.h"
#include "runtime/models/models.h"

namespace sinkserve {

void parallel_layer(LayerPass& p, const LayerWeights& w) {
  if (!p.config().parallel_residual) return sequential_layer(p, w);
  const StepBuffers& b = p.buf();
  const float* mlp_in = b.xb;
  if (const NormWeights& n = w.attn_norm_2 ? w.attn_norm_2 : w.ffn_norm) {
    p.norm(n, b.x, b.xb2);
    mlp_in = b.xb2;
  }
  p.attention(w, b.xb, b.o);
  p.mlp(w, mlp_in, b.o2);
  p.add(b.o, b.o2);
  p.reduce(b.o);
  p.next(b.o);
}

}  // namespace sinkserve
