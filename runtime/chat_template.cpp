#include "runtime/chat_template.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <stdexcept>
#include <utility>

namespace sinkserve {
namespace {

struct NamedTemplate {
  std::string_view name;
  ChatTemplate t;
};
constexpr std::array<NamedTemplate, 8> kNames = {{{"raw", ChatTemplate::Raw},
                                                  {"llama-2", ChatTemplate::Llama2},
                                                  {"llama2", ChatTemplate::Llama2},
                                                  {"chatml", ChatTemplate::ChatML},
                                                  {"llama-3", ChatTemplate::Llama3},
                                                  {"llama3", ChatTemplate::Llama3},
                                                  {"vicuna", ChatTemplate::Vicuna},
                                                  {"zephyr", ChatTemplate::Zephyr}}};

enum class Role { System, User, Assistant };

Role parse_role(const std::string& role) {
  if (role == "system") return Role::System;
  if (role == "user") return Role::User;
  if (role == "assistant") return Role::Assistant;
  throw std::invalid_argument("chat template: unknown role '" + role +
                              "' (expected system, user or assistant)");
}

// Markup around a message's content. Every family but llama-2 is "open + content + close" per
// message, and the generation prompt is the assistant's opening.
std::pair<std::string, std::string> wrap(ChatTemplate t, const std::string& role) {
  switch (t) {
    case ChatTemplate::ChatML:
      return {"<|im_start|>" + role + "\n", "<|im_end|>\n"};
    case ChatTemplate::Llama3:
      return {"<|start_header_id|>" + role + "<|end_header_id|>\n\n", "<|eot_id|>"};
    case ChatTemplate::Zephyr:
      return {"<|" + role + "|>\n", "</s>\n"};
    case ChatTemplate::Vicuna:
      if (role == "user") return {"USER: ", "\n"};
      if (role == "assistant") return {"ASSISTANT:", "</s>\n"};
      return {"", "\n"};
    case ChatTemplate::Llama2:  // rendered by Renderer::llama2_message
    case ChatTemplate::Raw:
      break;
  }
  return {"", ""};
}

// Text that ends an assistant reply in the conversation: what the incremental renderer must supply
// for the previous reply, whose stop marker was sampled but never fed to the model.
std::string reply_close(ChatTemplate t) {
  if (t == ChatTemplate::Llama2) return " </s>";
  return wrap(t, "assistant").second;
}

class Renderer {
 public:
  Renderer(ChatTemplate t, bool at_start) : t_(t), at_start_(at_start) {}

  void message(const ChatMessage& m) {
    const Role role = parse_role(m.role);
    if (t_ == ChatTemplate::Llama2) {
      llama2_message(role, m.content);
      if (role == Role::System) return;  // held for the next user message: nothing written yet
    } else {
      auto [open, close] = wrap(t_, m.role);
      out_ += open;
      out_ += m.content;
      out_ += close;
    }
    at_start_ = false;
  }

  std::string finish(bool add_generation_prompt) {
    if (!pending_system_.empty())
      throw std::invalid_argument("chat template llama-2: a system message must be followed by a "
                                  "user message, which carries it");
    // llama-2's user markup already ends with "[/INST]", where the reply begins.
    if (add_generation_prompt && t_ != ChatTemplate::Llama2) out_ += wrap(t_, "assistant").first;
    return std::move(out_);
  }

  void append(std::string_view text) { out_ += text; }

 private:
  // Meta's format: the system prompt is folded into the next user message, and every user message
  // after the first opens a new "<s>" sequence (the first one's BOS is the tokenizer's).
  void llama2_message(Role role, const std::string& content) {
    switch (role) {
      case Role::System:
        pending_system_ += content;
        return;
      case Role::User:
        if (!at_start_) out_ += "<s>";
        out_ += "[INST] ";
        if (!pending_system_.empty()) {
          out_ += "<<SYS>>\n" + pending_system_ + "\n<</SYS>>\n\n";
          pending_system_.clear();
        }
        out_ += content;
        out_ += " [/INST]";
        return;
      case Role::Assistant:
        out_ += content;
        out_ += reply_close(t_);
        return;
    }
  }

  ChatTemplate t_;
  bool at_start_;
  std::string pending_system_;
  std::string out_;
};

}  // namespace

ChatTemplate detect_chat_template(std::string_view jinja) {
  auto has = [&](std::string_view s) { return jinja.find(s) != std::string_view::npos; };
  if (has("<|im_start|>")) return ChatTemplate::ChatML;
  if (has("<|start_header_id|>")) return ChatTemplate::Llama3;
  if (has("[INST]")) return ChatTemplate::Llama2;
  if (has("<|user|>")) return ChatTemplate::Zephyr;
  if (has("USER:") || has("ASSISTANT:")) return ChatTemplate::Vicuna;
  return ChatTemplate::Raw;
}

ChatTemplate parse_chat_template_name(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const NamedTemplate& n : kNames)
    if (n.name == lower) return n.t;
  throw std::invalid_argument("unknown chat template '" + name +
                              "' (valid: raw, llama-2, chatml, llama-3, vicuna, zephyr)");
}

std::string_view chat_template_name(ChatTemplate t) {
  for (const NamedTemplate& n : kNames)
    if (n.t == t) return n.name;
  throw std::invalid_argument("chat_template_name: invalid ChatTemplate value");
}

std::string render_conversation(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  Renderer r(t, /*at_start=*/true);
  for (const ChatMessage& m : messages) r.message(m);
  return r.finish(add_generation_prompt);
}

std::string render_turn(ChatTemplate t, const std::vector<ChatMessage>& new_messages,
                        bool first_turn, bool add_generation_prompt) {
  Renderer r(t, first_turn);
  if (!first_turn) r.append(reply_close(t));
  for (const ChatMessage& m : new_messages) r.message(m);
  return r.finish(add_generation_prompt);
}

std::vector<std::string> stop_strings(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::Raw: return {};
    case ChatTemplate::Llama2: return {"</s>"};
    case ChatTemplate::ChatML: return {"<|im_end|>"};
    case ChatTemplate::Llama3: return {"<|eot_id|>"};
    case ChatTemplate::Vicuna: return {"</s>", "USER:"};
    case ChatTemplate::Zephyr: return {"</s>", "<|user|>"};
  }
  throw std::invalid_argument("stop_strings: invalid ChatTemplate value");
}

bool chat_template_adds_bos(ChatTemplate t) {
  // ChatML models (Qwen, Yi) start directly with <|im_start|>; the others are llama/mistral
  // fine-tunes whose conversations open with BOS.
  return t != ChatTemplate::ChatML;
}

}  // namespace sinkserve
