// Chat prompt formats of the common llama-family fine-tunes, rendered incrementally so that a
// persistent session feeds each turn's new text into a KV cache that already holds the
// conversation so far.
//
// Contract of the incremental renderer: the model's reply is in the cache as the tokens it
// generated, up to but excluding the stop marker that ended it (the end-of-turn token is sampled,
// never fed back). Then, for every template,
//   render_turn(turn 1, first_turn=true, gen=true) + reply 1 + render_turn(turn 2, false, true)
//   + reply 2 + ... + render_turn(turn k, false, true)
// equals render_conversation(all messages through turn k, with the replies as assistant messages
// whose content is the generated text verbatim, gen=true).
//
// The rendered text never begins with BOS: add it as a token on the first turn when
// chat_template_adds_bos() says so. Markup such as "<|im_end|>" or a later turn's "<s>" is meant
// to be tokenized as the vocabulary's control token of that text.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace sinkserve {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatTemplate {
  Raw,     // contents concatenated, no markup
  Llama2,  // <s>[INST] <<SYS>>\n...\n<</SYS>>\n\nuser [/INST]reply </s>
  ChatML,  // <|im_start|>role\n...<|im_end|>\n
  Llama3,  // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  Vicuna,  // system\nUSER: ...\nASSISTANT:reply</s>\n
  Zephyr,  // <|role|>\n...</s>\n
};

// The family of a GGUF's tokenizer.chat_template Jinja text, recognised by its markup; Raw when
// none matches (including an empty template).
ChatTemplate detect_chat_template(std::string_view jinja);

// "raw", "llama-2" ("llama2"), "chatml", "llama-3" ("llama3"), "vicuna", "zephyr"; case-insensitive.
// Throws std::invalid_argument naming the valid names.
ChatTemplate parse_chat_template_name(const std::string& name);
std::string_view chat_template_name(ChatTemplate t);

// The whole conversation; with add_generation_prompt it ends where the assistant's reply starts.
// Throws std::invalid_argument for an unknown role (or, for llama-2, a system message that no user
// message follows).
std::string render_conversation(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt);

// Only what a new turn adds: the closing markup of the previous assistant reply (unless
// first_turn), the new messages, and the generation prompt.
std::string render_turn(ChatTemplate t, const std::vector<ChatMessage>& new_messages,
                        bool first_turn, bool add_generation_prompt);

// Strings whose appearance in the generated text ends the reply (beside the vocabulary's EOS).
std::vector<std::string> stop_strings(ChatTemplate t);

// Whether the family's convention puts BOS before the first turn. A GGUF's explicit
// tokenizer.ggml.add_bos_token takes precedence over this default.
bool chat_template_adds_bos(ChatTemplate t);

}  // namespace sinkserve
