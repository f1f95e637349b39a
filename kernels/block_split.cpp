#include "kernels/block_split.h"

#include <stdexcept>
#include <string>

namespace sinkserve {

std::vector<int64_t> block_aligned_split(int64_t n, int64_t block, int ranks) {
  if (block <= 0 || ranks <= 0 || n <= 0)
    throw std::invalid_argument("block_aligned_split: n, block and ranks must be positive");
  if (n % block)
    throw std::invalid_argument("block_aligned_split: " + std::to_string(n) + " is not a multiple of the block " +
                                std::to_string(block));
  const int64_t blocks = n / block;
  if (blocks < ranks)
    throw std::invalid_argument("block_aligned_split: " + std::to_string(blocks) + " blocks of " +
                                std::to_string(block) + " cannot give each of " + std::to_string(ranks) +
                                " ranks at least one");
  std::vector<int64_t> sizes(size_t(ranks), blocks / ranks * block);
  for (int64_t r = 0; r < blocks % ranks; ++r) sizes[size_t(r)] += block;
  return sizes;
}

}  // namespace sinkserve
