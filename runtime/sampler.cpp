#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace sinkserve {
namespace {

// xorshift64* never leaves the all-zero state, so seed 0 would give a constant coin of 0.
constexpr uint64_t kZeroSeedState = 0x9E3779B97F4A7C15ull;

// llama2.c's ProbIndex comparator, descending. std::qsort with this exact comparator (rather than
// std::sort) keeps the order among equal probabilities identical to llama2.c's.
int compare_desc(const void* a, const void* b) {
  const float pa = *static_cast<const float*>(a);
  const float pb = *static_cast<const float*>(b);
  if (pa > pb) return -1;
  if (pa < pb) return 1;
  return 0;
}

int32_t argmax(const float* x, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;  // strict: the lowest index wins ties
  return best;
}

// llama2.c's softmax, operation for operation: max-subtract, expf, float sum, divide.
void softmax(float* x, int n) {
  float max_val = x[0];
  for (int i = 1; i < n; ++i)
    if (x[i] > max_val) max_val = x[i];
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max_val);
    sum += x[i];
  }
  for (int i = 0; i < n; ++i) x[i] /= sum;
}

void validate_logits(const float* logits, int n) {
  if (n < 1) throw std::invalid_argument("sampler: vocabulary size " + std::to_string(n) + " < 1");
  bool any_finite = false;
  for (int i = 0; i < n; ++i) {
    if (std::isnan(logits[i]))
      throw std::invalid_argument("sampler: logit of token " + std::to_string(i) + " is NaN");
    if (logits[i] == INFINITY)
      throw std::invalid_argument("sampler: logit of token " + std::to_string(i) + " is +inf");
    any_finite |= logits[i] != -INFINITY;
  }
  if (!any_finite) throw std::invalid_argument("sampler: every logit is -inf");
}

}  // namespace

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed ? p.seed : kZeroSeedState) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("sampler: " + what); };
  if (!(p.temperature >= 0.0f) || std::isinf(p.temperature))
    bad("temperature " + std::to_string(p.temperature) + " must be finite and >= 0");
  if (p.top_k < 0) bad("top_k " + std::to_string(p.top_k) + " must be >= 0");
  if (!(p.top_p >= 0.0f && p.top_p <= 1.0f))
    bad("top_p " + std::to_string(p.top_p) + " must be in [0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f))
    bad("min_p " + std::to_string(p.min_p) + " must be in [0, 1]");
  if (!(p.repeat_penalty > 0.0f) || std::isinf(p.repeat_penalty))
    bad("repeat_penalty " + std::to_string(p.repeat_penalty) + " must be finite and > 0");
  if (p.repeat_last_n < 0) bad("repeat_last_n " + std::to_string(p.repeat_last_n) + " must be >= 0");
  recent_.reserve(static_cast<size_t>(p.repeat_last_n));
}

float Sampler::next_uniform() {
  rng_ ^= rng_ >> 12;
  rng_ ^= rng_ << 25;
  rng_ ^= rng_ >> 27;
  const auto r = static_cast<uint32_t>((rng_ * 0x2545F4914F6CDD1Dull) >> 32);
  return static_cast<float>(r >> 8) / 16777216.0f;
}

void Sampler::accept(int32_t token) {
  if (token < 0) throw std::out_of_range("sampler: accepted token id " + std::to_string(token) + " < 0");
  if (p_.repeat_last_n == 0) return;
  if (recent_.size() < static_cast<size_t>(p_.repeat_last_n)) {
    recent_.push_back(token);
    return;
  }
  recent_[recent_pos_] = token;
  recent_pos_ = (recent_pos_ + 1) % recent_.size();
}

// Each distinct token is penalised once however often it recurs (llama.cpp semantics).
void Sampler::collect_distinct_recent() {
  distinct_.assign(recent_.begin(), recent_.end());
  std::sort(distinct_.begin(), distinct_.end());
  distinct_.erase(std::unique(distinct_.begin(), distinct_.end()), distinct_.end());
}

void Sampler::apply_repetition_penalty(float* logits, int n) {
  if (p_.repeat_penalty == 1.0f || recent_.empty()) return;
  collect_distinct_recent();
  for (int32_t t : distinct_) {
    if (t >= n)
      throw std::out_of_range("sampler: recent token " + std::to_string(t) +
                              " is outside the vocabulary of " + std::to_string(n));
    float& l = logits[t];
    l = l > 0.0f ? l / p_.repeat_penalty : l * p_.repeat_penalty;
  }
}

int32_t Sampler::sample_mult(const float* probs, int n, float coin) const {
  float cdf = 0.0f;
  int32_t last_nonzero = 0;
  for (int i = 0; i < n; ++i) {
    cdf += probs[i];
    if (coin < cdf) return i;
    if (probs[i] > 0.0f) last_nonzero = i;
  }
  // Rounding left the cdf below the coin. llama2.c returns n - 1, which is the same token whenever
  // that token has any mass; a token masked out by top-k or min-p must never come back here.
  return last_nonzero;
}

int32_t Sampler::sample_topp(const float* probs, int n, float coin) {
  // Tokens below (1 - top_p) / (n - 1) cannot belong to the nucleus: dropping them before the
  // sort is llama2.c's optimisation, and keeping it keeps the tie order of the sort identical.
  const float cutoff = (1.0f - p_.top_p) / static_cast<float>(n - 1);
  int n0 = 0;
  for (int i = 0; i < n; ++i)
    if (probs[i] >= cutoff) work_[n0++] = {probs[i], i};
  // With top_p below about 1/n every token can fall under the cutoff (llama2.c then reads out of
  // bounds); the nucleus is then the most likely token alone.
  if (n0 == 0) return argmax(probs, n);
  std::qsort(work_.data(), static_cast<size_t>(n0), sizeof(Candidate), compare_desc);

  float cumulative = 0.0f;
  int last = n0 - 1;
  for (int i = 0; i < n0; ++i) {
    cumulative += work_[i].prob;
    if (cumulative > p_.top_p) {
      last = i;
      break;
    }
  }
  const float r = coin * cumulative;
  float cdf = 0.0f;
  for (int i = 0; i <= last; ++i) {
    cdf += work_[i].prob;
    if (r < cdf) return work_[i].index;
  }
  return work_[last].index;
}

SampleSpec Sampler::next_spec() {
  SampleSpec s;
  s.temperature = p_.temperature;
  s.top_k = p_.top_k;
  s.top_p = p_.top_p;
  s.min_p = p_.min_p;
  if (p_.repeat_penalty != 1.0f && !recent_.empty()) {
    collect_distinct_recent();
    s.penalty = p_.repeat_penalty;
    s.penalized = distinct_.data();
    s.n_penalized = int32_t(distinct_.size());
  }
  if (p_.temperature != 0.0f) s.coin = next_uniform();
  return s;
}

int32_t Sampler::sample(float* logits, int n) {
  validate_logits(logits, n);
  apply_repetition_penalty(logits, n);
  if (p_.temperature == 0.0f) return argmax(logits, n);

  // Division, not multiplication by the reciprocal: llama2.c divides, and the results differ in
  // the last bit for most temperatures.
  for (int i = 0; i < n; ++i) logits[i] /= p_.temperature;
  if (work_.size() < static_cast<size_t>(n)) work_.resize(static_cast<size_t>(n));

  if (p_.top_k > 0 && p_.top_k < n) {
    // Masking to -inf before the softmax adds exact zeros to its sum, so the kept tokens get the
    // same probabilities as a softmax over them alone. Ties at the boundary keep the lowest index.
    for (int i = 0; i < n; ++i) work_[i] = {logits[i], i};
    auto before = [](const Candidate& a, const Candidate& b) {
      return a.prob > b.prob || (a.prob == b.prob && a.index < b.index);
    };
    std::nth_element(work_.begin(), work_.begin() + (p_.top_k - 1), work_.begin() + n, before);
    for (int i = p_.top_k; i < n; ++i) logits[work_[i].index] = -INFINITY;
  }

  softmax(logits, n);

  if (p_.min_p > 0.0f) {
    const float threshold = p_.min_p * logits[argmax(logits, n)];
    float kept = 0.0f;
    for (int i = 0; i < n; ++i) {
      if (logits[i] < threshold) logits[i] = 0.0f;
      kept += logits[i];
    }
    for (int i = 0; i < n; ++i) logits[i] /= kept;
  }

  const float coin = next_uniform();
  if (p_.top_p <= 0.0f || p_.top_p >= 1.0f) return sample_mult(logits, n, coin);
  return sample_topp(logits, n, coin);
}

}  // namespace sinkserve
