// The probability of every token under a SampleSpec (see kernels/backend.h), computed plainly in
// double with sorts: the reference the backends' sample() is held to. Ties at the top-k boundary
// keep the lowest indices; ties at the nucleus boundary all stay.
#pragma once
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/backend.h"

namespace sinkserve::test {

inline std::vector<double> sample_distribution(std::vector<float> logits, const SampleSpec& s) {
  const size_t n = logits.size();
  for (int i = 0; i < s.n_penalized; ++i) {
    float& x = logits[size_t(s.penalized[i])];
    x = x > 0.0f ? x / s.penalty : x * s.penalty;
  }
  std::vector<double> p(n, 0.0);
  std::vector<size_t> order;
  for (size_t i = 0; i < n; ++i)
    if (!std::isnan(logits[i]) && logits[i] > -INFINITY) order.push_back(i);
  if (order.empty()) return p;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  if (s.temperature == 0.0f) {
    p[order[0]] = 1.0;
    return p;
  }
  if (s.top_k > 0 && size_t(s.top_k) < order.size()) order.resize(size_t(s.top_k));
  const double m = double(logits[order[0]]) / s.temperature;
  std::vector<std::pair<double, size_t>> kept;  // (relative probability, token), descending
  for (size_t i : order) {
    const double e = std::exp(double(logits[i]) / s.temperature - m);
    if (e >= s.min_p) kept.push_back({e, i});
  }
  double total = 0;
  for (auto& [e, i] : kept) total += e;
  if (s.top_p > 0.0f && s.top_p < 1.0f) {
    double acc = 0;
    for (size_t j = 0; j < kept.size(); ++j) {
      acc += kept[j].first;
      if (acc > s.top_p * total) {
        const double boundary = kept[j].first;
        while (j + 1 < kept.size() && kept[j + 1].first == boundary) ++j;
        kept.resize(j + 1);
        break;
      }
    }
    total = 0;
    for (auto& [e, i] : kept) total += e;
  }
  for (auto& [e, i] : kept) p[i] = e / total;
  return p;
}

}  // namespace sinkserve::test
