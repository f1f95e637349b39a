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

constexpr HfTensorName kLlamaHfLayer[] = {
    {AttnNorm, "input_layernorm.weight"},   {AttnQ, "self_attn.q_proj.weight"},
    {AttnQB, "self_attn.q_proj.bias"},      {AttnK, "self_attn.k_proj.weight"},
    {AttnKB, "self_attn.k_proj.bias"},      {AttnV, "self_attn.v_proj.weight"},
    {AttnVB, "self_attn.v_proj.bias"},      {AttnOut, "self_attn.o_proj.weight"},
    {AttnOutB, "self_attn.o_proj.bias"},    {FfnNorm, "post_attention_layernorm.weight"},
    {FfnGate, "mlp.gate_proj.weight"},      {FfnUp, "mlp.up_proj.weight"},
    {FfnDown, "mlp.down_proj.weight"},
};
constexpr std::string_view kRotaryBuffer[] = {"self_attn.rotary_emb.inv_freq"};
// Llama, Mistral and Qwen2 checkpoints rotate halves (rotate_half); llama.cpp's converter permutes
// llama's and mistral's q/k rows to adjacent pairs instead, so their GGUF rows rotate NORM-style.
constexpr HfLayout kLlamaHf{"model.layers.", kLlamaHfLayer, "model.embed_tokens.weight", "model.norm.weight", "",
                            "lm_head.weight", "", kRotaryBuffer, true, QkvLayout::Blocked, false, false, 0, {}};

// Pythia: q, k, v interleaved per head in query_key_value; the causal masks saved as buffers.
constexpr HfTensorName kNeoxHfLayer[] = {
    {AttnNorm, "input_layernorm.weight"},           {AttnNormB, "input_layernorm.bias"},
    {FfnNorm, "post_attention_layernorm.weight"},   {FfnNormB, "post_attention_layernorm.bias"},
    {AttnQkv, "attention.query_key_value.weight"},  {AttnQkvB, "attention.query_key_value.bias"},
    {AttnOut, "attention.dense.weight"},            {AttnOutB, "attention.dense.bias"},
    {FfnUp, "mlp.dense_h_to_4h.weight"},            {FfnUpB, "mlp.dense_h_to_4h.bias"},
    {FfnDown, "mlp.dense_4h_to_h.weight"},          {FfnDownB, "mlp.dense_4h_to_h.bias"},
};
constexpr std::string_view kNeoxBuffers[] = {"attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq"};
constexpr HfLayout kNeoxHf{"gpt_neox.layers.", kNeoxHfLayer, "gpt_neox.embed_in.weight",
                           "gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", "embed_out.weight", "",
                           kNeoxBuffers, true, QkvLayout::Grouped, false, true, 0, {}};

// Falcon: 7B names its one norm input_layernorm, 40B its two ln_attn and ln_mlp; query_key_value
// holds per KV group the group's query heads, then its key and value heads.
constexpr HfTensorName kFalconHfLayer[] = {
    {AttnNorm, "input_layernorm.weight"},  {AttnNormB, "input_layernorm.bias"},
    {AttnNorm, "ln_attn.weight"},          {AttnNormB, "ln_attn.bias"},
    {AttnNorm2, "ln_mlp.weight"},          {AttnNorm2B, "ln_mlp.bias"},
    {AttnQkv, "self_attention.query_key_value.weight"},
    {AttnOut, "self_attention.dense.weight"},
    {FfnUp, "mlp.dense_h_to_4h.weight"},   {FfnDown, "mlp.dense_4h_to_h.weight"},
};
constexpr std::string_view kFalconUnsupported[] = {"alibi", "!parallel_attn"};
constexpr HfLayout kFalconHf{"transformer.h.", kFalconHfLayer, "transformer.word_embeddings.weight",
                             "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight", "", {},
                             true, QkvLayout::Grouped, true, true, 2048, kFalconUnsupported};

constexpr HfTensorName kPhiHfLayer[] = {
    {AttnNorm, "input_layernorm.weight"}, {AttnNormB, "input_layernorm.bias"},
    {AttnQ, "self_attn.q_proj.weight"},   {AttnQB, "self_attn.q_proj.bias"},
    {AttnK, "self_attn.k_proj.weight"},   {AttnKB, "self_attn.k_proj.bias"},
    {AttnV, "self_attn.v_proj.weight"},   {AttnVB, "self_attn.v_proj.bias"},
    {AttnOut, "self_attn.dense.weight"},  {AttnOutB, "self_attn.dense.bias"},
    {FfnUp, "mlp.fc1.weight"},            {FfnUpB, "mlp.fc1.bias"},
    {FfnDown, "mlp.fc2.weight"},          {FfnDownB, "mlp.fc2.bias"},
};
constexpr std::string_view kQkNorm[] = {"qk_layernorm"};
constexpr HfLayout kPhiHf{"model.layers.", kPhiHfLayer, "model.embed_tokens.weight", "model.final_layernorm.weight",
                          "model.final_layernorm.bias", "lm_head.weight", "lm_head.bias", kRotaryBuffer, true,
                          QkvLayout::Blocked, false, true, 0, kQkNorm};

constexpr HfTensorName kStableLmHfLayer[] = {
    {AttnNorm, "input_layernorm.weight"},         {AttnNormB, "input_layernorm.bias"},
    {FfnNorm, "post_attention_layernorm.weight"}, {FfnNormB, "post_attention_layernorm.bias"},
    {AttnQ, "self_attn.q_proj.weight"},           {AttnQB, "self_attn.q_proj.bias"},
    {AttnK, "self_attn.k_proj.weight"},           {AttnKB, "self_attn.k_proj.bias"},
    {AttnV, "self_attn.v_proj.weight"},           {AttnVB, "self_attn.v_proj.bias"},
    {AttnOut, "self_attn.o_proj.weight"},         {FfnGate, "mlp.gate_proj.weight"},
    {FfnUp, "mlp.up_proj.weight"},                {FfnDown, "mlp.down_proj.weight"},
};
constexpr HfLayout kStableLmHf{"model.layers.", kStableLmHfLayer, "model.embed_tokens.weight", "model.norm.weight",
                               "model.norm.bias", "lm_head.weight", "", kRotaryBuffer, true, QkvLayout::Blocked,
                               false, false, 0, kQkNorm};

// GPT-J rotates adjacent pairs (rotate_every_two), as its GGUF does.
constexpr HfTensorName kGptjHfLayer[] = {
    {AttnNorm, "ln_1.weight"},           {AttnNormB, "ln_1.bias"},         {AttnQ, "attn.q_proj.weight"},
    {AttnK, "attn.k_proj.weight"},       {AttnV, "attn.v_proj.weight"},    {AttnOut, "attn.out_proj.weight"},
    {FfnUp, "mlp.fc_in.weight"},         {FfnUpB, "mlp.fc_in.bias"},       {FfnDown, "mlp.fc_out.weight"},
    {FfnDownB, "mlp.fc_out.bias"},
};
constexpr std::string_view kGptjBuffers[] = {"attn.bias", "attn.masked_bias"};
constexpr HfLayout kGptjHf{"transformer.h.", kGptjHfLayer, "transformer.wte.weight", "transformer.ln_f.weight",
                           "transformer.ln_f.bias", "lm_head.weight", "lm_head.bias", kGptjBuffers, false,
                           QkvLayout::Blocked, false, true, 0, {}};

// name, norm, activation, gated, positions, neox, parallel, parallel key, required, optional,
// output_norm bias, output bias, layer, Hugging Face model types and layout
constexpr std::array kArchs = {
    ArchSpec{"llama", NormKind::Rms, Activation::Silu, true, Positions::Rope, false, false, false,
             kLlamaRequired, kQkvForms | kQkvBiases | bit(AttnOutB), false, false, sequential_layer, "llama", &kLlamaHf},
    ArchSpec{"mistral", NormKind::Rms, Activation::Silu, true, Positions::Rope, false, false, false,
             kLlamaRequired, kQkvForms, false, false, sequential_layer, "mistral", &kLlamaHf},
    ArchSpec{"qwen2", NormKind::Rms, Activation::Silu, true, Positions::Rope, true, false, false,
             kLlamaRequired | kQkvBiases, kQkvForms, false, false, sequential_layer, "qwen2", &kLlamaHf},
    // Pythia: partial rotary, fused QKV, parallel residual with two norms.
    ArchSpec{"gptneox", NormKind::Layer, Activation::GeluErf, false, Positions::Rope, true, true, true,
             kLayerNorms | bits({AttnOut, AttnOutB, FfnNorm, FfnNormB, FfnUp, FfnUpB, FfnDown, FfnDownB}),
             kQkvForms | bit(AttnQkvB), true, false, parallel_layer, "gpt_neox", &kNeoxHf},
    // 7B: one norm feeds attention and MLP, one KV head; 40B: attn_norm_2 for the MLP, grouped KV.
    ArchSpec{"falcon", NormKind::Layer, Activation::GeluErf, false, Positions::Rope, true, true, false,
             kLayerNorms | bits({AttnOut, FfnUp, FfnDown}), kQkvForms | bits({AttnNorm2, AttnNorm2B}),
             true, false, parallel_layer, "falcon RefinedWeb RefinedWebModel", &kFalconHf},
    // ALiBi, biases optional (MPT-7B has none), no output matrix of its own.
    ArchSpec{"mpt", NormKind::Layer, Activation::GeluErf, false, Positions::Alibi, false, false, false,
             bits({AttnNorm, AttnOut, FfnNorm, FfnUp, FfnDown}),
             kQkvForms | bits({AttnNormB, AttnQkvB, AttnOutB, FfnNormB, FfnUpB, FfnDownB}), false, false,
             sequential_layer, "", nullptr},
    ArchSpec{"phi2", NormKind::Layer, Activation::GeluTanh, false, Positions::Rope, true, true, false,
             kLayerNorms | bits({AttnOut, AttnOutB, FfnUp, FfnUpB, FfnDown, FfnDownB}),
             kQkvForms | kQkvBiases | bit(AttnQkvB), true, true, parallel_layer, "phi", &kPhiHf},
    ArchSpec{"stablelm", NormKind::Layer, Activation::Silu, true, Positions::Rope, true, false, true,
             kLayerNorms | bits({AttnOut, FfnGate, FfnUp, FfnDown}), kQkvForms | kQkvBiases | bits({FfnNorm, FfnNormB}),
             true, false, parallel_layer, "stablelm", &kStableLmHf},
    // Interleaved partial rotary, one norm, parallel residual.
    ArchSpec{"gptj", NormKind::Layer, Activation::GeluTanh, false, Positions::Rope, false, true, false,
             kLayerNorms | bits({AttnOut, FfnUp, FfnUpB, FfnDown, FfnDownB}), kQkvForms, true, true,
             parallel_layer, "gptj", &kGptjHf},
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

const ArchSpec* find_hf_arch(std::string_view model_type) {
  for (const ArchSpec& a : kArchs) {
    for (std::string_view types = a.hf_model_types; !types.empty();) {
      const size_t sp = types.find(' ');
      if (types.substr(0, sp) == model_type) return &a;
      types = sp == std::string_view::npos ? std::string_view() : types.substr(sp + 1);
    }
  }
  return nullptr;
}

std::string supported_hf_model_types() {
  std::string s;
  for (const ArchSpec& a : kArchs) {
    if (a.hf_model_types.empty()) continue;
    if (!s.empty()) s += ", ";
    for (char c : a.hf_model_types) s += c == ' ' ? std::string(", ") : std::string(1, c);
  }
  return s;
}

std::string supported_archs() {
  std::string s;
  for (const ArchSpec& a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a.name);
  return s;
}

}  // namespace sinkserve
