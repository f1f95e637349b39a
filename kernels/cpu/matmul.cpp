#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <chrono>
#include <iterator>
#include <map>
#include <mutex>
#include <cstdlib>
#include <new>

#include "kernels/type_traits.h"

namespace sinkserve::cpu {
namespace {

// Rows per matrix-vector work item: 16 rows of a 2048-column F16 matrix (64 KiB) stay in L2
// while a second group of tokens reuses them.
constexpr int64_t kGemvRowBlock = 16;

void add_bias(const float* bias, int64_t r0, int64_t r1, int64_t n_tok, float* y, int64_t ldy) {
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t r = r0; r < r1; ++r) y[t * ldy + r] += bias[r];
}

void gemv_path(const Kernels& kern, ThreadPool& pool, const Weight& w, size_t row_bytes,
               const float* x, int64_t n_tok, float* y) {
  const int64_t rows = w.rows, cols = w.cols;
  const int64_t n_blocks = (rows + kGemvRowBlock - 1) / kGemvRowBlock;
  pool.parallel_for(n_blocks, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t r0 = blk * kGemvRowBlock, r1 = std::min(rows, r0 + kGemvRowBlock);
      for (int64_t t0 = 0; t0 < n_tok; t0 += kGemvMaxTokens) {
        const int nt = int(std::min<int64_t>(kGemvMaxTokens, n_tok - t0));
        kern.gemv(w.type, w.data, row_bytes, cols, r0, r1, x + t0 * cols, nt, y + t0 * rows, rows);
      }
      if (w.bias) add_bias(w.bias, r0, r1, n_tok, y, rows);
    }
  });
}

// Block-quantized weights: the activations are quantized once per call to the type's 8-bit
// format, then every row's dot products run on integers with the weights decoded in registers.
void quant_gemv_path(const Kernels& kern, ThreadPool& pool, const Weight& w, size_t row_bytes,
                     const float* x, int64_t n_tok, float* y, Scratch& scratch) {
  const int64_t rows = w.rows, cols = w.cols;
  const quants::CpuOps& ops = quant_ops(w.type, kern.isa);
  const quants::ActQuantize quantize = act_quantizer(w.type, kern.isa);
  const size_t stride = size_t(act_row_bytes(type_traits(w.type).act, cols) + 63) / 64 * 64;
  auto* xq = reinterpret_cast<uint8_t*>(scratch.floats(size_t(n_tok) * stride / sizeof(float)));
  if (n_tok == 1) {
    quantize(x, xq, cols);
  } else {
    pool.parallel_for(n_tok, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) quantize(x + t * cols, xq + size_t(t) * stride, cols);
    });
  }
  const int64_t n_blocks = (rows + kGemvRowBlock - 1) / kGemvRowBlock;
  pool.parallel_for(n_blocks, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      const int64_t r0 = blk * kGemvRowBlock, r1 = std::min(rows, r0 + kGemvRowBlock);
      for (int64_t t0 = 0; t0 < n_tok; t0 += kGemvMaxTokens) {
        const int nt = int(std::min<int64_t>(kGemvMaxTokens, n_tok - t0));
        ops.gemv(w.data, row_bytes, cols, r0, r1, xq + size_t(t0) * stride, stride, nt, y + t0 * rows, rows);
      }
      if (w.bias) add_bias(w.bias, r0, r1, n_tok, y, rows);
    }
  });
}

void gemm_path(const Kernels& kern, ThreadPool& pool, const Weight& w, size_t row_bytes,
               const float* x, int64_t n_tok, float* y, Scratch& scratch) {
  const int64_t M = w.rows, K = w.cols;
  const int mr = kern.gemm_mr, nr = kern.gemm_nr;
  const int64_t n_tiles = (n_tok + nr - 1) / nr;

  // Activations packed once per call as [tile][k][nr], zero-padded past the last token, so the
  // micro-kernel reads each k step's nr values contiguously.
  float* xp = scratch.floats(size_t(n_tiles) * size_t(K) * size_t(nr));
  pool.parallel_for(n_tiles, [&](int64_t b, int64_t e) {
    for (int64_t tile = b; tile < e; ++tile) {
      float* dst = xp + tile * K * nr;
      for (int j = 0; j < nr; ++j) {
        const int64_t t = tile * nr + j;
        if (t < n_tok) {
          const float* src = x + t * K;
          for (int64_t k = 0; k < K; ++k) dst[k * nr + j] = src[k];
        } else {
          for (int64_t k = 0; k < K; ++k) dst[k * nr + j] = 0.0f;
        }
      }
    }
  });

  const int64_t n_panels = (M + mr - 1) / mr;
  pool.parallel_for(n_panels, [&](int64_t b, int64_t e) {
    alignas(64) float wp[kGemmMaxKc * kGemmMaxMr];
    for (int64_t p = b; p < e; ++p) {
      const int64_t r0 = p * mr;
      const int m_valid = int(std::min<int64_t>(mr, M - r0));
      for (int64_t k0 = 0; k0 < K; k0 += kGemmMaxKc) {
        const int64_t kc = std::min(kGemmMaxKc, K - k0);
        // Decoded to F32 once, then reused by every token tile.
        kern.pack_panel(w.type, w.data, row_bytes, r0, m_valid, k0, kc, wp);
        for (int64_t tile = 0; tile < n_tiles; ++tile) {
          const int n_valid = int(std::min<int64_t>(nr, n_tok - tile * nr));
          kern.gemm_tile(kc, wp, xp + (tile * K + k0) * nr, y + tile * nr * M + r0, M, m_valid,
                         n_valid, k0 > 0);
        }
      }
      if (w.bias) add_bias(w.bias, r0, r0 + m_valid, n_tok, y, M);
    }
  });
}

// The BF16 twin of gemm_path: column pairs instead of columns, otherwise the same blocking.
void gemm_path_bf16(const Kernels& kern, ThreadPool& pool, const Weight& w, size_t row_bytes,
                    const float* x, int64_t n_tok, float* y, Scratch& scratch) {
  const int64_t M = w.rows, K = w.cols, KP = (K + 1) / 2;
  const int mr = kern.gemm_mr, nr = kern.gemm_nr;
  const int64_t n_tiles = (n_tok + nr - 1) / nr;
  static_assert(sizeof(float) == sizeof(uint32_t));
  auto* xp = reinterpret_cast<uint32_t*>(scratch.floats(size_t(n_tiles) * size_t(KP) * size_t(nr)));
  pool.parallel_for(n_tiles, [&](int64_t b, int64_t e) {
    for (int64_t tile = b; tile < e; ++tile)
      kern.pack_tokens_bf16(x + tile * nr * K, K, int(std::min<int64_t>(nr, n_tok - tile * nr)), K,
                            xp + tile * KP * nr);
  });
  const int64_t n_panels = (M + mr - 1) / mr;
  pool.parallel_for(n_panels, [&](int64_t b, int64_t e) {
    alignas(64) uint32_t wp[kGemmMaxKc / 2 * kGemmMaxMr];
    for (int64_t p = b; p < e; ++p) {
      const int64_t r0 = p * mr;
      const int m_valid = int(std::min<int64_t>(mr, M - r0));
      for (int64_t k0 = 0; k0 < K; k0 += kGemmMaxKc) {
        const int64_t kc = std::min(kGemmMaxKc, K - k0);
        kern.pack_panel_bf16(w.type, w.data, row_bytes, r0, m_valid, k0, kc, wp);
        for (int64_t tile = 0; tile < n_tiles; ++tile) {
          const int n_valid = int(std::min<int64_t>(nr, n_tok - tile * nr));
          kern.gemm_tile_bf16((kc + 1) / 2, wp, xp + (tile * KP + k0 / 2) * nr, y + tile * nr * M + r0, M,
                              m_valid, n_valid, k0 > 0);
        }
      }
      if (w.bias) add_bias(w.bias, r0, r0 + m_valid, n_tok, y, M);
    }
  });
}

// Multiply-adds per second of one micro-kernel on resident panels, the best of a few rounds.
template <class F>
double tile_rate(F&& tile, double macs_per_call) {
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    constexpr int kCalls = 400;
    for (int i = 0; i < kCalls; ++i) tile();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, kCalls * macs_per_call / std::max(s, 1e-9));
  }
  return best;
}

}  // namespace

bool bf16_gemm_pays(const Kernels& kern) {
  if (!kern.gemm_tile_bf16) return false;
  static std::mutex mu;
  static std::map<const Kernels*, bool> known;
  std::lock_guard lock(mu);
  if (const auto it = known.find(&kern); it != known.end()) return it->second;
  alignas(64) static float wp[kGemmMaxKc * kGemmMaxMr], xp[kGemmMaxKc * kGemmMaxNr], y[kGemmMaxMr * kGemmMaxNr];
  // Multiples of 1/8 below 1 have zero low halves: read as BF16 pairs they are plain numbers too.
  for (size_t i = 0; i < std::size(wp); ++i) wp[i] = float(i % 7) * 0.125f;
  for (size_t i = 0; i < std::size(xp); ++i) xp[i] = float(i % 5) * 0.25f;
  const int mr = kern.gemm_mr, nr = kern.gemm_nr;
  const double macs = double(kGemmMaxKc) * mr * nr;
  double f32 = 0, bf16 = 0;
  for (int pass = 0; pass < 2; ++pass) {  // interleaved, so that a burst of load hits both
    f32 = std::max(f32, tile_rate([&] { kern.gemm_tile(kGemmMaxKc, wp, xp, y, mr, mr, nr, false); }, macs));
    bf16 = std::max(bf16, tile_rate([&] {
      kern.gemm_tile_bf16(kGemmMaxKc / 2, reinterpret_cast<const uint32_t*>(wp), reinterpret_cast<const uint32_t*>(xp),
                          y, mr, mr, nr, false);
    }, macs));
  }
  return known[&kern] = bf16 >= 1.3 * f32;
}

void Scratch::Free::operator()(float* p) const { std::free(p); }

float* Scratch::floats(size_t n) {
  if (n > size_) {
    const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    data_.reset(p);
    size_ = n;
  }
  return data_.get();
}

void matmul(const Kernels& kern, ThreadPool& pool, const Weight& w, const float* x,
            int64_t n_tok, float* y, Scratch& scratch, bool bf16_gemm) {
  if (n_tok <= 0 || w.rows <= 0) return;
  const size_t row_bytes = size_t(dtype_row_bytes(w.type, w.cols));
  if (n_tok < kGemmMinTokens && dtype_is_quantized(w.type))
    quant_gemv_path(kern, pool, w, row_bytes, x, n_tok, y, scratch);
  else if (n_tok < kGemmMinTokens)
    gemv_path(kern, pool, w, row_bytes, x, n_tok, y);
  else if (bf16_gemm && bf16_gemm_pays(kern))
    gemm_path_bf16(kern, pool, w, row_bytes, x, n_tok, y, scratch);
  else
    gemm_path(kern, pool, w, row_bytes, x, n_tok, y, scratch);
}

}  // namespace sinkserve::cpu
