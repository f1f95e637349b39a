#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace sinkserve::cpu {

int32_t sample_row(float* l, int64_t n, const SampleSpec& s) {
  for (int32_t i = 0; i < s.n_penalized; ++i) {
    float& x = l[s.penalized[i]];
    x = x > 0.0f ? x / s.penalty : x * s.penalty;
  }
  auto value = [&](int64_t i) { return std::isnan(l[i]) ? -INFINITY : l[i]; };
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i)
    if (value(i) > -INFINITY && (best < 0 || value(i) > value(best))) best = i;
  if (best < 0) return -1;
  if (s.temperature == 0.0f) return int32_t(best);

  std::vector<float> z(static_cast<size_t>(n));
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    z[size_t(i)] = value(i) / s.temperature;
    if (z[size_t(i)] > -INFINITY) kept.push_back(i);
  }
  if (s.top_k > 0 && s.top_k < int64_t(kept.size())) {
    // Stable: among equal logits the lower index comes first.
    std::stable_sort(kept.begin(), kept.end(), [&](int64_t a, int64_t b) { return z[size_t(a)] > z[size_t(b)]; });
    kept.resize(size_t(s.top_k));
    std::sort(kept.begin(), kept.end());
  }
  // Unnormalised probabilities relative to the most likely token (whose e is 1), so min_p
  // compares against e directly.
  const float m = z[size_t(best)];
  if (std::isinf(m)) return int32_t(best);  // a temperature so small that it overflows: greedy
  std::vector<float> e(static_cast<size_t>(n), 0.0f);
  for (int64_t i : kept) {
    const float v = std::exp(z[size_t(i)] - m);
    e[size_t(i)] = v < s.min_p ? 0.0f : v;
  }
  if (s.top_p > 0.0f && s.top_p < 1.0f) {
    std::vector<float> desc;
    for (float v : e)
      if (v > 0.0f) desc.push_back(v);
    std::sort(desc.begin(), desc.end(), std::greater<>());
    const double target = double(s.top_p) * std::accumulate(desc.begin(), desc.end(), 0.0);
    double acc = 0;
    for (float v : desc) {
      acc += v;
      if (acc > target) {
        for (float& x : e)
          if (x < v) x = 0.0f;
        break;
      }
    }
  }
  const double total = std::accumulate(e.begin(), e.end(), 0.0);
  const double r = double(s.coin) * total;
  double acc = 0;
  int64_t last = best;
  for (int64_t i = 0; i < n; ++i) {
    if (e[size_t(i)] == 0.0f) continue;
    acc += e[size_t(i)];
    last = i;
    if (r < acc) return int32_t(i);
  }
  return int32_t(last);  // rounding left the cumulative mass just below r
}

}  // namespace sinkserve::cpu
