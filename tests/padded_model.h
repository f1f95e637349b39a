// gutenberg-1m (a trained Llama: dim 128, 8 heads / 4 KV heads of 16, ffn 344, tied embeddings)
// padded, exactly, to a wider shape whose rows are whole 256-value K-quant super-blocks: zero
// columns and rows, extra all-zero heads, norm weights scaled for the wider RMS. The padded model
// computes the fixture's function, so quantizations of it are judged against a trained model
// (confident greedy tokens, a meaningful perplexity) instead of random weights.
//   - extra residual dimensions stay zero (zero embedding columns);
//   - extra heads produce zero (zero q/k/v rows, zero attn_output columns); query head h still
//     shares KV head h / 2, as in the fixture;
//   - extra FFN units give silu(0) * 0;
//   - RMSNorm averages over `scale` times the width: weights / sqrt(scale), eps / scale.
#pragma once
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/gguf.h"

namespace sinkserve::test {

// Copies the F32 matrix [rows][cols] into the top-left corner of a zero [rows2][cols2] one,
// times `scale`.
inline std::vector<float> pad_matrix(const GGUFTensorInfo& t, int64_t cols2, int64_t rows2, float scale = 1.0f) {
  if (t.type != DType::F32) throw std::runtime_error("pad_matrix: " + t.name + " is not F32");
  const int64_t cols = t.ne[0], rows = t.ne.size() > 1 ? t.ne[1] : 1;
  std::vector<float> out(static_cast<size_t>(cols2 * rows2), 0.0f);
  const auto* src = reinterpret_cast<const float*>(t.data);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[size_t(r * cols2 + c)] = scale * src[r * cols + c];
  return out;
}

// Writes gutenberg-1m (`src`) padded to `dim` (a multiple of 128) and `ffn` (at least 344) to
// `out` as F32.
inline void write_padded_gutenberg(const std::string& src, const std::string& out, int64_t dim, int64_t ffn) {
  const GGUFFile f(src);
  if (f.get_int("llama.embedding_length") != 128 || f.get_int("llama.feed_forward_length") != 344 ||
      f.get_int("llama.attention.head_count") != 8 || f.get_int("llama.attention.head_count_kv") != 4)
    throw std::runtime_error(src + " is not gutenberg-1m's shape");
  if (dim % 128 || dim < 128 || ffn < 344) throw std::runtime_error("write_padded_gutenberg: bad shape");
  const int64_t scale = dim / 128, vocab = f.tensor("token_embd.weight").ne[1];
  GGUFWriter w;
  for (const auto& [k, v] : f.metadata()) w.set(k, v);
  w.set_u32("llama.embedding_length", uint32_t(dim));
  w.set_u32("llama.feed_forward_length", uint32_t(ffn));
  w.set_u32("llama.attention.head_count", uint32_t(8 * scale));
  w.set_u32("llama.attention.head_count_kv", uint32_t(4 * scale));
  w.set_f32("llama.attention.layer_norm_rms_epsilon",
            float(f.get_float("llama.attention.layer_norm_rms_epsilon") / double(scale)));
  auto add = [&](const std::string& name, const std::vector<int64_t>& ne, const std::vector<float>& v) {
    w.add_tensor(name, DType::F32, ne, v.data(), v.size() * 4);
  };
  const float norm_scale = float(1.0 / std::sqrt(double(scale)));
  for (const GGUFTensorInfo& t : f.tensors()) {
    const std::string& n = t.name;
    auto ends = [&](const char* s) {
      return n.size() >= std::strlen(s) && n.compare(n.size() - std::strlen(s), std::string::npos, s) == 0;
    };
    if (ends("norm.weight")) add(n, {dim}, pad_matrix(t, dim, 1, norm_scale));
    else if (n == "token_embd.weight") add(n, {dim, vocab}, pad_matrix(t, dim, vocab));
    else if (ends("attn_q.weight") || ends("attn_output.weight")) add(n, {dim, dim}, pad_matrix(t, dim, dim));
    else if (ends("attn_k.weight") || ends("attn_v.weight")) add(n, {dim, dim / 2}, pad_matrix(t, dim, dim / 2));
    else if (ends("ffn_gate.weight") || ends("ffn_up.weight")) add(n, {dim, ffn}, pad_matrix(t, dim, ffn));
    else if (ends("ffn_down.weight")) add(n, {ffn, dim}, pad_matrix(t, ffn, dim));
    else throw std::runtime_error("write_padded_gutenberg: unexpected tensor " + n);
  }
  w.write(out);
}

}  // namespace sinkserve::test
