// The CPU backend with an explicit instruction set, for tests and benchmarks that compare the
// SIMD variants. make_cpu_backend(threads) picks the best one the CPU supports.
#pragma once
#include <memory>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"

namespace sinkserve::cpu {

// Throws std::runtime_error when the CPU does not support `isa`.
std::unique_ptr<Backend> make_cpu_backend(int threads, Isa isa);

}  // namespace sinkserve::cpu
