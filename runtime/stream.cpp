#include "runtime/stream.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace sinkserve {

Stream::Stream(Lockstep& ls, int64_t offset) : ls_(ls), offset_(offset) {
  slot_ = ls_.acquire();
  if (slot_ < 0) throw std::runtime_error("no free cache slot for a new stream");
  ls_.reset(slot_, offset_);
}

Stream::~Stream() { ls_.release(slot_); }

void Stream::feed(std::span<const int32_t> tokens, float* logits, bool all) {
  const CacheConfig& cfg = ls_.cache().config();
  const int64_t vocab = ls_.model().config().vocab;
  if (cfg.policy == Policy::Recompute) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      recent_.push_back(tokens[i]);
      if (int64_t(recent_.size()) > cfg.window) recent_.pop_front();
      // The window is rebuilt from nothing, so only tokens whose logits are wanted need a pass.
      if (!all && i + 1 != tokens.size()) continue;
      const std::vector<int32_t> window(recent_.begin(), recent_.end());
      ls_.reset(slot_, offset_);
      const SeqStep step{slot_, window.data(), int(window.size()), false};
      ls_.step({&step, 1}, logits + (all ? int64_t(i) * vocab : 0));
    }
    n_ += int64_t(tokens.size());
    return;
  }
  std::vector<float> scratch;
  for (size_t i = 0; i < tokens.size(); i += size_t(cfg.chunk)) {
    const int n = int(std::min<size_t>(size_t(cfg.chunk), tokens.size() - i));
    const bool last = i + size_t(n) == tokens.size();
    const SeqStep step{slot_, tokens.data() + i, n, all};
    float* out = logits + (all ? int64_t(i) * vocab : 0);
    if (!all && !last) {
      scratch.resize(size_t(vocab));
      out = scratch.data();
    }
    ls_.step({&step, 1}, out);
  }
  n_ += int64_t(tokens.size());
}

}  // namespace sinkserve
