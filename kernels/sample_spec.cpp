#include "kernels/sample_spec.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace sinkserve {

void check_sample_specs(const SampleSpec* specs, int64_t n_rows, int64_t width) {
  if (width < 1) throw std::invalid_argument("sample: rows of " + std::to_string(width) + " logits");
  for (int64_t r = 0; r < n_rows; ++r) {
    const SampleSpec& s = specs[r];
    auto bad = [&](const std::string& what) {
      throw std::invalid_argument("sample: row " + std::to_string(r) + ": " + what);
    };
    if (!(s.temperature >= 0.0f) || std::isinf(s.temperature)) bad("temperature must be finite and >= 0");
    if (s.top_k < 0) bad("top_k must be >= 0");
    if (!(s.top_p >= 0.0f && s.top_p <= 1.0f)) bad("top_p must be in [0, 1]");
    if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) bad("min_p must be in [0, 1]");
    if (!(s.penalty > 0.0f) || std::isinf(s.penalty)) bad("penalty must be finite and > 0");
    if (!(s.coin >= 0.0f && s.coin < 1.0f)) bad("coin must be in [0, 1)");
    if (s.n_penalized < 0 || (s.n_penalized > 0 && !s.penalized)) bad("no penalized token array");
    for (int32_t i = 0; i < s.n_penalized; ++i)
      if (s.penalized[i] < 0 || s.penalized[i] >= width)
        throw std::out_of_range("sample: row " + std::to_string(r) + ": penalized token " +
                                std::to_string(s.penalized[i]) + " is outside the " +
                                std::to_string(width) + " logits");
    // Penalties are applied in parallel on a GPU: a token listed twice would be a race.
    std::vector<int32_t> ids(s.penalized, s.penalized + s.n_penalized);
    std::sort(ids.begin(), ids.end());
    if (const auto twice = std::adjacent_find(ids.begin(), ids.end()); twice != ids.end())
      bad("penalized token " + std::to_string(*twice) + " is listed twice");
  }
}

}  // namespace sinkserve
