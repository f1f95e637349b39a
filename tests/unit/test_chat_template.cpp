// Chat templates: exact renderings of a reference conversation per family, the incremental
// renderer's concatenation property, detection from GGUF Jinja text, names and stop strings.
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/chat_template.h"

namespace sinkserve {
namespace {

const ChatTemplate kAll[] = {ChatTemplate::Raw,    ChatTemplate::Llama2, ChatTemplate::ChatML,
                             ChatTemplate::Llama3, ChatTemplate::Vicuna, ChatTemplate::Zephyr};

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Bye"}};

struct Expected {
  ChatTemplate t;
  const char* text;
};

TEST(ChatTemplate, RendersTheReferenceConversation) {
  const Expected cases[] = {
      {ChatTemplate::Raw, "Be brief.HiHello!Bye"},
      {ChatTemplate::Llama2,
       "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]Hello! </s><s>[INST] Bye [/INST]"},
      {ChatTemplate::ChatML,
       "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
       "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
       "<|im_start|>assistant\n"},
      {ChatTemplate::Llama3,
       "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
       "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
       "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
       "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
       "<|start_header_id|>assistant<|end_header_id|>\n\n"},
      {ChatTemplate::Vicuna, "Be brief.\nUSER: Hi\nASSISTANT:Hello!</s>\nUSER: Bye\nASSISTANT:"},
      {ChatTemplate::Zephyr,
       "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\nBye</s>\n"
       "<|assistant|>\n"},
  };
  for (const Expected& e : cases)
    EXPECT_EQ(render_conversation(e.t, kConversation, true), e.text) << chat_template_name(e.t);
}

TEST(ChatTemplate, WithoutGenerationPromptEndsAfterTheLastMessage) {
  const std::vector<ChatMessage> m = {{"user", "Hi"}, {"assistant", "Yo"}};
  EXPECT_EQ(render_conversation(ChatTemplate::ChatML, m, false),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n");
  EXPECT_EQ(render_conversation(ChatTemplate::Llama2, m, false), "[INST] Hi [/INST]Yo </s>");
  EXPECT_EQ(render_conversation(ChatTemplate::Zephyr, {{"user", "Hi"}}, false), "<|user|>\nHi</s>\n");
  EXPECT_EQ(render_conversation(ChatTemplate::Vicuna, {{"user", "Hi"}}, false), "USER: Hi\n");
}

// A session: each turn's new messages and the reply the model generated for it.
struct Turn {
  std::vector<ChatMessage> messages;
  std::string reply;
};

void expect_incremental_equals_full(ChatTemplate t, const std::vector<Turn>& turns) {
  std::string incremental;
  std::vector<ChatMessage> history;
  for (size_t k = 0; k < turns.size(); ++k) {
    incremental += render_turn(t, turns[k].messages, k == 0, true);
    history.insert(history.end(), turns[k].messages.begin(), turns[k].messages.end());
    // Before the reply: exactly what the model sees when it starts generating turn k's answer.
    ASSERT_EQ(incremental, render_conversation(t, history, true))
        << chat_template_name(t) << " turn " << k;
    incremental += turns[k].reply;
    history.push_back({"assistant", turns[k].reply});
  }
}

TEST(ChatTemplate, IncrementalTurnsConcatenateToTheFullConversation) {
  const std::vector<std::vector<Turn>> sessions = {
      {{{{"system", "You are terse."}, {"user", "What is 2+2?"}}, " 4"},
       {{{"user", "And 3+3?"}}, " 6."},
       {{{"user", "Thanks\nbye"}}, " Bye!\n"}},
      {{{{"user", "Tell me a story."}}, "Once upon a time..."},
       {{{"user", "Shorter."}}, "The end."}},
      {{{{"system", "S"}, {"user", "u1"}}, "a1"},
       {{{"system", "Now be formal."}, {"user", "u2"}}, "a2"},
       {{{"user", ""}}, ""}},
  };
  for (ChatTemplate t : kAll)
    for (const auto& s : sessions) expect_incremental_equals_full(t, s);
}

TEST(ChatTemplate, LaterTurnsCloseThePreviousReply) {
  EXPECT_EQ(render_turn(ChatTemplate::ChatML, {{"user", "x"}}, false, true),
            "<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_turn(ChatTemplate::Llama2, {{"user", "x"}}, false, true), " </s><s>[INST] x [/INST]");
  EXPECT_EQ(render_turn(ChatTemplate::Llama2, {{"user", "x"}}, true, true), "[INST] x [/INST]");
  EXPECT_EQ(render_turn(ChatTemplate::Llama3, {{"user", "x"}}, false, false),
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
  EXPECT_EQ(render_turn(ChatTemplate::Vicuna, {{"user", "x"}}, false, true), "</s>\nUSER: x\nASSISTANT:");
  EXPECT_EQ(render_turn(ChatTemplate::Zephyr, {{"user", "x"}}, false, true),
            "</s>\n<|user|>\nx</s>\n<|assistant|>\n");
  EXPECT_EQ(render_turn(ChatTemplate::Raw, {{"user", "x"}}, false, true), "x");
}

// Whatever markup closes a reply must trip a stop string, or a model that writes it as text would
// run on into an invented next turn.
TEST(ChatTemplate, StopStringsCatchTheReplyClosing) {
  for (ChatTemplate t : kAll) {
    const std::string close = render_turn(t, {}, false, false);
    const std::vector<std::string> stops = stop_strings(t);
    if (t == ChatTemplate::Raw) {
      EXPECT_TRUE(close.empty());
      EXPECT_TRUE(stops.empty());
      continue;
    }
    bool caught = false;
    for (const std::string& s : stops) caught |= close.find(s) != std::string::npos;
    EXPECT_TRUE(caught) << chat_template_name(t) << " closing '" << close << "'";
  }
  EXPECT_EQ(stop_strings(ChatTemplate::ChatML), std::vector<std::string>{"<|im_end|>"});
  EXPECT_EQ(stop_strings(ChatTemplate::Llama3), std::vector<std::string>{"<|eot_id|>"});
  EXPECT_EQ(stop_strings(ChatTemplate::Vicuna), (std::vector<std::string>{"</s>", "USER:"}));
}

TEST(ChatTemplate, BosConvention) {
  EXPECT_FALSE(chat_template_adds_bos(ChatTemplate::ChatML));
  for (ChatTemplate t : {ChatTemplate::Raw, ChatTemplate::Llama2, ChatTemplate::Llama3,
                         ChatTemplate::Vicuna, ChatTemplate::Zephyr})
    EXPECT_TRUE(chat_template_adds_bos(t)) << chat_template_name(t);
}

TEST(ChatTemplate, DetectsFamiliesFromJinja) {
  EXPECT_EQ(detect_chat_template(
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"),
            ChatTemplate::ChatML);
  EXPECT_EQ(detect_chat_template("{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"),
            ChatTemplate::Llama2);
  EXPECT_EQ(detect_chat_template("{% set content = '<|start_header_id|>' + message['role'] + "
                                 "'<|end_header_id|>\\n\\n' + message['content'] | trim + "
                                 "'<|eot_id|>' %}"),
            ChatTemplate::Llama3);
  EXPECT_EQ(detect_chat_template("{% if message['role'] == 'user' %}{{ '<|user|>\\n' + "
                                 "message['content'] + eos_token }}{% endif %}"),
            ChatTemplate::Zephyr);
  EXPECT_EQ(detect_chat_template("{{ 'USER: ' + message['content'] + ' ' }}{{ 'ASSISTANT:' }}"),
            ChatTemplate::Vicuna);
  EXPECT_EQ(detect_chat_template(""), ChatTemplate::Raw);
  EXPECT_EQ(detect_chat_template("{{ messages[0]['content'] }}"), ChatTemplate::Raw);
}

TEST(ChatTemplate, ParsesNames) {
  for (ChatTemplate t : kAll) EXPECT_EQ(parse_chat_template_name(std::string(chat_template_name(t))), t);
  EXPECT_EQ(parse_chat_template_name("ChatML"), ChatTemplate::ChatML);
  EXPECT_EQ(parse_chat_template_name("llama2"), ChatTemplate::Llama2);
  EXPECT_EQ(parse_chat_template_name("LLAMA3"), ChatTemplate::Llama3);
  try {
    parse_chat_template_name("alpaca");
    FAIL() << "alpaca accepted";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'alpaca'"), std::string::npos) << what;
    for (const char* n : {"raw", "llama-2", "chatml", "llama-3", "vicuna", "zephyr"})
      EXPECT_NE(what.find(n), std::string::npos) << what;
  }
}

TEST(ChatTemplate, RejectsBadMessages) {
  for (ChatTemplate t : kAll) {
    EXPECT_THROW(render_conversation(t, {{"tool", "x"}}, true), std::invalid_argument);
    EXPECT_THROW(render_turn(t, {{"User", "x"}}, true, true), std::invalid_argument);
  }
  EXPECT_THROW(render_conversation(ChatTemplate::Llama2, {{"system", "s"}}, true),
               std::invalid_argument);
}

}  // namespace
}  // namespace sinkserve
