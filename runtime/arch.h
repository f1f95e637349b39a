// The architecture table: everything sinkserve knows about a model family, in one row. Adding a
// family means one row here and one short layer function in runtime/models/ built from the shared
// blocks of runtime/blocks.h; the loader, the synth writer and the checks read only this table.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "kernels/backend.h"

namespace sinkserve {

struct LayerWeights;
class LayerPass;
// A family's transformer block: reads the pass's residual stream (and its first norm, already
// applied), leaves the stream for the next layer.
using LayerFn = void (*)(LayerPass& pass, const LayerWeights& w);

enum class NormKind : uint8_t { Rms, Layer };  // RMSNorm, or LayerNorm with bias
enum class Positions : uint8_t { Rope, Alibi };

// Per-layer tensors, named blk.N.<name> as llama.cpp's converter writes them.
enum class LayerTensor : uint8_t {
  AttnNorm, AttnNormB, AttnNorm2, AttnNorm2B, AttnQkv, AttnQkvB, AttnQ, AttnQB, AttnK, AttnKB,
  AttnV, AttnVB, AttnOut, AttnOutB, FfnNorm, FfnNormB, FfnGate, FfnUp, FfnUpB, FfnDown, FfnDownB,
  Count
};
std::string_view layer_tensor_name(LayerTensor t);  // e.g. "attn_qkv.bias"
inline constexpr uint32_t bit(LayerTensor t) { return 1u << unsigned(t); }

// Rows of a fused QKV tensor: GGUF files hold all query heads, then all key heads, then all value
// heads (llama.cpp's converter reorders them so); GPT-NeoX and Falcon checkpoints hold, per KV
// group, the group's query heads, then its key head, then its value head.
enum class QkvLayout : uint8_t { Blocked, Grouped };

// A layer tensor's name in a Hugging Face checkpoint, after the layer's prefix ("model.layers.N.").
struct HfTensorName {
  LayerTensor t;
  std::string_view name;
};

// What a family's Hugging Face checkpoints call its tensors and how they lay them out
// (runtime/hf_checkpoint.cpp turns them into the GGUF view the loader reads).
struct HfLayout {
  std::string_view layers;  // prefix of layer N's tensors, before N: "model.layers."
  std::span<const HfTensorName> layer;
  std::string_view embd, output_norm, output_norm_bias, output, output_bias;
  // Layer tensors that hold no weights (buffers saved with the module), by their name after the
  // layer prefix: skipped, where any other unknown tensor is refused.
  std::span<const std::string_view> buffers;
  bool rope_neox;      // rotation of q/k rows as stored (GGUF's differs where llama.cpp permutes them)
  QkvLayout qkv;       // of a fused QKV tensor
  bool tied_default;   // tie_word_embeddings when config.json does not say
  bool parallel_default;  // use_parallel_residual when config.json does not say
  int64_t ctx_default;    // max_position_embeddings when config.json does not say; 0: required
  // config.json flags for what the engine does not compute: "key" refuses a true value, "!key"
  // a false one (Falcon without parallel_attn).
  std::span<const std::string_view> unsupported;
};

struct ArchSpec {
  std::string_view name;
  NormKind norm;
  Activation act;
  bool gated;          // feed-forward act(gate) * up (SwiGLU, GeGLU); else act(up)
  Positions positions;
  bool rope_neox;      // rotate pairs (i, i + d/2) rather than (2i, 2i + 1)
  // Parallel residual x + attn(n1 x) + mlp(n2 x) rather than two sequential sub-blocks; a family
  // whose converter writes `{arch}.use_parallel_residual` takes that key's value instead.
  bool parallel;
  bool parallel_key;
  uint32_t required;   // LayerTensor bits every layer must have
  uint32_t optional;   // bits a layer may have; any other blk.N tensor is refused
  // Global tensors besides token_embd.weight / output_norm.weight / output.weight.
  bool output_norm_bias;
  bool output_bias;
  LayerFn layer;
  // config.json model_type values of this family's Hugging Face checkpoints, space-separated, and
  // their layout; null where sinkserve reads the family from GGUF only.
  std::string_view hf_model_types;
  const HfLayout* hf;
};

// The row for a general.architecture value, or null.
const ArchSpec* find_arch(std::string_view name);
// The row whose Hugging Face checkpoints have this config.json model_type, or null.
const ArchSpec* find_hf_arch(std::string_view model_type);
std::string supported_hf_model_types();  // "llama, mistral, ..." for error messages
std::string supported_archs();  // "llama, mistral, ..." for error messages

}  // namespace sinkserve
