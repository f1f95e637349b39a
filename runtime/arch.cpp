#include "runtime/arch.h"

#include <array>

#include "runtime/models/models.h"

namespace sinkserve {

namespace {

using enum LayerTensor;

constexpr uint32_t bits(std::initializer_list<LayerTensor> ts) {
  uint32_t b = 0;
  for (LayerTensor t : ts) b |= bit(t);
  return b;
}

// Q, K and V come fused (attn_qkv) or apart (attn_q, attn_k, attn_v); the loader takes either.
constexpr uint32_t kQkvForms = bits({AttnQkv, AttnQ, AttnK, AttnV});

constexpr uint32_t kLlamaRequired = bits({AttnNorm, AttnOut, FfnNorm, FfnGate, FfnUp, FfnDown});
constexpr uint32_t kQkvBiases = bits({AttnQB, AttnKB, AttnVB});
constexpr uint32_t kLayerNorms = bits({AttnNorm, AttnNormB});

// name, norm, activation, gated, positions, neox, parallel, parallel key, required, optional,
// output_norm bias, output bias, layer
constexpr std::array kArchs = {
    ArchSpec{"llama", NormKind::Rms, Activation::Silu, true, Positions::Rope, false, false, false,
             kLlamaRequired, kQkvForms | kQkvBiases | bit(AttnOutB), false, false, sequential_layer},
    ArchSpec{"mistral", NormKind::Rms, Activation::Silu, true, Positions::Rope, false, false, false,
             kLlamaRequired, kQkvForms, false, false, sequential_layer},
    ArchSpec{"qwen2", NormKind::Rms, Activation::Silu, true, Positions::Rope, true, false, false,
             kLlamaRequired | kQkvBiases, kQkvForms, false, false, sequential_layer},
    // Pythia: partial rotary, fused QKV, parallel residual with two norms.
    ArchSpec{"gptneox", NormKind::Layer, Activation::GeluErf, false, Positions::Rope, true, true, true,
             kLayerNorms | bits({AttnOut, AttnOutB, FfnNorm, FfnNormB, FfnUp, FfnUpB, FfnDown, FfnDownB}),
             kQkvForms | bit(AttnQkvB), true, false, parallel_layer},
    // 7B: one norm feeds attention and MLP, one KV head; 40B: attn_norm_2 for the MLP, grouped KV.
    ArchSpec{"falcon", NormKind::Layer, Activation::GeluErf, false, Positions::Rope, true, true, false,
             kLayerNorms | bits({AttnOut, FfnUp, FfnDown}), kQkvForms | bits({AttnNorm2, AttnNorm2B}),
             true, false, parallel_layer},
    // ALiBi, biases optional (MPT-7B has none), no output matrix of its own.
    ArchSpec{"mpt", NormKind::Layer, Activation::GeluErf, false, Positions::Alibi, false, false, false,
             bits({AttnNorm, AttnOut, FfnNorm, FfnUp, FfnDown}),
             kQkvForms | bits({AttnNormB, AttnQkvB, AttnOutB, FfnNormB, FfnUpB, FfnDownB}), false, false,
             sequential_layer},
    ArchSpec{"phi2", NormKind::Layer, Activation::GeluTanh, false, Positions::Rope, true, true, false,
             kLayerNorms | bits({AttnOut, AttnOutB, FfnUp, FfnUpB, FfnDown, FfnDownB}),
             kQkvForms | kQkvBiases | bit(AttnQkvB), true, true, parallel_layer},
    ArchSpec{"stablelm", NormKind::Layer, Activation::Silu, true, Positions::Rope, true, false, true,
             kLayerNorms | bits({AttnOut, FfnGate, FfnUp, FfnDown}), kQkvForms | kQkvBiases | bits({FfnNorm, FfnNormB}),
             true, false, parallel_layer},
    // Interleaved partial rotary, one norm, parallel residual.
    ArchSpec{"gptj", NormKind::Layer, Activation::GeluTanh, false, Positions::Rope, false, true, false,
             kLayerNorms | bits({AttnOut, FfnUp, FfnUpB, FfnDown, FfnDownB}), kQkvForms, true, true,
             parallel_layer},
};

constexpr std::array<std::string_view, size_t(LayerTensor::Count)> kTensorNames = {
    "attn_norm.weight", "attn_norm.bias", "attn_norm_2.weight", "attn_norm_2.bias",
    "attn_qkv.weight",  "attn_qkv.bias",  "attn_q.weight",      "attn_q.bias",
    "attn_k.weight",    "attn_k.bias",    "attn_v.weight",      "attn_v.bias",
    "attn_output.weight", "attn_output.bias", "ffn_norm.weight", "ffn_norm.bias",
    "ffn_gate.weight",  "ffn_up.weight",  "ffn_up.bias",        "ffn_down.weight",
    "ffn_down.bias"};

}  // namespace

std::string_view layer_tensor_name(LayerTensor t) { return kTensorNames[size_t(t)]; }

const ArchSpec* find_arch(std::string_view name) {
  for (const ArchSpec& a : kArchs)
    if (a.name == name) return &a;
  return nullptr;
}

std::string supported_archs() {
  std::string s;
  for (const ArchSpec& a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a.name);
  return s;
}

}  // namespace sinkserve
