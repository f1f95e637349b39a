// The CPU backend with an explicit instruction set, for tests and benchmarks that compare the
// SIMD variants. make_cpu_backend(threads) picks the best one the CPU supports.
#pragma once
#include <memory>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"

namespace sinkserve::cpu {

// Throws std::runtime_error when the CPU does not support `isa`. bf16_gemm lets prompt-sized
// matmuls round their operands to BF16 where the CPU has AVX512_BF16 (about 1.3x faster on Zen 5,
// at ~2^-8 relative error per product; see Kernels::gemm_tile_bf16). Off by default: the F32
// GEMM already runs at ~75% of the FMA peak.
std::unique_ptr<Backend> make_cpu_backend(int threads, Isa isa, bool bf16_gemm = false);

}  // namespace sinkserve::cpu
