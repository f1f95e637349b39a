// Picks the next token from logits: greedy, temperature, top-k, top-p, min-p, repetition penalty.
// Deterministic for a given seed.
#pragma once
#include <cstdint>
#include <vector>

namespace sinkserve {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax)
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  float repeat_penalty = 1.0f;  // 1 = off; applied over the last repeat_last_n tokens
  int repeat_last_n = 64;
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // Chooses a token from `logits` (n values; may be modified in place).
  int32_t sample(float* logits, int n);
  // Records a token of the stream (prompt or generated) for the repetition penalty.
  void accept(int32_t token);
  const SamplingParams& params() const { return p_; }

 private:
  float next_uniform();  // [0, 1)
  SamplingParams p_;
  uint64_t rng_;
  std::vector<int32_t> recent_;  // ring of the last repeat_last_n tokens
  size_t recent_pos_ = 0;
  std::vector<std::pair<float, int32_t>> work_;
};

}  // namespace sinkserve
