// The conversation unit `chat` and `serve` share: how a turn becomes tokens (carried token, BOS,
// rendered messages, in that order), which sampled tokens end a reply, and how a reply's text is
// cut at a stop string without showing text that may still become one.
#include <gtest/gtest.h>

#include "runtime/conversation.h"
#include "runtime/hf_checkpoint.h"
#include "tests/fixtures.h"

namespace sinkserve {
namespace {

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class ChatFormatTest : public ::testing::Test {
 protected:
  std::unique_ptr<GGUFFile> file = open_model(test::fixture("models/stories260K.gguf"));
  std::unique_ptr<Tokenizer> tok = load_tokenizer(*file);
  const std::vector<ChatMessage> first{{"system", "Be kind."}, {"user", "Tell a story."}};
  const std::vector<ChatMessage> second{{"user", "Another one."}};
};

TEST_F(ChatFormatTest, TurnIsCarryThenBosThenRenderedMessages) {
  const ChatFormat f(*tok, ChatTemplate::Vicuna, true);
  ASSERT_GE(tok->bos(), 0);
  EXPECT_TRUE(f.opens_with_bos());
  const std::vector<int32_t> text1 = tok->encode(render_turn(ChatTemplate::Vicuna, first, true, true), false);
  const std::vector<int32_t> text2 = tok->encode(render_turn(ChatTemplate::Vicuna, second, false, true), false);
  ASSERT_FALSE(text1.empty());
  EXPECT_EQ(f.encode_turn(first, true, true), cat({tok->bos()}, text1));
  // A later turn: no BOS; a reply cut off by length feeds its last token first.
  EXPECT_EQ(f.encode_turn(second, false, false), text2);
  const std::vector<int32_t> carry{57};
  EXPECT_EQ(f.encode_turn(second, false, false, carry), cat(carry, text2));
  // A session that starts with a chat turn after raw text: first-turn markup, but no BOS.
  EXPECT_EQ(f.encode_turn(first, true, false), text1);
}

TEST_F(ChatFormatTest, BosOnlyWhenTheFormatOpensWithIt) {
  const ChatFormat f(*tok, ChatTemplate::ChatML, false);
  EXPECT_FALSE(f.opens_with_bos());
  EXPECT_EQ(f.encode_turn(first, true, true),
            tok->encode(render_turn(ChatTemplate::ChatML, first, true, true), false));
}

TEST_F(ChatFormatTest, UnrenderableMessagesThrow) {
  const ChatFormat f(*tok, ChatTemplate::ChatML, false);
  EXPECT_THROW(f.encode_turn({{"robot", "hi"}}, true, true), std::invalid_argument);
}

TEST_F(ChatFormatTest, EndsAndStops) {
  const ChatFormat f(*tok, ChatTemplate::Vicuna, true);
  EXPECT_EQ(f.stop_strings(), stop_strings(ChatTemplate::Vicuna));
  EXPECT_TRUE(f.ends_reply(tok->eos()));
  EXPECT_TRUE(f.ends_reply(tok->bos()));  // stories260K separates stories with BOS
  // "</s>" is the vocabulary's EOS token; "USER:" is several tokens, matched in the text instead.
  EXPECT_EQ(tok->find("</s>"), tok->eos());
  for (int32_t t : tok->encode("USER:", false)) EXPECT_FALSE(f.ends_reply(t)) << t;
  EXPECT_FALSE(f.ends_reply(tok->encode(" story", false).back()));
}

TEST(StopMatcher, HoldsBackWhatMayBecomeAStopString) {
  StopMatcher m({"END"});
  bool hit = false;
  EXPECT_EQ(m.push("Hello E", &hit), "Hello ");
  EXPECT_EQ(m.push("N", &hit), "");
  EXPECT_FALSE(hit);
  EXPECT_EQ(m.push("D and more", &hit), "");
  EXPECT_TRUE(hit);
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, ReleasesTextThatCannotStop) {
  StopMatcher m({"END"});
  bool hit = false;
  EXPECT_EQ(m.push("a E", &hit), "a ");
  EXPECT_EQ(m.push("X", &hit), "EX");
  EXPECT_EQ(m.push("tail EN", &hit), "tail ");
  EXPECT_EQ(m.flush(), "EN");  // the reply ended: what was held is output
  EXPECT_FALSE(hit);
}

TEST(StopMatcher, EarliestStopWins) {
  StopMatcher m({"bb", "a"});
  bool hit = false;
  EXPECT_EQ(m.push("xbbya", &hit), "x");
  EXPECT_TRUE(hit);
  StopMatcher none;
  hit = false;
  EXPECT_EQ(none.push("anything", &hit), "anything");
  EXPECT_FALSE(hit);
}

}  // namespace
}  // namespace sinkserve
