// Checks of Backend::sample that hold for every backend (the CPU unit tests and the GPU tests run
// them): stratified draws reproduce the reference distribution (sample_reference.h), the draw walks
// the vocabulary in order, greedy ties and non-finite rows, and bad specs are refused.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "tests/backend_io.h"
#include "tests/sample_reference.h"

namespace sinkserve::test {

// Samples `rows` copies of `row`, row i with spec `s` and coin (i + 0.5) / rows. The backend
// works on its own copy (sample() may modify the logits).
inline std::vector<int32_t> sample_copies(Backend& be, const std::vector<float>& row, SampleSpec s,
                                          int rows, bool stratified = true) {
  const size_t w = row.size();
  std::vector<float> all;
  for (int i = 0; i < rows; ++i) all.insert(all.end(), row.begin(), row.end());
  std::vector<SampleSpec> specs(static_cast<size_t>(rows), s);
  if (stratified)
    for (int i = 0; i < rows; ++i) specs[size_t(i)].coin = float((i + 0.5) / rows);
  float* d = to_backend(be, all);
  std::vector<int32_t> out(static_cast<size_t>(rows), -7);
  be.sample(d, rows, int64_t(w), specs.data(), out.data());
  be.release(d);
  return out;
}

// A row with ties, a NaN and a -inf among random logits.
inline std::vector<float> awkward_row(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> row(n);
  for (float& x : row) x = d(rng);
  row[3] = std::numeric_limits<float>::quiet_NaN();
  row[5] = -INFINITY;
  row[7] = row[11] = row[13] = 2.5f;  // ties with each other
  return row;
}

inline void check_stratified_draws_follow_reference(Backend& be) {
  const std::vector<float> row = awkward_row(61, 5);
  const int32_t pen[] = {7, 20, 40};
  struct Case {
    std::string name;
    SampleSpec s;
  };
  std::vector<Case> cases;
  auto add = [&](std::string name, float t, int k, float p, float mp, float penalty) {
    SampleSpec s;
    s.temperature = t;
    s.top_k = k;
    s.top_p = p;
    s.min_p = mp;
    if (penalty != 1.0f) {
      s.penalty = penalty;
      s.penalized = pen;
      s.n_penalized = 3;
    }
    cases.push_back({std::move(name), s});
  };
  add("greedy", 0.0f, 0, 1.0f, 0.0f, 1.0f);
  add("temperature 1", 1.0f, 0, 1.0f, 0.0f, 1.0f);
  add("temperature 0.5", 0.5f, 0, 1.0f, 0.0f, 1.0f);
  add("top_k 2 (boundary inside a tie)", 1.0f, 2, 1.0f, 0.0f, 1.0f);
  add("top_k 10", 1.3f, 10, 1.0f, 0.0f, 1.0f);
  add("top_p 0.6", 1.0f, 0, 0.6f, 0.0f, 1.0f);
  add("top_p 0.95", 0.8f, 0, 0.95f, 0.0f, 1.0f);
  add("min_p 0.1", 1.0f, 0, 1.0f, 0.1f, 1.0f);
  add("penalty", 1.0f, 0, 1.0f, 0.0f, 1.4f);
  add("everything", 0.7f, 12, 0.9f, 0.05f, 1.2f);
  const int N = 4000;
  for (const Case& c : cases) {
    const std::vector<double> want = sample_distribution(row, c.s);
    const std::vector<int32_t> got = sample_copies(be, row, c.s, N);
    std::vector<double> freq(row.size(), 0.0);
    for (int32_t t : got) {
      ASSERT_GE(t, 0) << c.name;
      ASSERT_LT(t, int32_t(row.size())) << c.name;
      freq[size_t(t)] += 1.0 / N;
    }
    for (size_t j = 0; j < row.size(); ++j)
      EXPECT_NEAR(freq[j], want[j], 1.0 / N + 1e-5) << c.name << ", token " << j;
  }
}

inline void check_draw_walks_vocabulary_order(Backend& be) {
  const std::vector<float> row = {0.0f, 1.0f, -INFINITY, 3.0f, 0.5f, 2.0f};
  SampleSpec s;
  s.temperature = 1.0f;
  s.top_k = 4;  // keeps 3, 5, 1, 4
  s.coin = 0.0f;
  EXPECT_EQ(sample_copies(be, row, s, 1, false)[0], 1);
  s.coin = std::nextafter(1.0f, 0.0f);
  EXPECT_EQ(sample_copies(be, row, s, 1, false)[0], 5);
}

inline void check_greedy_ties_and_non_finite_rows(Backend& be) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  SampleSpec greedy;
  EXPECT_EQ(sample_copies(be, {1.0f, 4.0f, nan, 4.0f}, greedy, 1, false)[0], 1);
  EXPECT_EQ(sample_copies(be, {nan, -INFINITY, 0.0f}, greedy, 1, false)[0], 2);
  EXPECT_EQ(sample_copies(be, {nan, -INFINITY, nan}, greedy, 1, false)[0], -1);
  SampleSpec hot;
  hot.temperature = 1.0f;
  hot.top_p = 0.5f;
  EXPECT_EQ(sample_copies(be, {-INFINITY, nan}, hot, 1, false)[0], -1);
  EXPECT_EQ(sample_copies(be, {-INFINITY, 0.0f, nan}, hot, 1, false)[0], 1);
  hot.temperature = 1e-38f;  // the scaled logits overflow: greedy
  EXPECT_EQ(sample_copies(be, {1.0f, 3.0f, 2.0f}, hot, 1, false)[0], 1);
}

inline void check_bad_specs_are_refused(Backend& be) {
  const std::vector<float> row = {1.0f, 2.0f};
  auto refuse = [&](SampleSpec s, const char* what) {
    EXPECT_ANY_THROW(sample_copies(be, row, s, 1, false)) << what;
  };
  SampleSpec s;
  s.temperature = -1.0f;
  refuse(s, "negative temperature");
  s = {};
  s.top_p = 1.5f;
  refuse(s, "top_p above 1");
  s = {};
  s.min_p = std::numeric_limits<float>::quiet_NaN();
  refuse(s, "NaN min_p");
  s = {};
  s.coin = 1.0f;
  refuse(s, "coin of 1");
  s = {};
  s.top_k = -2;
  refuse(s, "negative top_k");
  const int32_t outside[] = {2};
  s = {};
  s.penalty = 1.1f;
  s.penalized = outside;
  s.n_penalized = 1;
  EXPECT_THROW(sample_copies(be, row, s, 1, false), std::out_of_range);
  const int32_t twice[] = {1, 0, 1};
  s.penalized = twice;
  s.n_penalized = 3;
  refuse(s, "a token penalized twice");
}

}  // namespace sinkserve::test
