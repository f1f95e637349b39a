// Writing a quantized GGUF from an F32/F16/BF16 one (`sinkserve quantize`), choosing each
// tensor's type the way llama-quantize does: a base type, raised for the tensors that cost the
// most quality when coarse (the output head, attn_v, ffn_down, attn_output) in the K-quant
// mixtures, with a fallback for rows that are not whole blocks. Norms and biases stay F32.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/dtype.h"

namespace sinkserve {

// A target of `sinkserve quantize`: a pure type (every matrix `base`, e.g. Q4_0) or a K-quant
// mixture (Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q2_K). file_type is llama.cpp's general.file_type.
struct QuantTarget {
  std::string name;
  DType base;
  uint32_t file_type;
};

std::optional<QuantTarget> parse_quant_target(std::string_view name);
std::vector<std::string> quant_target_names();

// What the type rules need to know about a matrix: its GGUF name and row length, the index of its
// transformer block (-1 outside the blocks), the number of blocks, the query heads per KV head,
// and whether the file has an output head of its own (without one, token_embd doubles as it).
struct TensorSlot {
  std::string name;
  int64_t cols = 0;
  int layer = -1;
  int n_layers = 1;
  int n_gqa = 1;
  bool has_output = true;
};

// The type a 2-D weight matrix gets under `target` (`pure`: the base type for all matrices,
// fallbacks aside).
DType quant_type_for(const QuantTarget& target, const TensorSlot& slot, bool pure);

struct QuantizeOptions {
  QuantTarget target;
  bool pure = false;
  int threads = 0;  // 0: one per core
};

struct QuantizedTensor {
  std::string name;
  DType from, to;
  std::vector<int64_t> ne;
  uint64_t bytes_in, bytes_out;
};

// Quantizes `in` into `out`, metadata copied (general.file_type and general.quantization_version
// set). `on_tensor` is called as each tensor is written. Throws GGUFError for an unusable input
// (a type other than F32/F16/BF16 among the matrices), std::runtime_error for I/O errors.
void quantize_gguf(const std::string& in, const std::string& out, const QuantizeOptions& opt,
                   const std::function<void(const QuantizedTensor&)>& on_tensor = {});

}  // namespace sinkserve
