// Picks the next token from logits: greedy, temperature, top-k, top-p, min-p, repetition penalty.
// Deterministic for a given seed. With only temperature and top_p set, the float operations and
// the random stream are exactly those of llama2.c's run.c, so its outputs reproduce bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace sinkserve {

// Where tokens are drawn: on the host from logits copied out of the backend (Sampler::sample), or
// on the backend (next_spec), whose logits then never leave it.
enum class SampleOn { Host, Backend };

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax)
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 (or 0, as in llama2.c) = off
  float min_p = 0.0f;        // 0 = off
  float repeat_penalty = 1.0f;  // 1 = off; applied over the last repeat_last_n tokens
  int repeat_last_n = 64;
  uint64_t seed = 0;         // xorshift64* state; 0 maps to a fixed non-zero state
};

class Sampler {
 public:
  // Throws std::invalid_argument naming the first parameter out of range.
  explicit Sampler(const SamplingParams& p);
  // Chooses a token from `logits` (n values; may be modified in place). Throws
  // std::invalid_argument for n < 1 or a NaN logit, std::out_of_range when a penalised token is
  // not below n.
  int32_t sample(float* logits, int n);
  // The next draw as a SampleSpec for Backend::sample, consuming the coin sample() would: the same
  // distribution as sample(), though the backend walks the candidates in vocabulary order rather
  // than by probability, so a seed picks other tokens. The spec points into this sampler and is
  // valid until its next call.
  SampleSpec next_spec();
  // Records a token of the stream (prompt or generated) for the repetition penalty.
  void accept(int32_t token);

 private:
  // Same layout as llama2.c's ProbIndex: sorted with std::qsort so that ties between equal
  // probabilities order exactly as in llama2.c on the same C library.
  struct Candidate {
    float prob;
    int32_t index;
  };
  float next_uniform();  // [0, 1)
  void apply_repetition_penalty(float* logits, int n);
  void collect_distinct_recent();
  int32_t sample_mult(const float* probs, int n, float coin) const;
  int32_t sample_topp(const float* probs, int n, float coin);
  SamplingParams p_;
  uint64_t rng_;
  std::vector<int32_t> recent_;  // ring of the last repeat_last_n tokens
  size_t recent_pos_ = 0;
  std::vector<Candidate> work_;
  std::vector<int32_t> distinct_;  // scratch for the repetition penalty
};

}  // namespace sinkserve
