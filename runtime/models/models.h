// The block shapes of the families in the architecture table, one file each. A family differs
// from another of the same shape only in its table row (norm, activation, positions, biases,
// rotary style); a family with a new shape brings a new file here.
#pragma once
#include "runtime/arch.h"

namespace sinkserve {

// x += attn(n1(x)); x += mlp(n2(x)): llama, mistral, qwen2, mpt.
void sequential_layer(LayerPass& pass, const LayerWeights& w);
// x += attn(n1(x)) + mlp(n2(x)): gptneox, falcon, phi2, gptj; stablelm with
// use_parallel_residual. Sequential when the model's config says so.
void parallel_layer(LayerPass& pass, const LayerWeights& w);

}  // namespace sinkserve
