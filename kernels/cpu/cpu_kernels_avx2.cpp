// AVX2 + FMA + F16C kernels. Internal linkage only and no standard-library templates, for the same
// reason as in the AVX-512 file.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

namespace sinkserve::cpu {
namespace {

// Weight-stream prefetch for the matrix-vector kernels; see the AVX-512 file for the reasoning.
constexpr int64_t kPrefetchBytes = 4096;
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct LoadF32 {
  static constexpr int kBytes = 4;
  static __m256 v8(const void* row, int64_t k) { return _mm256_loadu_ps(static_cast<const float*>(row) + k); }
  static float one(const void* row, int64_t k) { return static_cast<const float*>(row)[k]; }
};
struct LoadF16 {
  static constexpr int kBytes = 2;
  static __m256 v8(const void* row, int64_t k) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k)));
  }
  static float one(const void* row, int64_t k) { return _cvtsh_ss(static_cast<const uint16_t*>(row)[k]); }
};
struct LoadBF16 {
  static constexpr int kBytes = 2;
  static __m256 v8(const void* row, int64_t k) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float one(const void* row, int64_t k) { return bf16_to_f32(static_cast<const uint16_t*>(row)[k]); }
};

template <int NT, class L>
void gemv_plain(const void* w, size_t row_bytes, int64_t cols, int64_t r0, int64_t r1,
                const float* x, float* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const void* row = static_cast<const char*>(w) + size_t(r) * row_bytes;
    __m256 acc[NT][2];
    for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= cols; k += 16) {
      // One prefetch per 64-byte line of weights.
      if ((k * L::kBytes) % 64 == 0) prefetch(static_cast<const char*>(row) + k * L::kBytes + kPrefetchBytes);
      const __m256 w0 = L::v8(row, k), w1 = L::v8(row, k + 8);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * cols + k), acc[t][0]);
        acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * cols + k + 8), acc[t][1]);
      }
    }
    for (int t = 0; t < NT; ++t) {
      float s = hsum(_mm256_add_ps(acc[t][0], acc[t][1]));
      for (int64_t kk = k; kk < cols; ++kk) s += L::one(row, kk) * x[t * cols + kk];
      y[t * ldy + r] = s;
    }
  }
}

template <int NT>
void gemv_nt(DType type, const void* w, size_t row_bytes, int64_t cols, int64_t r0, int64_t r1,
             const float* x, float* y, int64_t ldy) {
  switch (type) {
    case DType::F32: return gemv_plain<NT, LoadF32>(w, row_bytes, cols, r0, r1, x, y, ldy);
    case DType::F16: return gemv_plain<NT, LoadF16>(w, row_bytes, cols, r0, r1, x, y, ldy);
    case DType::BF16: return gemv_plain<NT, LoadBF16>(w, row_bytes, cols, r0, r1, x, y, ldy);
    default: return;  // block-quantized types have their own dot products (quant_ops)
  }
}

void gemv(DType type, const void* w, size_t row_bytes, int64_t cols, int64_t r0, int64_t r1,
          const float* x, int n_tok, float* y, int64_t ldy) {
  switch (n_tok) {
    case 1: return gemv_nt<1>(type, w, row_bytes, cols, r0, r1, x, y, ldy);
    case 2: return gemv_nt<2>(type, w, row_bytes, cols, r0, r1, x, y, ldy);
    case 3: return gemv_nt<3>(type, w, row_bytes, cols, r0, r1, x, y, ldy);
    case 4: return gemv_nt<4>(type, w, row_bytes, cols, r0, r1, x, y, ldy);
    default: break;
  }
}

template <class L>
void decode_plain(const void* row, int64_t k0, int64_t n, float* out) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) _mm256_storeu_ps(out + k, L::v8(row, k0 + k));
  for (; k < n; ++k) out[k] = L::one(row, k0 + k);
}

void decode_row(DType type, const void* row, int64_t k0, int64_t n, float* out) {
  switch (type) {
    case DType::F32: return decode_plain<LoadF32>(row, k0, n, out);
    case DType::F16: return decode_plain<LoadF16>(row, k0, n, out);
    case DType::BF16: return decode_plain<LoadBF16>(row, k0, n, out);
    default: return dequantize_blocks(type, Isa::Avx2, row, k0, n, out);
  }
}

constexpr int kMr = 16, kNr = 6;
static_assert(kMr <= kGemmMaxMr && kNr <= kGemmMaxNr, "matmul.cpp sizes its panels by these");

// Columns j < n of the 8 x n row-major block at src (row stride ld) to dst + j * dst_stride, each
// as one vector of the 8 rows: a transpose in registers (24 shuffles per 64 values) instead of a
// gather per column.
inline void transpose8(const float* src, int64_t ld, int n, float* dst, int64_t dst_stride) {
  const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256 r[8], t[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_maskload_ps(src + i * ld, m);
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  // r[4q + c], 128-bit lane L: rows 4q .. 4q + 3 of column 4L + c.
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q) {
    r[4 * q] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    r[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xee);
    r[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    r[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xee);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x20);
    t[4 + c] = _mm256_permute2f128_ps(r[c], r[4 + c], 0x31);
  }
  for (int j = 0; j < n; ++j) _mm256_store_ps(dst + j * dst_stride, t[j]);
}

// Decodes 8 rows at a time into a row-major buffer, then transposes it 8 columns at a time into
// the micro-kernel's [k][mr] layout.
void pack_panel(DType type, const void* w, size_t row_bytes, int64_t r0, int m_valid, int64_t k0,
                int64_t kc, float* wp) {
  alignas(64) float tmp[8 * kGemmMaxKc];
  for (int g = 0; g < kMr; g += 8) {
    for (int i = 0; i < 8; ++i) {
      float* dst = tmp + i * kc;
      if (g + i < m_valid) {
        decode_row(type, static_cast<const char*>(w) + size_t(r0 + g + i) * row_bytes, k0, kc, dst);
      } else {
        for (int64_t k = 0; k < kc; ++k) dst[k] = 0.0f;
      }
    }
    for (int64_t k = 0; k < kc; k += 8) transpose8(tmp + k, kc, int(kc - k < 8 ? kc - k : 8), wp + k * kMr + g, kMr);
  }
}

// 12 accumulators + 2 weight vectors + 1 broadcast of the 16 registers.
void gemm_tile(int64_t kc, const float* wp, const float* xp, float* y, int64_t ldy, int m_valid,
               int n_valid, bool accumulate) {
  __m256 c[kNr][2];
#pragma GCC unroll 6
  for (int j = 0; j < kNr; ++j) c[j][0] = c[j][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 a0 = _mm256_load_ps(wp + k * kMr), a1 = _mm256_load_ps(wp + k * kMr + 8);
    const float* b = xp + k * kNr;
#pragma GCC unroll 6
    for (int j = 0; j < kNr; ++j) {
      const __m256 bj = _mm256_broadcast_ss(b + j);
      c[j][0] = _mm256_fmadd_ps(a0, bj, c[j][0]);
      c[j][1] = _mm256_fmadd_ps(a1, bj, c[j][1]);
    }
  }
  for (int j = 0; j < n_valid; ++j) {
    float* yj = y + j * ldy;
    if (m_valid == kMr) {
      if (accumulate) {
        c[j][0] = _mm256_add_ps(c[j][0], _mm256_loadu_ps(yj));
        c[j][1] = _mm256_add_ps(c[j][1], _mm256_loadu_ps(yj + 8));
      }
      _mm256_storeu_ps(yj, c[j][0]);
      _mm256_storeu_ps(yj + 8, c[j][1]);
    } else {
      alignas(32) float tmp[kMr];
      _mm256_store_ps(tmp, c[j][0]);
      _mm256_store_ps(tmp + 8, c[j][1]);
      for (int i = 0; i < m_valid; ++i) yj[i] = accumulate ? yj[i] + tmp[i] : tmp[i];
    }
  }
}

float dot(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy(float a, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

void scale(float* x, float a, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(va, _mm256_loadu_ps(x + i)));
  for (; i < n; ++i) x[i] *= a;
}

// Same range reduction and polynomial as the AVX-512 version; 2^n is built in the exponent bits,
// so x is clamped to where 2^n stays a normal float.
inline __m256 exp_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33f)), _mm256_set1_ps(88.72f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // n in [-126, 128]: split 2^n = 2^(n/2) * 2^(n - n/2) so 2^128 never has to be represented.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i h = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

float exp_sum(float* s, int64_t n, float max) {
  const __m256 vmax = _mm256_set1_ps(max);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + i), vmax));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  if (i < n) {
    alignas(32) float tail[8] = {};
    for (int64_t j = i; j < n; ++j) tail[j - i] = s[j] - max;
    _mm256_store_ps(tail, exp_ps(_mm256_load_ps(tail)));
    for (int64_t j = i; j < n; ++j) {
      s[j] = tail[j - i];
      sum += s[j];
    }
  }
  return sum;
}

void rmsnorm_row(float* out, const float* x, const float* w, int64_t dim, float eps) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= dim; i += 16) {
    const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    acc0 = _mm256_fmadd_ps(a, a, acc0);
    acc1 = _mm256_fmadd_ps(b, b, acc1);
  }
  float ss = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < dim; ++i) ss += x[i] * x[i];
  const float rs = 1.0f / __builtin_sqrtf(ss / float(dim) + eps);
  const __m256 r = _mm256_set1_ps(rs);
  for (i = 0; i + 8 <= dim; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), r), _mm256_loadu_ps(w + i)));
  for (; i < dim; ++i) out[i] = x[i] * rs * w[i];
}

void layernorm_row(float* out, const float* x, const float* w, const float* b, int64_t dim, float eps) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= dim; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
  float sum = hsum(acc);
  for (; i < dim; ++i) sum += x[i];
  const float mean = sum / float(dim);
  const __m256 vm = _mm256_set1_ps(mean);
  acc = _mm256_setzero_ps();
  for (i = 0; i + 8 <= dim; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
    acc = _mm256_fmadd_ps(d, d, acc);
  }
  float ss = hsum(acc);
  for (; i < dim; ++i) ss += (x[i] - mean) * (x[i] - mean);
  const float rs = 1.0f / __builtin_sqrtf(ss / float(dim) + eps);
  const __m256 r = _mm256_set1_ps(rs);
  for (i = 0; i + 8 <= dim; i += 8) {
    const __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), r);
    const __m256 bias = b ? _mm256_loadu_ps(b + i) : _mm256_setzero_ps();
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(w + i), bias));
  }
  for (; i < dim; ++i) out[i] = (x[i] - mean) * rs * w[i] + (b ? b[i] : 0.0f);
}

// erfc(|z|) by the Chebyshev fit of Numerical Recipes' erfcc, relative error below 1.2e-7 for
// every z: exact GELU is 0.5 x erfc(-x / sqrt 2), and its negative tail must stay accurate.
inline __m256 erfc_abs_ps(__m256 a) {
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(a, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
  static constexpr float c[] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                -0.18628806f, 0.09678418f, 0.37409196f, 1.00002368f, -1.26551223f};
  __m256 p = _mm256_set1_ps(c[0]);
  for (int i = 1; i < 10; ++i) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c[i]));
  return _mm256_mul_ps(t, exp_ps(_mm256_fnmadd_ps(a, a, p)));
}

// SiLU and tanh-GELU share x * sigmoid(k x') (0.5 (1 + tanh u) = sigmoid(2u)).
inline __m256 activation_ps(Activation act, __m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  if (act == Activation::GeluErf) {
    const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(-0.7071067811865476f));  // erfc's argument
    const __m256 e = erfc_abs_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), z));
    // erfc(z) = 2 - erfc(-z) for z < 0.
    const __m256 neg = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ);
    const __m256 erfc = _mm256_blendv_ps(e, _mm256_sub_ps(_mm256_set1_ps(2.0f), e), neg);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), erfc);
  }
  __m256 u = x;
  if (act == Activation::GeluTanh) {
    const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    u = _mm256_mul_ps(_mm256_set1_ps(2.0f * 0.7978845608028654f), _mm256_fmadd_ps(x3, _mm256_set1_ps(0.044715f), x));
  }
  return _mm256_div_ps(x, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), u))));
}

void activate(Activation act, float* out, const float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = activation_ps(act, _mm256_loadu_ps(gate + i));
    if (up) v = _mm256_mul_ps(v, _mm256_loadu_ps(up + i));
    _mm256_storeu_ps(out + i, v);
  }
  if (i < n) activate_scalar(act, out + i, gate + i, up ? up + i : nullptr, n - i);
}

void add(float* x, const float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) x[i] += y[i];
}

inline __m256 q8_quarter(const int8_t* q) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
}

// Eight values [e, e + 8) of a KV row as F32 (a Q8_0 piece stays within one block of 32).
inline __m256 load_kv8(DType t, const void* row, int64_t e) {
  switch (t) {
    case DType::F16: return LoadF16::v8(row, e);
    case DType::BF16: return LoadBF16::v8(row, e);
    case DType::Q8_0: {
      const BlockQ8_0& b = static_cast<const BlockQ8_0*>(row)[e / kQ8Block];
      return _mm256_mul_ps(q8_quarter(b.qs + e % kQ8Block), _mm256_set1_ps(_cvtsh_ss(b.d)));
    }
    default: return _mm256_loadu_ps(static_cast<const float*>(row) + e);
  }
}

// Whole pieces of 8 where the type allows (Q8_0: not across a block), the rest value by value.
inline bool kv_whole8(DType t, int64_t e, int64_t left) {
  return left >= 8 && (t != DType::Q8_0 || e % kQ8Block <= kQ8Block - 8);
}

void kv_row(DType t, const void* row, int64_t off, int64_t n, float* dst) {
  for (int64_t i = 0; i < n;) {
    if (kv_whole8(t, off + i, n - i)) {
      _mm256_storeu_ps(dst + i, load_kv8(t, row, off + i));
      i += 8;
    } else {
      dst[i] = kv_value(t, row, off + i);
      ++i;
    }
  }
}

void attn_scores(const float* q, const float* kt, int64_t n, float* out) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (int64_t d = 0; d < n; ++d) {
    const __m256 qd = _mm256_broadcast_ss(q + d);
    lo = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kt + d * kAttnTile), lo);
    hi = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kt + d * kAttnTile + 8), hi);
  }
  _mm256_storeu_ps(out, lo);
  _mm256_storeu_ps(out + 8, hi);
}

void attn_values(const float* p, const float* v, int nk, int64_t n, float* o) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    __m256 acc = _mm256_loadu_ps(o + c);
    for (int j = 0; j < nk; ++j) acc = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(v + j * n + c), acc);
    _mm256_storeu_ps(o + c, acc);
  }
  for (; c < n; ++c)
    for (int j = 0; j < nk; ++j) o[c] += p[j] * v[j * n + c];
}

}  // namespace

const Kernels& avx2_kernels() {
  static const Kernels k{Isa::Avx2, gemv, decode_row, kMr, kNr, pack_panel, gemm_tile,
                         nullptr, nullptr, nullptr,  // no BF16 GEMM
                         dot, axpy, scale, exp_sum, rmsnorm_row, layernorm_row, activate, add,
                         kv_row, attn_scores, attn_values};
  return k;
}

}  // namespace sinkserve::cpu
