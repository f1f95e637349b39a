// One row of Backend::sample (see SampleSpec in kernels/backend.h), written plainly: it is also
// the reference the CUDA sampling kernel is tested against.
#pragma once
#include <cstdint>

#include "kernels/backend.h"

namespace sinkserve::cpu {

// The spec must have passed check_sample_specs. Modifies the row in place (penalties).
int32_t sample_row(float* logits, int64_t width, const SampleSpec& s);

}  // namespace sinkserve::cpu
