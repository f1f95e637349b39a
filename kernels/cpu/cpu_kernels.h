// The CPU backend's inner loops, one table per instruction set. The backend picks the best table
// the CPU supports at run time; tests select each table explicitly to check every variant
// against a scalar reference.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/quants/cpu_ops.h"

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
// Keys per attention tile: a query's scores of a tile fill one 16-lane vector, without the
// horizontal sum a dot product per key would end in.
inline constexpr int kAttnTile = 16;

struct Kernels {
  Isa isa;

  // Matrix-vector products of F32/F16/BF16 weights for up to kGemvMaxTokens tokens: for r in
  // [r0, r1), t < n_tok:
  //   y[t * ldy + r] = dot(row r of w, x + t * cols)
  // w is row-major with row_bytes between rows. Block-quantized types take their dot products
  // from the type-traits table instead (quant_ops), on activations quantized once per matmul.
  void (*gemv)(DType type, const void* w, size_t row_bytes, int64_t cols, int64_t r0,
               int64_t r1, const float* x, int n_tok, float* y, int64_t ldy);

  // Converts values [k0, k0 + n) of one weight row of any type to F32 (k0 and n multiples of
  // the block).
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

  // Optional BF16 GEMM (null where the CPU lacks AVX512_BF16): the same tiling, but weights and
  // activations rounded to BF16 and multiplied in pairs by vdpbf16ps with F32 accumulation, twice
  // the F32 FMA rate. BF16 keeps 8 significant bits (~2.4 decimal digits), so each product carries
  // up to ~2^-8 relative error: acceptable for prompt processing, never used for decode. Pairs
  // are uint32 words holding the BF16 values of columns (2p, 2p+1), low half first.
  //   pack_panel_bf16: like pack_panel, into wp[p * gemm_mr + i] for p < ceil(kc / 2).
  //   pack_tokens_bf16: rows t < n_valid of x (row stride ldx, cols values) into
  //                     xp[p * gemm_nr + j], zero for j >= n_valid and past the last column.
  //   gemm_tile_bf16: like gemm_tile over kp column pairs.
  void (*pack_panel_bf16)(DType type, const void* w, size_t row_bytes, int64_t r0, int m_valid,
                          int64_t k0, int64_t kc, uint32_t* wp);
  void (*pack_tokens_bf16)(const float* x, int64_t ldx, int n_valid, int64_t cols, uint32_t* xp);
  void (*gemm_tile_bf16)(int64_t kp, const uint32_t* wp, const uint32_t* xp, float* y, int64_t ldy,
                         int m_valid, int n_valid, bool accumulate);

  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);  // y += a * x
  void (*scale)(float* x, float a, int64_t n);
  // s[i] = exp(s[i] - max) for i < n; returns the sum of the results.
  float (*exp_sum)(float* s, int64_t n, float max);
  // out = x / sqrt(mean(x^2) + eps) * w over one row.
  void (*rmsnorm_row)(float* out, const float* x, const float* w, int64_t dim, float eps);
  // out = (x - mean) / sqrt(var + eps) * w + b over one row; b may be null.
  void (*layernorm_row)(float* out, const float* x, const float* w, const float* b, int64_t dim,
                        float eps);
  // out[i] = act(gate[i]) * up[i], or act(gate[i]) when up is null; out may alias gate.
  void (*activate)(Activation act, float* out, const float* gate, const float* up, int64_t n);
  void (*add)(float* x, const float* y, int64_t n);

  // The values [off, off + n) of a KV cache row stored as t (kv_type_supported; `row` is its first
  // byte) as F32 into dst: attention converts each row once for all the query heads reading it.
  void (*kv_row)(DType t, const void* row, int64_t off, int64_t n, float* dst);
  // One query against a tile of kAttnTile keys of n values, stored dimension by dimension
  // (kt[d * kAttnTile + j]): out[j] = q . key j, for every j (lanes past the tile's keys hold
  // whatever kt holds there).
  void (*attn_scores)(const float* q, const float* kt, int64_t n, float* out);
  // o += sum over j < nk of p[j] * v[j * n .. + n): the tile's values, stored key by key.
  void (*attn_values)(const float* p, const float* v, int nk, int64_t n, float* o);
};

// Throws std::runtime_error naming the instruction set when it is not supported.
const Kernels& kernels_for(Isa isa);

// Value e of a KV cache row stored as t, as F32 (the scalar path and the SIMD tails).
float kv_value(DType t, const void* row, int64_t e);

// The scalar activation, shared by the SIMD tables for the functions they do not vectorise.
float activation_value(Activation act, float x);
void activate_scalar(Activation act, float* out, const float* gate, const float* up, int64_t n);

// A block-quantized type's dot products and dequantization for the kernels of `isa`, and the
// activation quantizer of its format. The AVX-512 variants need AVX512_VNNI; without it they fall
// back to the AVX2 ones.
const quants::CpuOps& quant_ops(DType type, Isa isa);
quants::ActQuantize act_quantizer(DType type, Isa isa);
// Kernels::decode_row for the block-quantized types.
void dequantize_blocks(DType type, Isa isa, const void* row, int64_t k0, int64_t n, float* out);

// Per-instruction-set tables (defined in cpu_kernels*.cpp).
const Kernels& scalar_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();

}  // namespace sinkserve::cpu
