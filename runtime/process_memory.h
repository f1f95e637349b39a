// Resident memory of this process, for constant-memory checks and the perplexity CSV.
#pragma once
#include <cstdint>

namespace sinkserve {

int64_t resident_bytes();  // from /proc/self/statm; 0 where unavailable

}  // namespace sinkserve
