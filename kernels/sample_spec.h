// Checks shared by every backend's sample(): a bad parameter is reported before anything runs.
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace sinkserve {

// Throws std::invalid_argument naming the row and parameter out of range, or std::out_of_range for
// a penalized token outside [0, width).
void check_sample_specs(const SampleSpec* specs, int64_t n_rows, int64_t width);

}  // namespace sinkserve
