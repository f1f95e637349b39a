// Portable reference implementations and the run-time choice of instruction set.
#include "kernels/cpu/cpu_kernels.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/type_traits.h"

namespace sinkserve::cpu {
namespace {

float row_value(DType type, const void* row, int64_t k) {
  switch (type) {
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(row)[k]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(row)[k]);
    default: return static_cast<const float*>(row)[k];  // F32: the only other type gemv sees
  }
}

void decode_row(DType type, const void* row, int64_t k0, int64_t n, float* out) {
  if (dtype_is_quantized(type)) return dequantize_blocks(type, Isa::Scalar, row, k0, n, out);
  for (int64_t k = 0; k < n; ++k) out[k] = row_value(type, row, k0 + k);
}

void gemv(DType type, const void* w, size_t row_bytes, int64_t cols, int64_t r0, int64_t r1,
          const float* x, int n_tok, float* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const void* row = static_cast<const char*>(w) + size_t(r) * row_bytes;
    for (int t = 0; t < n_tok; ++t) {
      const float* xt = x + t * cols;
      float acc = 0.0f;
      for (int64_t k = 0; k < cols; ++k) acc += row_value(type, row, k) * xt[k];
      y[t * ldy + r] = acc;
    }
  }
}

constexpr int kMr = 4, kNr = 4;
static_assert(kMr <= kGemmMaxMr && kNr <= kGemmMaxNr, "matmul.cpp sizes its panels by these");

void pack_panel(DType type, const void* w, size_t row_bytes, int64_t r0, int m_valid, int64_t k0,
                int64_t kc, float* wp) {
  float row[kGemmMaxKc];
  for (int i = 0; i < kMr; ++i) {
    if (i < m_valid) decode_row(type, static_cast<const char*>(w) + size_t(r0 + i) * row_bytes, k0, kc, row);
    for (int64_t k = 0; k < kc; ++k) wp[k * kMr + i] = i < m_valid ? row[k] : 0.0f;
  }
}

void gemm_tile(int64_t kc, const float* wp, const float* xp, float* y, int64_t ldy, int m_valid,
               int n_valid, bool accumulate) {
  float acc[kNr][kMr] = {};
  for (int64_t k = 0; k < kc; ++k)
    for (int j = 0; j < kNr; ++j)
      for (int i = 0; i < kMr; ++i) acc[j][i] += wp[k * kMr + i] * xp[k * kNr + j];
  for (int j = 0; j < n_valid; ++j)
    for (int i = 0; i < m_valid; ++i)
      y[j * ldy + i] = accumulate ? y[j * ldy + i] + acc[j][i] : acc[j][i];
}

float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void scale(float* x, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

float exp_sum(float* s, int64_t n, float max) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - max);
    sum += s[i];
  }
  return sum;
}

void rmsnorm_row(float* out, const float* x, const float* w, int64_t dim, float eps) {
  float ss = 0.0f;
  for (int64_t i = 0; i < dim; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / float(dim) + eps);
  for (int64_t i = 0; i < dim; ++i) out[i] = x[i] * r * w[i];
}

void layernorm_row(float* out, const float* x, const float* w, const float* b, int64_t dim, float eps) {
  float sum = 0.0f;
  for (int64_t i = 0; i < dim; ++i) sum += x[i];
  const float mean = sum / float(dim);
  float ss = 0.0f;
  for (int64_t i = 0; i < dim; ++i) ss += (x[i] - mean) * (x[i] - mean);
  const float r = 1.0f / std::sqrt(ss / float(dim) + eps);
  for (int64_t i = 0; i < dim; ++i) out[i] = (x[i] - mean) * r * w[i] + (b ? b[i] : 0.0f);
}

void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void kv_row(DType t, const void* row, int64_t off, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = kv_value(t, row, off + i);
}

void attn_scores(const float* q, const float* kt, int64_t n, float* out) {
  for (int j = 0; j < kAttnTile; ++j) out[j] = 0.0f;
  for (int64_t d = 0; d < n; ++d)
    for (int j = 0; j < kAttnTile; ++j) out[j] += q[d] * kt[d * kAttnTile + j];
}

void attn_values(const float* p, const float* v, int nk, int64_t n, float* o) {
  for (int j = 0; j < nk; ++j)
    for (int64_t d = 0; d < n; ++d) o[d] += p[j] * v[j * n + d];
}

}  // namespace

float kv_value(DType t, const void* row, int64_t e) {
  switch (t) {
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(row)[e]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(row)[e]);
    case DType::Q8_0: {
      const BlockQ8_0& b = static_cast<const BlockQ8_0*>(row)[e / kQ8Block];
      return f16_to_f32(b.d) * float(b.qs[e % kQ8Block]);
    }
    default: return static_cast<const float*>(row)[e];
  }
}

float activation_value(Activation act, float x) {
  switch (act) {
    // 0.5 (1 + tanh u) = sigmoid(2u), and 1 + erf(z) = erfc(-z): the forms without the
    // cancellation of 1 + (nearly -1) for negative inputs.
    case Activation::Silu: return x / (1.0f + std::exp(-x));
    case Activation::GeluTanh:
      return x / (1.0f + std::exp(-2.0f * 0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case Activation::GeluErf: return 0.5f * x * std::erfc(-x * 0.7071067811865476f);
  }
  return x;
}

void activate_scalar(Activation act, float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = activation_value(act, gate[i]) * (up ? up[i] : 1.0f);
}

const Kernels& scalar_kernels() {
  static const Kernels k{Isa::Scalar, gemv, decode_row, kMr, kNr, pack_panel, gemm_tile,
                         nullptr, nullptr, nullptr,  // no BF16 GEMM
                         dot, axpy, scale, exp_sum, rmsnorm_row, layernorm_row, activate_scalar, add,
                         kv_row, attn_scores, attn_values};
  return k;
}

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__)
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return isa_supported(Isa::Avx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
#else
    default: return false;
#endif
  }
  return false;
}

Isa best_isa() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

namespace {
// The quant families' AVX-512 build uses VNNI (kernels/CMakeLists.txt): without it, AVX2's.
Isa quant_isa(Isa isa) {
  static const bool vnni = isa_supported(Isa::Avx512) && __builtin_cpu_supports("avx512vnni");
  return isa == Isa::Avx512 && !vnni ? Isa::Avx2 : isa;
}
}  // namespace

const quants::CpuOps& quant_ops(DType type, Isa isa) { return *type_traits(type).cpu[int(quant_isa(isa))]; }

quants::ActQuantize act_quantizer(DType type, Isa isa) {
  const bool q8_32 = type_traits(type).act == ActFormat::Q8_32;
  switch (quant_isa(isa)) {
#if defined(__x86_64__)
    case Isa::Avx512: return q8_32 ? quants::avx512::quantize_act_q8_32 : quants::avx512::quantize_act_q8_256;
    case Isa::Avx2: return q8_32 ? quants::avx2::quantize_act_q8_32 : quants::avx2::quantize_act_q8_256;
#endif
    default: return q8_32 ? quants::scalar::quantize_act_q8_32 : quants::scalar::quantize_act_q8_256;
  }
}

void dequantize_blocks(DType type, Isa isa, const void* row, int64_t k0, int64_t n, float* out) {
  const TypeTraits& t = type_traits(type);
  quant_ops(type, isa).dequantize(static_cast<const char*>(row) + k0 / t.block_values * t.block_bytes, out, n);
}

const Kernels& kernels_for(Isa isa) {
  if (!isa_supported(isa))
    throw std::runtime_error("CPU kernels: instruction set " + std::string(isa_name(isa)) +
                             " is not supported by this CPU");
  switch (isa) {
    case Isa::Avx512: return avx512_kernels();
    case Isa::Avx2: return avx2_kernels();
    case Isa::Scalar: break;
  }
  return scalar_kernels();
}

}  // namespace sinkserve::cpu
