// Weight x activations on the CPU: matrix-vector kernels for decode (bound by reading the
// weights once) and a packed, register-blocked GEMM for prompt processing (bound by FMA
// throughput, each decoded weight panel reused across every token).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/thread_pool.h"

namespace sinkserve::cpu {

// Fewer tokens than this use the matrix-vector kernels (in passes of kGemvMaxTokens): below it,
// packing the weights into GEMM panels costs more than re-streaming them (measured crossover on
// Zen 5 with a 5632x2048 F16 matrix: between 16 and 32 tokens).
inline constexpr int64_t kGemmMinTokens = 32;

// Grow-only, 64-byte aligned scratch memory.
class Scratch {
 public:
  float* floats(size_t n);

 private:
  struct Free {
    void operator()(float* p) const;
  };
  std::unique_ptr<float, Free> data_;
  size_t size_ = 0;
};

// y[t][r] = sum_c W[r][c] x[t][c] (+ bias[r]) for t < n_tok, r < w.rows. With bf16_gemm and a
// CPU whose BF16 micro-kernel outruns its F32 one (bf16_gemm_pays), the GEMM path
// (n_tok >= kGemmMinTokens) rounds weights and activations to BF16 (see
// Kernels::gemm_tile_bf16); decode always stays in F32.
void matmul(const Kernels& kernels, ThreadPool& pool, const Weight& w, const float* x,
            int64_t n_tok, float* y, Scratch& scratch, bool bf16_gemm = false);

// Whether kernels.gemm_tile_bf16 exists and does a panel's multiply-adds at least 1.3x faster
// than gemm_tile, measured once per table (a few milliseconds): vdpbf16ps doubles the multiply
// rate of a core only where it issues as often as an F32 FMA (AMD Zen 4/5). Intel cores issue it
// on one port at the rate of their two FMA ports, so there the BF16 path only adds rounding and
// packing (slower than F32: prompt 80 vs 107-116 tok/s reported on an AMX machine).
bool bf16_gemm_pays(const Kernels& kernels);

}  // namespace sinkserve::cpu
