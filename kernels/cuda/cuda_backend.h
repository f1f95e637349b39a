// Extras of the CUDA backend beyond the Backend interface. Only in builds with SINKSERVE_HAVE_CUDA.
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace sinkserve {

// Greedy sampling on the device: host_out[i] = index of the largest of the `width` floats of row i
// of `x` (backend memory; ties go to the lowest index), without copying the rows to the host.
// Waits for the result. Throws std::invalid_argument when `backend` is not a CUDA backend.
void cuda_argmax_rows(Backend& backend, const float* x, int64_t n_rows, int64_t width,
                      int32_t* host_out);

}  // namespace sinkserve
