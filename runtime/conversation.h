// A conversation as `chat` and `serve` both hold it: one cache stream that each turn extends by
// only its new messages, rendered incrementally by the chat template. This is the single place
// that decides how a turn becomes tokens (the carried token, BOS, the rendered messages), which
// tokens end a reply, and which strings in the reply's text end it, so that both commands encode
// the same conversation to the same tokens and stop it at the same point.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "runtime/chat_template.h"
#include "runtime/tokenizer.h"

namespace sinkserve {

class ChatFormat {
 public:
  // `add_bos`: the conversation opens with BOS (chat_opens_with_bos; ignored without a BOS token).
  // The tokenizer must outlive the format.
  ChatFormat(const Tokenizer& tok, ChatTemplate tmpl, bool add_bos);

  ChatTemplate chat_template() const { return tmpl_; }
  bool opens_with_bos() const { return add_bos_; }

  // A turn's tokens: `carry` first, then BOS at the start of the stream when
  // the format opens with it, then `messages` rendered as the conversation's first turn or a later
  // one, ending in the generation prompt. `carry` is the previous reply's last token when that
  // reply was cut off by length: sampled but not yet fed. A reply that ended on a stop marker or
  // string carries nothing (the marker is no part of the reply). Throws std::invalid_argument for
  // messages the template cannot render.
  std::vector<int32_t> encode_turn(const std::vector<ChatMessage>& messages, bool first_turn,
                                   bool stream_start, std::span<const int32_t> carry = {}) const;

  // A generated token that ends the reply and is never fed: end of text, turn or message, BOS
  // (which some models produce between stories), or a stop marker of the template that is one
  // vocabulary token. The next turn's markup closes the reply instead (see chat_template.h).
  bool ends_reply(int32_t token) const;
  // The template's stop markers, to match in the reply's text (beside the request's own).
  const std::vector<std::string>& stop_strings() const { return stops_; }

 private:
  const Tokenizer& tok_;
  ChatTemplate tmpl_;
  bool add_bos_;
  std::vector<std::string> stops_;
  std::vector<int32_t> end_tokens_;
};

// Generated text checked against stop strings as it grows: text that could still become the
// start of a stop string is held back until it cannot.
class StopMatcher {
 public:
  StopMatcher() = default;
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Adds text; returns what is now certain to be output. Sets `hit` when a stop string matched:
  // the output then ends just before it, and whatever followed is dropped.
  std::string push(const std::string& text, bool* hit);
  // The text held back, at the end of the reply.
  std::string flush();

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

}  // namespace sinkserve
