#include "runtime/conversation.h"

#include <algorithm>
#include <utility>

namespace sinkserve {

ChatFormat::ChatFormat(const Tokenizer& tok, ChatTemplate tmpl, bool add_bos)
    : tok_(tok), tmpl_(tmpl), add_bos_(add_bos && tok.bos() >= 0), stops_(sinkserve::stop_strings(tmpl)) {
  for (int32_t t : {tok_.eos(), tok_.eot(), tok_.eom(), tok_.bos()})
    if (t >= 0) end_tokens_.push_back(t);
  for (const std::string& s : stops_)
    if (int32_t t = tok_.find(s); t >= 0) end_tokens_.push_back(t);
}

std::vector<int32_t> ChatFormat::encode_turn(const std::vector<ChatMessage>& messages, bool first_turn,
                                             bool stream_start, std::span<const int32_t> carry) const {
  const std::string text = render_turn(tmpl_, messages, first_turn, true);
  std::vector<int32_t> ids(carry.begin(), carry.end());
  if (stream_start && add_bos_) ids.push_back(tok_.bos());
  const std::vector<int32_t> body = tok_.encode(text, false);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

bool ChatFormat::ends_reply(int32_t token) const {
  return std::find(end_tokens_.begin(), end_tokens_.end(), token) != end_tokens_.end();
}

std::string StopMatcher::push(const std::string& text, bool* hit) {
  held_ += text;
  size_t first = std::string::npos;
  for (const std::string& s : stops_)
    if (size_t p = held_.find(s); p != std::string::npos) first = std::min(first, p);
  if (first != std::string::npos) {
    *hit = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Keep the longest tail that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const std::string& s : stops_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() { return std::exchange(held_, {}); }

}  // namespace sinkserve
