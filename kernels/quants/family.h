// Shared by the family files, each compiled once per instruction set (SINKSERVE_QUANT_ISA is
// scalar, avx2 or avx512; see kernels/CMakeLists.txt). Everything defined here has internal
// linkage or lives in the per-ISA namespace, and no standard-library template is instantiated: a
// weak symbol compiled with AVX-512 could otherwise be picked by the linker for a portable caller.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/dtype.h"
#include "kernels/quants/act_layout.h"
#include "kernels/quants/blocks.h"
#include "kernels/quants/cpu_ops.h"

#if defined(__AVX512F__)
// GCC 12's AVX-512 headers build undefined vectors by self-initialisation, which its own
// -W(maybe-)uninitialized then reports at every use (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#if !defined(SINKSERVE_QUANT_ISA)
#error "kernels/quants/*.cpp are compiled once per instruction set with SINKSERVE_QUANT_ISA set"
#endif

namespace sinkserve::quants::SINKSERVE_QUANT_ISA {
namespace {

inline float fp16(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return f16_to_f32(h);
#endif
}

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Each row's dot products with up to 4 activation rows: Dot<NT>::run(row, xq, xq_stride, cols,
// out[NT]) reads the row once for all NT tokens. Rows are streamed ahead of use (hint T1: into
// L2, leaving L1 to the activations all tokens share): the hardware prefetcher alone keeps too
// few misses in flight per core to reach DRAM bandwidth.
constexpr int64_t kPrefetchBytes = 4096;

inline void prefetch_bytes(const uint8_t* p, int64_t n) {
#if defined(__AVX2__)
  for (int64_t i = 0; i < n; i += 64) _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T1);
#else
  (void)p;
  (void)n;
#endif
}

template <class D, int NT>
void gemv_nt(const void* w, size_t row_bytes, int64_t cols, int64_t r0, int64_t r1, const uint8_t* xq,
             size_t xq_stride, float* y, int64_t ldy) {
  const int64_t rb = int64_t(row_bytes);
  const int64_t ahead = rb >= kPrefetchBytes ? 1 : kPrefetchBytes / rb;
  for (int64_t r = r0; r < r1; ++r) {
    const auto* row = static_cast<const uint8_t*>(w) + r * rb;
    if (r + ahead < r1) prefetch_bytes(row + ahead * rb, rb);
    float out[NT];
    D::template run<NT>(row, xq, xq_stride, cols, out);
    for (int t = 0; t < NT; ++t) y[t * ldy + r] = out[t];
  }
}

template <class D>
void gemv(const void* w, size_t row_bytes, int64_t cols, int64_t r0, int64_t r1, const uint8_t* xq,
          size_t xq_stride, int n_tok, float* y, int64_t ldy) {
  switch (n_tok) {
    case 1: return gemv_nt<D, 1>(w, row_bytes, cols, r0, r1, xq, xq_stride, y, ldy);
    case 2: return gemv_nt<D, 2>(w, row_bytes, cols, r0, r1, xq, xq_stride, y, ldy);
    case 3: return gemv_nt<D, 3>(w, row_bytes, cols, r0, r1, xq, xq_stride, y, ldy);
    case 4: return gemv_nt<D, 4>(w, row_bytes, cols, r0, r1, xq, xq_stride, y, ldy);
    default: break;
  }
}

#if defined(__AVX2__)
// 256-bit integer dot products, shared by the AVX2 and AVX-512 builds: with AVX512_VNNI (and VL)
// one vpdpbusd replaces vpmaddubsw + vpmaddwd. 32-value blocks fit one register; the K-quants'
// 16-value groups are its 128-bit halves.

// Eight int32 sums of 4 adjacent products u[i] * s[i], u unsigned and s signed bytes. Without
// VNNI the pairs pass through saturating int16: callers keep 2 * max(u) * 127 below 32768.
inline __m256i dot_us(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// The same for two signed operands: |a| times b with a's sign. Exact as long as b is never -128
// (activation quants never are); a may be.
inline __m256i dot_ss(__m256i a, __m256i b) { return dot_us(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a)); }

// Sixteen int16 sums of 2 adjacent products, then weighted by int16 scales into eight int32:
// the K-quants' per-group scales applied before their groups are added.
inline __m256i dot_us_scaled(__m256i u, __m256i s, __m256i scales16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scales16);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int32_t hsum_i32(__m128i v) {
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(v);
}

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// 16 bytes of packed nibbles as 32 values: low nibbles first, then high nibbles (the layout of
// Q4_0 and IQ4_NL blocks, and of each 32-value group of IQ4_XS).
inline __m256i nibbles(const uint8_t* q) {
  const __m128i v = load128(q);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(0x0f));
}

// Byte i = `value` where bit i of `bits` is set, else 0.
inline __m256i bits_to_bytes(uint32_t bits, char value) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  return _mm256_maskz_mov_epi8(__mmask32(bits), _mm256_set1_epi8(value));
#else
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(int(bits)),
      _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(value));
#endif
}

// The F16 field at p of 8 consecutive blocks, `stride` bytes apart, as F32.
inline __m256 f16x8(const void* p, size_t stride) {
  const auto* c = static_cast<const uint8_t*>(p);
  int16_t h[8];
  for (int j = 0; j < 8; ++j) std::memcpy(&h[j], c + j * stride, 2);
  return _mm256_cvtph_ps(_mm_set_epi16(h[7], h[6], h[5], h[4], h[3], h[2], h[1], h[0]));
}

// The dot product of the 32-value types against Q8_32 activations, written once. C describes a
// type: Block; codes(block), its 32 codes as bytes (kSigned: signed, else unsigned, small enough
// for vpmaddubsw's int16 pairs); and, with kOffset, what each code's value adds besides d * code
// (Q4_0's -8 d, Q4_1's m), for 8 blocks (offsets) or one (offset). Per block an integer dot
// product of 32 codes; the F32 work that goes with it (scales, offsets times the activations'
// block sums) runs 8 blocks to a register. A block's FMA waits for the previous one into the same
// accumulator (4 cycles), so blocks rotate over kChains accumulators per token: 4 chains in all.
template <class C>
struct Dot32 {
  using B = typename C::Block;
  template <int NT>
  static constexpr int kChains = NT >= 4 ? 1 : 4 / NT;

  // acc[t * kChains<NT>] for token t.
  template <int NT>
  static void block(const B& b, const uint8_t* const* x, const float* scale, __m256* acc) {
    const __m256i w = C::codes(b);
    if constexpr (C::kSigned) {
      const __m256i aw = _mm256_sign_epi8(w, w);
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        const __m256i p = dot_us(aw, _mm256_sign_epi8(load256(x[t]), w));
        __m256& a = acc[t * kChains<NT>];
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(scale[t]), a);
      }
    } else {
#pragma GCC unroll 4
      for (int t = 0; t < NT; ++t) {
        __m256& a = acc[t * kChains<NT>];
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_us(w, load256(x[t]))), _mm256_set1_ps(scale[t]), a);
      }
    }
  }

  template <int NT>
  static void run(const uint8_t* row, const uint8_t* xq, size_t xs, int64_t cols, float* out) {
    const auto* b = reinterpret_cast<const B*>(row);
    const int64_t nb = cols / 32;
    constexpr int chains = kChains<NT>;
    const float *dx[NT], *sx[NT];
    __m256 acc[NT * chains], corr[NT];
    float tail_corr[NT];
    for (int t = 0; t < NT; ++t) {
      dx[t] = q8_32_scales(xq + t * xs, cols);
      sx[t] = q8_32_sums(xq + t * xs, cols);
      corr[t] = _mm256_setzero_ps();
      tail_corr[t] = 0;
    }
    for (int c = 0; c < NT * chains; ++c) acc[c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) {
      const __m256 dw = f16x8(&b[i].d, sizeof(B));
      alignas(32) float scale[8][NT];
      for (int t = 0; t < NT; ++t) {
        alignas(32) float s[8];
        _mm256_store_ps(s, _mm256_mul_ps(dw, _mm256_loadu_ps(dx[t] + i)));
        for (int j = 0; j < 8; ++j) scale[j][t] = s[j];
        if constexpr (C::kOffset) corr[t] = _mm256_fmadd_ps(C::offsets(b + i, dw), _mm256_loadu_ps(sx[t] + i), corr[t]);
      }
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const uint8_t* x[NT];
        for (int t = 0; t < NT; ++t) x[t] = xq + t * xs + 32 * (i + j);
        block<NT>(b[i + j], x, scale[j], acc + j % chains);
      }
    }
    for (; i < nb; ++i) {
      const float dw = fp16(b[i].d);
      const uint8_t* x[NT];
      float scale[NT];
      for (int t = 0; t < NT; ++t) {
        x[t] = xq + t * xs + 32 * i;
        scale[t] = dw * dx[t][i];
        if constexpr (C::kOffset) tail_corr[t] += C::offset(b[i], dw) * sx[t][i];
      }
      block<NT>(b[i], x, scale, acc);
    }
    for (int t = 0; t < NT; ++t) {
      __m256 sum = corr[t];
      for (int c = 0; c < chains; ++c) sum = _mm256_add_ps(sum, acc[t * chains + c]);
      out[t] = hsum(sum) + tail_corr[t];
    }
  }
};

// Dequantization into the GEMM's F32 panels: out[i] = d * code[i] + m for the 16 codes of a
// 128-bit register (signed or unsigned bytes), or the 32 of a 256-bit one. One rounding (FMA)
// where the reference rounds d * code and the sum separately.
template <bool Signed>
inline void store16(__m128i v, float d, float m, float* out) {
#if defined(__AVX512F__)
  const __m512i i = Signed ? _mm512_cvtepi8_epi32(v) : _mm512_cvtepu8_epi32(v);
  _mm512_storeu_ps(out, _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(d), _mm512_set1_ps(m)));
#else
  const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
  const __m128i hi = _mm_srli_si128(v, 8);
  const __m256i a = Signed ? _mm256_cvtepi8_epi32(v) : _mm256_cvtepu8_epi32(v);
  const __m256i b = Signed ? _mm256_cvtepi8_epi32(hi) : _mm256_cvtepu8_epi32(hi);
  _mm256_storeu_ps(out, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), vd, vm));
  _mm256_storeu_ps(out + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(b), vd, vm));
#endif
}

template <bool Signed>
inline void store32(__m256i v, float d, float m, float* out) {
  store16<Signed>(_mm256_castsi256_si128(v), d, m, out);
  store16<Signed>(_mm256_extracti128_si256(v, 1), d, m, out + 16);
}

// Bit b of each byte of v moved to bit 4 (0x10), everything else cleared; b < 8. A 16-bit shift
// by at most 4 never carries a neighbour byte's bit into bit 4.
template <int B>
inline __m256i bit_to_16(__m256i v) {
  const __m256i m = _mm256_set1_epi8(0x10);
  if constexpr (B <= 4) return _mm256_and_si256(_mm256_slli_epi16(v, 4 - B), m);
  else return _mm256_and_si256(_mm256_srli_epi16(v, B - 4), m);
}
#endif

#if !defined(__AVX2__)
// The same dot product in plain C++ (the reference build): C gives code(block, j), the j-th of a
// block's 32 codes as an integer, and with kOffset offset(block, d) as above.
template <class C>
struct Dot32 {
  using B = typename C::Block;
  template <int NT>
  static void run(const uint8_t* row, const uint8_t* xq, size_t xs, int64_t cols, float* out) {
    const auto* b = reinterpret_cast<const B*>(row);
    for (int t = 0; t < NT; ++t) {
      const uint8_t* x = xq + t * xs;
      const auto* xv = reinterpret_cast<const int8_t*>(x);
      float sum = 0, corr = 0;
      for (int64_t i = 0; i < cols / 32; ++i) {
        int32_t s = 0;
        for (int j = 0; j < 32; ++j) s += C::code(b[i], j) * xv[32 * i + j];
        const float dw = fp16(b[i].d);
        sum += dw * q8_32_scales(x, cols)[i] * float(s);
        if constexpr (C::kOffset) corr += C::offset(b[i], dw) * q8_32_sums(x, cols)[i];
      }
      out[t] = C::kOffset ? sum + corr : sum;
    }
  }
};
#endif

}  // namespace
}  // namespace sinkserve::quants::SINKSERVE_QUANT_ISA
