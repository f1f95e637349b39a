// One endless token stream through one cache slot, under the cache's policy. Long inputs are fed
// in chunks of at most the cache's chunk size; the recompute policy rebuilds the window's KV from
// scratch for every token (the correct but slow baseline of the StreamingLLM paper).
#pragma once
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <vector>

#include "runtime/lockstep.h"
#include "runtime/sampler.h"
#include "runtime/session_file.h"

namespace sinkserve {

class Stream {
 public:
  // Acquires a slot (throws std::runtime_error when none is free). feed_and_sample draws where
  // `sample_on` says. `offset` is the position of the stream's first token (a test hook: streams
  // must not depend on it).
  explicit Stream(Lockstep& ls, SampleOn sample_on = SampleOn::Host, int64_t offset = 0);
  // Continues a saved stream (SessionIO::restore) in a slot of its own. Throws SessionFileError
  // naming `source` when it does not fit this engine, std::runtime_error when no slot is free.
  Stream(Lockstep& ls, SessionIO& io, const SessionSnapshot& saved, const std::string& source,
         SampleOn sample_on = SampleOn::Host);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Appends tokens and writes logits (vocab floats per row) of the last token, or of every token
  // when `all` is set (tokens.size() rows).
  void feed(std::span<const int32_t> tokens, float* logits, bool all = false);
  // Appends tokens and draws the token that follows them with `sampler`: on the backend (no
  // logits leave it) or from host logits with sampler.sample(), as the stream was told. Throws
  // std::runtime_error when the model gave no finite logit.
  int32_t feed_and_sample(std::span<const int32_t> tokens, Sampler& sampler);
  int64_t tokens() const { return n_; }
  int slot() const { return slot_; }

 private:
  // `logits` (host) and `spec`/`sampled` may each be null.
  void run(std::span<const int32_t> tokens, float* logits, bool all, const SampleSpec* spec,
           int32_t* sampled);

  Lockstep& ls_;
  SampleOn sample_on_;
  int slot_;
  int64_t offset_;
  int64_t n_ = 0;
  std::deque<int32_t> recent_;  // recompute: the last `window` tokens
  std::vector<int32_t> window_;  // recompute: recent_ as one array for the step
  std::vector<float> logits_;   // feed_and_sample's on the host
};

}  // namespace sinkserve
