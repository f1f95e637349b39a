// The CPU backend's inner loops, one table per instruction set. The backend picks the best table
// the CPU supports at run time; tests select each table explicitly to check every variant
// against a scalar reference.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kernels/dtype.h"

namespace sinkserve::cpu {

enum class Isa { Scalar, Avx2, Avx512 };

std::string_view isa_name(Isa isa);
bool isa_supported(Isa isa);  // compiled in and supported by this CPU
Isa best_isa();

// Most tokens one gemv call handles: each weight row is loaded once for all of them.
inline constexpr int kGemvMaxTokens = 4;
// Largest gemm micro-kernel tile over all tables (rows x tokens).
inline constexpr int kGemmMaxMr = 32;
inline constexpr int kGemmMaxNr = 12;
// GEMM depth per packed weight panel: 256 x 32 F32 values = 32 KiB, resident in L1.
inline constexpr int64_t kGemmMaxKc = 256;

struct Kernels {
  Isa isa;

  // Matrix-vector products for up to kGemvMaxTokens tokens: for r in [r0, r1), t < n_tok:
  //   y[t * ldy + r] = dot(row r of w, x + t * cols)
  // w is row-major with row_bytes between rows; cols is a multiple of the type's block size.
  void (*gemv)(DType type, const void* w, size_t row_bytes, int64_t cols, int64_t r0,
               int64_t r1, const float* x, int n_tok, float* y, int64_t ldy);

  // Converts values [k0, k0 + n) of one weight row to F32 (k0 and n multiples of the block).
  void (*decode_row)(DType type, const void* row, int64_t k0, int64_t n, float* out);

  // GEMM micro-kernel over a packed tile: wp holds kc steps of gemm_mr weight-row values
  // (wp[k * mr + i], 64-byte aligned), xp kc steps of gemm_nr token values (xp[k * nr + j]).
  // Adds (or stores, when !accumulate) the tile into y[j * ldy + i] for i < m_valid, j < n_valid.
  int gemm_mr;
  int gemm_nr;
  // Packs values [k0, k0 + kc) of rows [r0, r0 + m_valid) of w as F32 into wp[k * gemm_mr + i],
  // zero for i >= m_valid; kc <= kGemmMaxKc, k0 a multiple of the type's block size, wp 64-byte
  // aligned.
  void (*pack_panel)(DType type, const void* w, size_t row_bytes, int64_t r0, int m_valid,
                     int64_t k0, int64_t kc, float* wp);
  void (*gemm_tile)(int64_t kc, const float* wp, const float* xp, float* y, int64_t ldy,
                    int m_valid, int n_valid, bool accumulate);

  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);  // y += a * x
  void (*scale)(float* x, float a, int64_t n);
  // s[i] = exp(s[i] - max) for i < n; returns the sum of the results.
  float (*exp_sum)(float* s, int64_t n, float max);
  // out = x / sqrt(mean(x^2) + eps) * w over one row.
  void (*rmsnorm_row)(float* out, const float* x, const float* w, int64_t dim, float eps);
  void (*swiglu)(float* out, const float* gate, const float* up, int64_t n);
  void (*add)(float* x, const float* y, int64_t n);
};

// Throws std::runtime_error naming the instruction set when it is not supported.
const Kernels& kernels_for(Isa isa);

// Per-instruction-set tables (defined in cpu_kernels*.cpp).
const Kernels& scalar_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();

}  // namespace sinkserve::cpu
