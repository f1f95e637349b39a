// Hyper-parameters of a llama-family model, read from GGUF metadata ({arch}.* keys).
#pragma once
#include <cstdint>
#include <string>

#include "kernels/backend.h"

namespace sinkserve {

class GGUFFile;

struct ModelConfig {
  std::string arch;  // llama, mistral or qwen2
  std::string name;  // general.name, when present
  int n_layers = 0;
  int dim = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int ffn = 0;
  int vocab = 0;
  float norm_eps = 1e-5f;
  RopeParams rope;
  int64_t ctx_train = 0;       // {arch}.context_length
  int64_t sliding_window = 0;  // mistral's, when present (noted, not enforced: the cache policy rules)
  bool tied_output = false;    // no output.weight: the embedding doubles as the output head
  bool qkv_bias = false;       // qwen2
};

// Reads and checks the hyper-parameters; throws GGUFError naming the missing or absurd key.
ModelConfig read_model_config(const GGUFFile& f);

}  // namespace sinkserve
