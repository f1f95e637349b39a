// What the CUDA backend reports beyond the Backend interface. Only in builds with
// SINKSERVE_HAVE_CUDA.
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace sinkserve {

// How many steps ran as a whole CUDA graph (SINKSERVE_CUDA_GRAPHS=1; see begin_step). Throws
// std::invalid_argument when `backend` is not a CUDA backend.
int64_t cuda_graph_launches(const Backend& backend);

}  // namespace sinkserve
