// Splitting a row-parallel (input-dimension) shard of a block-quantized matrix across ranks:
// every rank's columns must be whole blocks, so n = 11008 over 2 ranks of 256-value blocks is
// 5632 + 5376, not 5504 + 5504.
#pragma once
#include <cstdint>
#include <vector>

namespace sinkserve {

// Columns per rank: multiples of `block` that sum to n, the first n / block % ranks ranks one
// block larger than the rest (so sizes differ by at most one block and never increase with the
// rank). Rank r's first column is the sum of the sizes before it. Throws std::invalid_argument
// when n is not a multiple of block or there are fewer blocks than ranks.
std::vector<int64_t> block_aligned_split(int64_t n, int64_t block, int ranks);

}  // namespace sinkserve
