// What the CUDA backend reports beyond the Backend interface. Only in builds with
// SINKSERVE_HAVE_CUDA.
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace sinkserve {

// Steps that ran as a whole CUDA graph (SINKSERVE_CUDA_GRAPHS=1; see begin_step), and of those
// the ones replayed without being captured again.
struct CudaGraphStats {
  int64_t launches = 0;
  int64_t replays = 0;
};
// Throws std::invalid_argument when `backend` is not a CUDA backend.
CudaGraphStats cuda_graph_stats(const Backend& backend);

}  // namespace sinkserve
