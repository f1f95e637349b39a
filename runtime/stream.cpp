#include "runtime/stream.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace sinkserve {

Stream::Stream(Lockstep& ls, SampleOn sample_on, int64_t offset)
    : ls_(ls), sample_on_(sample_on), offset_(offset) {
  slot_ = ls_.acquire();
  if (slot_ < 0) throw std::runtime_error("no free cache slot for a new stream");
  ls_.reset(slot_, offset_);
}

Stream::Stream(Lockstep& ls, SessionIO& io, const SessionSnapshot& saved, const std::string& source,
               SampleOn sample_on)
    : ls_(ls), sample_on_(sample_on), offset_(saved.offset), n_(saved.tokens) {
  slot_ = ls_.acquire();
  if (slot_ < 0) throw std::runtime_error("no free cache slot to restore a stream into");
  try {
    io.restore(slot_, saved, source);
  } catch (...) {
    ls_.release(slot_);
    throw;
  }
}

Stream::~Stream() { ls_.release(slot_); }

void Stream::feed(std::span<const int32_t> tokens, float* logits, bool all) {
  run(tokens, logits, all, nullptr, nullptr);
}

int32_t Stream::feed_and_sample(std::span<const int32_t> tokens, Sampler& sampler) {
  if (tokens.empty()) throw std::invalid_argument("feed_and_sample: no tokens to follow");
  if (sample_on_ == SampleOn::Host) {
    logits_.resize(size_t(ls_.model().config().vocab));
    run(tokens, logits_.data(), false, nullptr, nullptr);
    return sampler.sample(logits_.data(), int(logits_.size()));
  }
  const SampleSpec spec = sampler.next_spec();
  int32_t t = -1;
  run(tokens, nullptr, false, &spec, &t);
  if (t < 0) throw std::runtime_error("sampling: the model gave no finite logit");
  return t;
}

void Stream::run(std::span<const int32_t> tokens, float* logits, bool all, const SampleSpec* spec,
                 int32_t* sampled) {
  const CacheConfig& cfg = ls_.cache().config();
  const int64_t vocab = ls_.model().config().vocab;
  if (cfg.policy == Policy::Recompute) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      recent_.push_back(tokens[i]);
      if (int64_t(recent_.size()) > cfg.window) recent_.pop_front();
      // The window is rebuilt from nothing, so only tokens whose logits are wanted need a pass.
      const bool last = i + 1 == tokens.size();
      if (!all && !last) continue;
      window_.assign(recent_.begin(), recent_.end());
      ls_.reset(slot_, offset_);
      const SeqStep step{slot_, window_.data(), int(window_.size()), false};
      ls_.step({&step, 1}, logits ? logits + (all ? int64_t(i) * vocab : 0) : nullptr,
               last ? spec : nullptr, last ? sampled : nullptr);
    }
    n_ += int64_t(tokens.size());
    return;
  }
  for (size_t i = 0; i < tokens.size(); i += size_t(cfg.chunk)) {
    const int n = int(std::min<size_t>(size_t(cfg.chunk), tokens.size() - i));
    const bool last = i + size_t(n) == tokens.size();
    const SeqStep step{slot_, tokens.data() + i, n, all};
    float* out = logits && (all || last) ? logits + (all ? int64_t(i) * vocab : 0) : nullptr;
    ls_.step({&step, 1}, out, last ? spec : nullptr, last ? sampled : nullptr);
  }
  n_ += int64_t(tokens.size());
}

}  // namespace sinkserve
