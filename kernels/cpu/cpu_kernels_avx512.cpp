// AVX-512 (F/BW/VL/DQ) kernels. Everything here has internal linkage and no standard-library
// templates are instantiated: a weak symbol compiled with AVX-512 could otherwise be picked by the
// linker for the portable code paths and fault on older CPUs.
// GCC 12's AVX-512 headers build undefined vectors by self-initialisation, which its own
// -W(maybe-)uninitialized then reports at every use (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

namespace sinkserve::cpu {
namespace {

// Software prefetch of the weight stream in the matrix-vector kernels, 4 KiB ahead into L2: the
// hardware prefetcher alone keeps too few misses in flight per core to reach DRAM bandwidth, and
// prefetching into L1 instead evicts the activations that several tokens share (measured: up to
// 20% slower at 4 tokens).
constexpr int64_t kPrefetchBytes = 4096;

inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

inline __m512 load_f16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load_f16(const uint16_t* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 widen_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load_bf16(const uint16_t* p) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load_bf16(const uint16_t* p, __mmask16 m) { return widen_bf16(_mm256_maskz_loadu_epi16(m, p)); }

// Loads 16 weight values at column k (masked for the row tail) as F32.
struct LoadF32 {
  static constexpr int kBytes = 4;
  static __m512 full(const void* row, int64_t k) { return _mm512_loadu_ps(static_cast<const float*>(row) + k); }
  static __m512 part(const void* row, int64_t k, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + k);
  }
};
struct LoadF16 {
  static constexpr int kBytes = 2;
  static __m512 full(const void* row, int64_t k) { return load_f16(static_cast<const uint16_t*>(row) + k); }
  static __m512 part(const void* row, int64_t k, __mmask16 m) {
    return load_f16(static_cast<const uint16_t*>(row) + k, m);
  }
};
struct LoadBF16 {
  static constexpr int kBytes = 2;
  static __m512 full(const void* row, int64_t k) { return load_bf16(static_cast<const uint16_t*>(row) + k); }
  static __m512 part(const void* row, int64_t k, __mmask16 m) {
    return load_bf16(static_cast<const uint16_t*>(row) + k, m);
  }
};

// One pass over each weight row serves all NT tokens: decode is bound by reading the weights.
template <int NT, class L>
void gemv_plain(const void* w, size_t row_bytes, int64_t cols, int64_t r0, int64_t r1,
                const float* x, float* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const void* row = static_cast<const char*>(w) + size_t(r) * row_bytes;
    __m512 acc[NT][2];
    for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= cols; k += 32) {
      const char* next = static_cast<const char*>(row) + k * L::kBytes + kPrefetchBytes;
      prefetch(next);
      if constexpr (L::kBytes == 4) prefetch(next + 64);
      const __m512 w0 = L::full(row, k), w1 = L::full(row, k + 16);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * cols + k), acc[t][0]);
        acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * cols + k + 16), acc[t][1]);
      }
    }
    for (; k < cols; k += 16) {
      const __mmask16 m = tail_mask(cols - k);
      const __m512 w0 = L::part(row, k, m);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t)
        acc[t][0] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, x + t * cols + k), acc[t][0]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
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

void decode_row(DType type, const void* row, int64_t k0, int64_t n, float* out) {
  if (type != DType::F32 && type != DType::F16 && type != DType::BF16)
    return dequantize_blocks(type, Isa::Avx512, row, k0, n, out);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = tail_mask(n - k);
    __m512 v;
    switch (type) {
      case DType::F32: v = LoadF32::part(row, k0 + k, m); break;
      case DType::F16: v = LoadF16::part(row, k0 + k, m); break;
      default: v = LoadBF16::part(row, k0 + k, m); break;
    }
    _mm512_mask_storeu_ps(out + k, m, v);
  }
}

constexpr int kMr = 32, kNr = 12;
static_assert(kMr <= kGemmMaxMr && kNr <= kGemmMaxNr, "matmul.cpp sizes its panels by these");

// The 16 x n block whose rows are r[0..16) (n <= 16 columns valid) to dst + j * dst_stride, column
// j as one vector of the 16 rows: a transpose in registers, 64 shuffles per 256 values where a
// gather per column costs a load per value (the gathers took about as long as the GEMM tiles at
// 64 tokens). r is clobbered.
inline void transpose16(__m512* r, int n, float* dst, int64_t dst_stride) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // r[4q + c], 128-bit lane L: rows 4q .. 4q + 3 of column 4L + c.
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    r[4 * q] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    r[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xee);
    r[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    r[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xee);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), a2 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
    const __m512 b = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88), b2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
    t[c] = _mm512_shuffle_f32x4(a, b, 0x88);
    t[8 + c] = _mm512_shuffle_f32x4(a, b, 0xdd);
    t[4 + c] = _mm512_shuffle_f32x4(a2, b2, 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(a2, b2, 0xdd);
  }
  for (int j = 0; j < n; ++j) _mm512_store_ps(dst + j * dst_stride, t[j]);
}

// Rows i < 16 of the 16 x 16 block at column k of rows_at(i) (rows >= m_valid zero), loaded by L.
template <class L, class Row>
void pack_float_rows(Row rows_at, int m_valid, int64_t k0, int64_t kc, float* dst, int64_t dst_stride) {
  __m512 r[16];
  for (int64_t k = 0; k < kc; k += 16) {
    const int n = int(kc - k < 16 ? kc - k : 16);
    const __mmask16 m = tail_mask(n);
    for (int i = 0; i < 16; ++i) r[i] = i < m_valid ? L::part(rows_at(i), k0 + k, m) : _mm512_setzero_ps();
    transpose16(r, n, dst + k * dst_stride, dst_stride);
  }
}

// Transposes 16 rows at a time into the micro-kernel's [k][mr] layout: float types straight from
// the weights, block-quantized types through a row-major buffer they are decoded into.
void pack_panel(DType type, const void* w, size_t row_bytes, int64_t r0, int m_valid, int64_t k0,
                int64_t kc, float* wp) {
  alignas(64) float tmp[16 * kGemmMaxKc];
  for (int g = 0; g < kMr; g += 16) {
    const int valid = m_valid - g < 16 ? m_valid - g : 16;
    auto row = [&](int i) { return static_cast<const char*>(w) + size_t(r0 + g + i) * row_bytes; };
    switch (type) {
      case DType::F32: pack_float_rows<LoadF32>(row, valid, k0, kc, wp + g, kMr); continue;
      case DType::F16: pack_float_rows<LoadF16>(row, valid, k0, kc, wp + g, kMr); continue;
      case DType::BF16: pack_float_rows<LoadBF16>(row, valid, k0, kc, wp + g, kMr); continue;
      default: break;
    }
    for (int i = 0; i < valid; ++i) decode_row(type, row(i), k0, kc, tmp + i * kc);
    pack_float_rows<LoadF32>([&](int i) { return static_cast<const void*>(tmp + i * kc); }, valid, 0, kc, wp + g, kMr);
  }
}

// 24 accumulators + 2 weight vectors of the 32 registers; activations are broadcast from memory.
void gemm_tile(int64_t kc, const float* wp, const float* xp, float* y, int64_t ldy, int m_valid,
               int n_valid, bool accumulate) {
  __m512 c[kNr][2];
#pragma GCC unroll 12
  for (int j = 0; j < kNr; ++j) c[j][0] = c[j][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 a0 = _mm512_load_ps(wp + k * kMr), a1 = _mm512_load_ps(wp + k * kMr + 16);
    const float* b = xp + k * kNr;
#pragma GCC unroll 12
    for (int j = 0; j < kNr; ++j) {
      const __m512 bj = _mm512_set1_ps(b[j]);
      c[j][0] = _mm512_fmadd_ps(a0, bj, c[j][0]);
      c[j][1] = _mm512_fmadd_ps(a1, bj, c[j][1]);
    }
  }
  const __mmask16 m0 = tail_mask(m_valid), m1 = m_valid > 16 ? tail_mask(m_valid - 16) : 0;
#pragma GCC unroll 12
  for (int j = 0; j < kNr; ++j) {
    if (j >= n_valid) break;
    float* yj = y + j * ldy;
    if (accumulate) {
      c[j][0] = _mm512_add_ps(c[j][0], _mm512_maskz_loadu_ps(m0, yj));
      c[j][1] = _mm512_add_ps(c[j][1], _mm512_maskz_loadu_ps(m1, yj + 16));
    }
    _mm512_mask_storeu_ps(yj, m0, c[j][0]);
    _mm512_mask_storeu_ps(yj + 16, m1, c[j][1]);
  }
}

// Rounds 32 F32 values to BF16 (nearest even) as 16 column pairs.
inline __m512i bf16_pairs(const float* src, __mmask16 lo_mask, __mmask16 hi_mask) {
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi_mask, src + 16), _mm512_maskz_loadu_ps(lo_mask, src));
}

// Columns [0, n) of src as ceil(n / 2) pairs, the odd tail padded with zero.
void to_bf16_pairs(const float* src, int64_t n, uint32_t* dst) {
  for (int64_t k = 0; k < n; k += 32) {
    const __m512i v = bf16_pairs(src + k, tail_mask(n - k), n - k > 16 ? tail_mask(n - k - 16) : 0);
    const int64_t pairs = (n - k + 1) / 2;
    _mm512_mask_storeu_epi32(dst + k / 2, tail_mask(pairs), v);
  }
}

void pack_panel_bf16(DType type, const void* w, size_t row_bytes, int64_t r0, int m_valid, int64_t k0,
                     int64_t kc, uint32_t* wp) {
  alignas(64) float row[kGemmMaxKc];
  alignas(64) uint32_t tmp[16 * kGemmMaxKc / 2];
  const int64_t kp = (kc + 1) / 2;
  for (int g = 0; g < kMr; g += 16) {
    for (int i = 0; i < 16; ++i) {
      uint32_t* dst = tmp + i * kp;
      if (g + i < m_valid) {
        decode_row(type, static_cast<const char*>(w) + size_t(r0 + g + i) * row_bytes, k0, kc, row);
        to_bf16_pairs(row, kc, dst);
      } else {
        for (int64_t p = 0; p < kp; ++p) dst[p] = 0;
      }
    }
    // BF16 pairs are 32-bit words: the same transpose moves them.
    pack_float_rows<LoadF32>([&](int i) { return static_cast<const void*>(tmp + i * kp); }, 16, 0, kp,
                             reinterpret_cast<float*>(wp + g), kMr);
  }
}

void pack_tokens_bf16(const float* x, int64_t ldx, int n_valid, int64_t cols, uint32_t* xp) {
  const int64_t kp = (cols + 1) / 2;
  alignas(64) uint32_t pairs[64];
  for (int j = 0; j < kNr; ++j) {
    if (j >= n_valid) {
      for (int64_t p = 0; p < kp; ++p) xp[p * kNr + j] = 0;
      continue;
    }
    for (int64_t k = 0; k < cols; k += 128) {
      const int64_t n = cols - k < 128 ? cols - k : 128;
      to_bf16_pairs(x + j * ldx + k, n, pairs);
      for (int64_t p = 0; p < (n + 1) / 2; ++p) xp[(k / 2 + p) * kNr + j] = pairs[p];
    }
  }
}

void gemm_tile_bf16(int64_t kp, const uint32_t* wp, const uint32_t* xp, float* y, int64_t ldy, int m_valid,
                    int n_valid, bool accumulate) {
  __m512 c[kNr][2];
#pragma GCC unroll 12
  for (int j = 0; j < kNr; ++j) c[j][0] = c[j][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m512bh a0 = (__m512bh)_mm512_load_si512(wp + p * kMr);
    const __m512bh a1 = (__m512bh)_mm512_load_si512(wp + p * kMr + 16);
    const uint32_t* b = xp + p * kNr;
#pragma GCC unroll 12
    for (int j = 0; j < kNr; ++j) {
      const __m512bh bj = (__m512bh)_mm512_set1_epi32(int(b[j]));
      c[j][0] = _mm512_dpbf16_ps(c[j][0], a0, bj);
      c[j][1] = _mm512_dpbf16_ps(c[j][1], a1, bj);
    }
  }
  const __mmask16 m0 = tail_mask(m_valid), m1 = m_valid > 16 ? tail_mask(m_valid - 16) : 0;
#pragma GCC unroll 12
  for (int j = 0; j < kNr; ++j) {
    if (j >= n_valid) break;
    float* yj = y + j * ldy;
    if (accumulate) {
      c[j][0] = _mm512_add_ps(c[j][0], _mm512_maskz_loadu_ps(m0, yj));
      c[j][1] = _mm512_add_ps(c[j][1], _mm512_maskz_loadu_ps(m1, yj + 16));
    }
    _mm512_mask_storeu_ps(yj, m0, c[j][0]);
    _mm512_mask_storeu_ps(yj + 16, m1, c[j][1]);
  }
}

float dot(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void axpy(float a, const float* x, float* y, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
    _mm512_mask_storeu_ps(y + i, m, v);
  }
}

void scale(float* x, float a, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, x + i)));
  }
}

// exp(x) = 2^n * e^r with r = x - n ln2, |r| <= ln2/2; Cephes' degree-6 polynomial (about 2 ulp).
// scalef applies 2^n with correct underflow to zero for very negative x.
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.72f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

float exp_sum(float* s, int64_t n, float max) {
  const __m512 vmax = _mm512_set1_ps(max);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + i), vmax));
    _mm512_mask_storeu_ps(s + i, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

void rmsnorm_row(float* out, const float* x, const float* w, int64_t dim, float eps) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= dim; i += 32) {
    const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    acc0 = _mm512_fmadd_ps(a, a, acc0);
    acc1 = _mm512_fmadd_ps(b, b, acc1);
  }
  for (; i < dim; i += 16) {
    const __m512 a = _mm512_maskz_loadu_ps(tail_mask(dim - i), x + i);
    acc0 = _mm512_fmadd_ps(a, a, acc0);
  }
  const float ss = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  const __m512 r = _mm512_set1_ps(1.0f / __builtin_sqrtf(ss / float(dim) + eps));
  for (i = 0; i < dim; i += 16) {
    const __mmask16 m = tail_mask(dim - i);
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), r), _mm512_maskz_loadu_ps(m, w + i));
    _mm512_mask_storeu_ps(out + i, m, v);
  }
}

void layernorm_row(float* out, const float* x, const float* w, const float* b, int64_t dim, float eps) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < dim; i += 16) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(tail_mask(dim - i), x + i));
  const float mean = _mm512_reduce_add_ps(acc) / float(dim);
  const __m512 vm = _mm512_set1_ps(mean);
  acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < dim; i += 16) {
    const __mmask16 m = tail_mask(dim - i);
    const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), vm);
    acc = _mm512_fmadd_ps(d, d, acc);
  }
  const __m512 r = _mm512_set1_ps(1.0f / __builtin_sqrtf(_mm512_reduce_add_ps(acc) / float(dim) + eps));
  for (int64_t i = 0; i < dim; i += 16) {
    const __mmask16 m = tail_mask(dim - i);
    const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm), r);
    const __m512 bias = b ? _mm512_maskz_loadu_ps(m, b + i) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(out + i, m, _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, w + i), bias));
  }
}

// erfc(|z|) by the Chebyshev fit of Numerical Recipes' erfcc, relative error below 1.2e-7 for
// every z: exact GELU is 0.5 x erfc(-x / sqrt 2), and its negative tail must stay accurate.
inline __m512 erfc_abs_ps(__m512 a) {
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f), _mm512_set1_ps(1.0f)));
  static constexpr float c[] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                -0.18628806f, 0.09678418f, 0.37409196f, 1.00002368f, -1.26551223f};
  __m512 p = _mm512_set1_ps(c[0]);
  for (int i = 1; i < 10; ++i) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c[i]));
  return _mm512_mul_ps(t, exp_ps(_mm512_fnmadd_ps(a, a, p)));
}

// SiLU and tanh-GELU share x * sigmoid(k x') (0.5 (1 + tanh u) = sigmoid(2u)).
inline __m512 activation_ps(Activation act, __m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  if (act == Activation::GeluErf) {
    const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(-0.7071067811865476f));  // erfc's argument
    const __m512 e = erfc_abs_ps(_mm512_abs_ps(z));
    // erfc(z) = 2 - erfc(-z) for z < 0.
    const __m512 erfc = _mm512_mask_sub_ps(e, _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ),
                                           _mm512_set1_ps(2.0f), e);
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), erfc);
  }
  __m512 u = x;
  if (act == Activation::GeluTanh) {
    const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    u = _mm512_mul_ps(_mm512_set1_ps(2.0f * 0.7978845608028654f), _mm512_fmadd_ps(x3, _mm512_set1_ps(0.044715f), x));
  }
  return _mm512_div_ps(x, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), u))));
}

void activate(Activation act, float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    __m512 v = activation_ps(act, _mm512_maskz_loadu_ps(m, gate + i));
    if (up) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, up + i));
    _mm512_mask_storeu_ps(out + i, m, v);
  }
}

void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

// Values [e, e + n) of a KV row as F32, n <= 16; Q8_0 pieces stay within one block of 32.
inline __m512 load_kv(DType t, const void* row, int64_t e, int64_t n) {
  const __mmask16 m = tail_mask(n);
  switch (t) {
    case DType::F16: return load_f16(static_cast<const uint16_t*>(row) + e, m);
    case DType::BF16: return load_bf16(static_cast<const uint16_t*>(row) + e, m);
    case DType::Q8_0: {
      const BlockQ8_0& b = static_cast<const BlockQ8_0*>(row)[e / kQ8Block];
      const __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, b.qs + e % kQ8Block)));
      return _mm512_mul_ps(q, _mm512_set1_ps(_cvtsh_ss(b.d)));
    }
    default: return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + e);
  }
}

inline int64_t kv_piece(DType t, int64_t e, int64_t left) {
  int64_t n = left < 16 ? left : 16;
  if (t == DType::Q8_0 && n > kQ8Block - e % kQ8Block) n = kQ8Block - e % kQ8Block;
  return n;
}

void kv_row(DType t, const void* row, int64_t off, int64_t n, float* dst) {
  for (int64_t i = 0; i < n;) {
    const int64_t len = kv_piece(t, off + i, n - i);
    _mm512_mask_storeu_ps(dst + i, tail_mask(len), load_kv(t, row, off + i, len));
    i += len;
  }
}

void attn_scores(const float* q, const float* kt, int64_t n, float* out) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t d = 0; d < n; ++d) acc = _mm512_fmadd_ps(_mm512_set1_ps(q[d]), _mm512_loadu_ps(kt + d * kAttnTile), acc);
  _mm512_storeu_ps(out, acc);
}

void attn_values(const float* p, const float* v, int nk, int64_t n, float* o) {
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = tail_mask(n - c);
    __m512 acc = _mm512_maskz_loadu_ps(m, o + c);
    for (int j = 0; j < nk; ++j) acc = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_maskz_loadu_ps(m, v + j * n + c), acc);
    _mm512_mask_storeu_ps(o + c, m, acc);
  }
}

}  // namespace

const Kernels& avx512_kernels() {
  static const Kernels with_bf16{Isa::Avx512, gemv, decode_row, kMr, kNr, pack_panel, gemm_tile,
                                 pack_panel_bf16, pack_tokens_bf16, gemm_tile_bf16,
                                 dot, axpy, scale, exp_sum, rmsnorm_row, layernorm_row, activate, add,
                                 kv_row, attn_scores, attn_values};
  static const Kernels without_bf16 = [] {
    Kernels k = with_bf16;
    k.pack_panel_bf16 = nullptr;
    k.pack_tokens_bf16 = nullptr;
    k.gemm_tile_bf16 = nullptr;
    return k;
  }();
  return __builtin_cpu_supports("avx512bf16") ? with_bf16 : without_bf16;
}

}  // namespace sinkserve::cpu
