// The sequential block of Llama and most decoders since:
//   x += attn(norm(x)); x += mlp(norm'(x))
// Each residual add is fused with the norm after it; the next layer's first norm is applied by
// next(), so a layer starts with its normed input in xb.
#include "runtime/blocks.h"
#include "runtime/models/models.h"

namespace sinkserve {

void sequential_layer(LayerPass& p, const LayerWeights& w) {
  const StepBuffers& b = p.buf();
  p.attention(w, b.xb, b.o);
  p.reduce(b.o);
  p.add_norm(b.o, w.ffn_norm, b.xb);
  p.mlp(w, b.xb, b.o);
  p.reduce(b.o);
  p.next(b.o);
}

}  // namespace sinkserve
