// Helpers of the commands that time a model: elapsed wall time, and reproducible token ids.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace sinkserve {

// Seconds elapsed since t0 on the steady clock.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Token ids that look like text to the model's cost (any id costs the same), reproducibly: away
// from the special ids 0..2, the same sequence on every run.
struct TokenSource {
  uint64_t state = 0x9E3779B97F4A7C15ull;
  int vocab;
  explicit TokenSource(int v) : vocab(v) {}
  int32_t next() {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return int32_t(3 + (state >> 33) % uint64_t(std::max(1, vocab - 3)));
  }
  std::vector<int32_t> take(int64_t n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& t : v) t = next();
    return v;
  }
};

}  // namespace sinkserve
