// Hyper-parameters of a model, read from GGUF metadata ({arch}.* keys) as its row of the
// architecture table (runtime/arch.h) says.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "runtime/arch.h"

namespace sinkserve {

class GGUFFile;

struct ModelConfig {
  std::string arch;  // general.architecture
  const ArchSpec* spec = nullptr;
  std::string name;  // general.name, when present
  int n_layers = 0;
  int dim = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int ffn = 0;
  int vocab = 0;
  float norm_eps = 1e-5f;
  RopeParams rope;  // rope.n_rot = 0 for ALiBi models
  QkvLayout qkv_layout = QkvLayout::Blocked;  // rows of a fused attn_qkv, by the file's format
  bool parallel_residual = false;
  float clamp_kqv = 0;       // MPT: q, k, v clamped to [-c, c]; 0 = none
  float alibi_bias_max = 0;  // ALiBi models: the slopes' max_alibi_bias
  int64_t ctx_train = 0;       // {arch}.context_length
  int64_t sliding_window = 0;  // mistral's, when present (noted, not enforced: the cache policy rules)
  bool tied_output = false;    // no output.weight: the embedding doubles as the output head
};

// Bytes one cached token takes with rows stored as t, over all ranks: its K and V rows in every
// layer (the row must divide into t's blocks for the bytes to be exact).
int64_t kv_token_bytes(const ModelConfig& c, DType t);

// ALiBi slopes of heads [first, first + n) of n_heads, with max bias b: for the largest power of
// two n2 <= n_heads, head h < n2 gets 2^(-b (h + 1) / n2) and the others interleave the slopes of
// 2 n2 heads, 2^(-b (2 (h - n2) + 1) / (2 n2)) (Press et al., as MPT and llama.cpp do).
std::vector<float> alibi_slopes(int n_heads, float bias_max, int first, int n);

// Which KV heads rank r of R holds: [first, first + count). R dividing the KV heads gives each rank
// an equal contiguous share; the KV heads dividing R gives each rank the one KV head its query
// heads (an equal share of n_heads) attend with, replicated over R / n_kv_heads ranks. count is 0
// when neither divides.
struct KvHeadShare {
  int first = 0, count = 0;
};
KvHeadShare kv_head_share(int n_heads, int n_kv_heads, int R, int r);

// Reads and checks the hyper-parameters; throws GGUFError naming the missing or absurd key.
ModelConfig read_model_config(const GGUFFile& f);

}  // namespace sinkserve
