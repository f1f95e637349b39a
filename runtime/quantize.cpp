#include "runtime/quantize.h"

#include <algorithm>
#include <thread>

#include "kernels/type_traits.h"
#include "runtime/gguf.h"

namespace sinkserve {
namespace {

// llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers of the K-quant mixtures.
struct Mixture {
  const char* name;
  DType base;
  uint32_t file_type;
};
constexpr Mixture kMixtures[] = {
    {"Q2_K", DType::Q2_K, 10},   {"Q3_K_S", DType::Q3_K, 11}, {"Q3_K_M", DType::Q3_K, 12},
    {"Q3_K_L", DType::Q3_K, 13}, {"Q4_K_S", DType::Q4_K, 14}, {"Q4_K_M", DType::Q4_K, 15},
    {"Q5_K_S", DType::Q5_K, 16}, {"Q5_K_M", DType::Q5_K, 17},
};

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Roughly one block in three, and all of the first and last eighth, get more bits: the layers
// nearest the embedding and the output matter most (llama.cpp's use_more_bits).
bool more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The types that rows not made of whole blocks fall back to (as llama-quantize: the closest type
// with 32-value blocks), then F16.
DType fallback(DType t, int64_t cols) {
  if (cols % dtype_block_values(t) == 0) return t;
  DType f = DType::F16;
  switch (t) {
    case DType::Q2_K:
    case DType::Q3_K:
    case DType::IQ4_XS: f = DType::IQ4_NL; break;
    case DType::Q4_K: f = DType::Q5_0; break;
    case DType::Q5_K: f = DType::Q5_1; break;
    case DType::Q6_K: f = DType::Q8_0; break;
    default: break;
  }
  return cols % dtype_block_values(f) == 0 ? f : DType::F16;
}

int layer_of(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  return std::atoi(name.c_str() + 4);
}

}  // namespace

std::optional<QuantTarget> parse_quant_target(std::string_view name) {
  for (const Mixture& m : kMixtures)
    if (name == m.name) return QuantTarget{m.name, m.base, m.file_type};
  if (const auto t = dtype_from_name(name)) return QuantTarget{std::string(name), *t, type_traits(*t).file_type};
  return std::nullopt;
}

std::vector<std::string> quant_target_names() {
  std::vector<std::string> names;
  for (const TypeTraits& t : all_type_traits()) names.emplace_back(t.name);
  for (const Mixture& m : kMixtures)
    if (std::find(names.begin(), names.end(), m.name) == names.end()) names.emplace_back(m.name);
  return names;
}

DType quant_type_for(const QuantTarget& target, const TensorSlot& s, bool pure) {
  DType t = target.base;
  const std::string& n = target.name;
  const bool quantized = dtype_is_quantized(t);
  const bool mixture = std::any_of(std::begin(kMixtures), std::end(kMixtures), [&](const Mixture& m) { return n == m.name; });
  const bool head = s.name == "output.weight" || (!s.has_output && s.name == "token_embd.weight");
  if (!pure && quantized && head) {
    // The output head turns every hidden state into logits: Q6_K unless the base is finer.
    if (t != DType::Q8_0) t = DType::Q6_K;
  } else if (!pure && mixture && ends_with(s.name, "attn_v.weight")) {
    if (n == "Q2_K") t = s.n_gqa >= 4 ? DType::Q4_K : DType::Q3_K;
    else if (n == "Q3_K_M") t = s.layer < 2 ? DType::Q5_K : DType::Q4_K;
    else if (n == "Q3_K_L") t = DType::Q5_K;
    else if ((n == "Q4_K_M" || n == "Q5_K_M") && more_bits(s.layer, s.n_layers)) t = DType::Q6_K;
    else if (n == "Q4_K_S" && s.layer < 4) t = DType::Q5_K;
  } else if (!pure && mixture && ends_with(s.name, "ffn_down.weight")) {
    if (n == "Q2_K") t = DType::Q3_K;
    else if (n == "Q3_K_M") t = s.layer < s.n_layers / 16 ? DType::Q5_K : more_bits(s.layer, s.n_layers) ? DType::Q4_K : DType::Q3_K;
    else if (n == "Q3_K_L") t = DType::Q5_K;
    else if ((n == "Q4_K_M" || n == "Q5_K_M") && more_bits(s.layer, s.n_layers)) t = DType::Q6_K;
    else if (n == "Q4_K_S" && s.layer < s.n_layers / 8) t = DType::Q5_K;
  } else if (!pure && mixture && ends_with(s.name, "attn_output.weight")) {
    if (n == "Q2_K") t = DType::Q3_K;
    else if (n == "Q3_K_M") t = DType::Q4_K;
    else if (n == "Q3_K_L") t = DType::Q5_K;
  }
  return fallback(t, s.cols);
}

void quantize_gguf(const std::string& in, const std::string& out, const QuantizeOptions& opt,
                   const std::function<void(const QuantizedTensor&)>& on_tensor) {
  const GGUFFile f(in);
  GGUFWriter w;
  for (const auto& [k, v] : f.metadata())
    if (k != "general.alignment") w.set(k, v);
  w.set_u32("general.file_type", opt.target.file_type);
  w.set_u32("general.quantization_version", 2);

  const std::string arch = f.find_string("general.architecture").value_or("llama");
  TensorSlot base;
  base.n_layers = int(f.find_int(arch + ".block_count").value_or(1));
  const int64_t heads = f.find_int(arch + ".attention.head_count").value_or(1);
  base.n_gqa = int(heads / std::max<int64_t>(1, f.find_int(arch + ".attention.head_count_kv").value_or(heads)));
  base.has_output = f.find_tensor("output.weight") != nullptr;
  const int n_threads = opt.threads > 0 ? opt.threads : int(std::max(1u, std::thread::hardware_concurrency()));

  for (const GGUFTensorInfo& t : f.tensors()) {
    const bool matrix = t.ne.size() >= 2 && ends_with(t.name, "weight");
    if (matrix && t.type != DType::F32 && t.type != DType::F16 && t.type != DType::BF16)
      throw GGUFError(in + ": tensor '" + t.name + "' is " + std::string(dtype_name(t.type)) +
                      "; quantize reads F32, F16 or BF16 models");
    TensorSlot slot = base;
    slot.name = t.name;
    slot.cols = t.ne[0];
    slot.layer = layer_of(t.name);
    // Norms, biases and other vectors stay F32 whatever the input stores them as.
    const DType to = matrix ? quant_type_for(opt.target, slot, opt.pure) : DType::F32;
    const QuantizedTensor info{t.name, t.type, to, t.ne, t.bytes, 0};
    const GGUFTensorInfo* src = &t;
    w.add_tensor(t.name, to, t.ne, [src, info, to, n_threads, &on_tensor](uint8_t* dst, size_t bytes) {
      const int64_t cols = src->ne[0], rows = src->elements() / cols;
      const int64_t in_rb = dtype_row_bytes(src->type, cols), out_rb = dtype_row_bytes(to, cols);
      auto work = [&](int64_t r0, int64_t r1) {
        std::vector<float> row(static_cast<size_t>(cols));
        for (int64_t r = r0; r < r1; ++r) {
          dequantize_row(src->type, src->data + r * in_rb, row.data(), cols);
          quantize_row(to, row.data(), dst + r * out_rb, cols);
        }
      };
      const int64_t threads = std::min<int64_t>(n_threads, std::max<int64_t>(1, rows * cols >> 16));
      std::vector<std::thread> pool;
      const int64_t chunk = (rows + threads - 1) / threads;
      for (int64_t r0 = chunk; r0 < rows; r0 += chunk) pool.emplace_back(work, r0, std::min(rows, r0 + chunk));
      work(0, std::min(rows, chunk));
      for (auto& th : pool) th.join();
      if (on_tensor) {
        QuantizedTensor done = info;
        done.bytes_out = bytes;
        on_tensor(done);
      }
    });
  }
  w.write(out, f.alignment());
}

}  // namespace sinkserve
