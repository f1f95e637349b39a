// `sinkserve chat`: a multi-round dialogue through ONE persistent session. Each turn appends only
// its new text to the cache (rendered incrementally by the chat template) and the reply stays in
// the cache as generated, so the conversation is never re-encoded; the sink cache evicts the
// oldest turns by itself, and the session runs in constant memory for any number of rounds (the
// chatbot setting of the StreamingLLM paper, which streams all of MT-Bench through one session).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>

#include "launcher/command.h"
#include "launcher/engine_options.h"
#include "launcher/measure.h"
#include "runtime/chat_template.h"
#include "runtime/conversation.h"
#include "runtime/sampler.h"
#include "runtime/stream.h"

namespace sinkserve {
namespace {

// Ctrl-C during a reply ends that reply; at the user prompt (nothing to interrupt) it ends the
// program, as a shell user expects.
std::atomic<bool> g_generating{false};
std::atomic<bool> g_interrupted{false};

void on_sigint(int) {
  if (g_generating) {
    g_interrupted = true;
    return;
  }
  constexpr char nl = '\n';
  [[maybe_unused]] const ssize_t w = ::write(STDOUT_FILENO, &nl, 1);
  ::_exit(130);
}

// The user turns of an MT-Bench style file: one JSON object per line with a "turns" array of
// strings; all questions are flattened into one conversation.
std::vector<std::string> read_prompts(const std::string& path, int64_t questions) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot read --prompts '" + path + "'");
  std::vector<std::string> turns;
  std::string line;
  int64_t line_no = 0, taken = 0;
  while ((questions == 0 || taken < questions) && std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto where = [&] { return "--prompts " + path + " line " + std::to_string(line_no) + ": "; };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw UsageError(where() + "not JSON (" + e.what() + ")");
    }
    if (!j.is_object() || !j.contains("turns") || !j["turns"].is_array() || j["turns"].empty())
      throw UsageError(where() + "expected an object with a non-empty \"turns\" array");
    for (const auto& t : j["turns"]) {
      if (!t.is_string() || t.get<std::string>().empty())
        throw UsageError(where() + "every entry of \"turns\" must be a non-empty string");
      turns.push_back(t.get<std::string>());
    }
    ++taken;
  }
  if (turns.empty()) throw UsageError("--prompts '" + path + "' holds no questions");
  return turns;
}

// Streams a reply's text, cut at the template's stop strings (StopMatcher). Whitespace opening or
// closing a reply is not shown (it would only break the transcript's layout); the cache keeps the
// reply as generated.
class ReplyPrinter {
 public:
  explicit ReplyPrinter(std::vector<std::string> stops) : matcher_(std::move(stops)) {}

  // Adds decoded text; returns true when a stop string appeared (the text from it on is dropped).
  bool add(const std::string& piece) {
    if (stopped_) return true;
    show(matcher_.push(piece, &stopped_));
    return stopped_;
  }
  void finish() {
    if (!stopped_) show(matcher_.flush());
  }

 private:
  static bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }
  // Writes `text` after the whitespace held from before it, holding back its own trailing
  // whitespace: only text followed by more text shows it.
  void show(const std::string& text) {
    size_t begin = 0, end = text.size();
    if (!started_)
      while (begin < end && is_space(text[begin])) ++begin;
    while (end > begin && is_space(text[end - 1])) --end;
    if (begin == end) {
      if (started_) space_.append(text, begin, std::string::npos);
      return;
    }
    started_ = true;
    const std::string out = space_ + text.substr(begin, end - begin);
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fflush(stdout);
    space_.assign(text, end, std::string::npos);
  }
  StopMatcher matcher_;
  bool stopped_ = false;
  bool started_ = false;  // some text has been shown
  std::string space_;     // whitespace after the shown text, shown only if more text follows
};

int run(int argc, char** argv) {
  EngineFlags ef;
  SamplingFlags sf;
  std::string template_name, system_text, prompts_path;
  int64_t max_tokens = 256, questions = 0;
  ArgParser p("chat",
              "Multi-round chat through one persistent session: every turn appends only its new "
              "text to the KV cache, replies stay in the cache as generated, and the sink cache "
              "evicts the oldest context by itself, so a conversation of any length runs in "
              "constant memory. Reads one user turn per line from stdin (a terminal or a pipe; "
              "Ctrl-D ends, Ctrl-C stops a reply), or sends every turn of --prompts in order. "
              "Replies go to stdout; per-turn statistics to stderr.");
  add_engine_options(p, ef);
  add_sampling_options(p, sf);
  p.add("--template", "NAME",
        "chat format: raw, llama-2, chatml, llama-3, vicuna, zephyr (default: recognised from the "
        "GGUF's tokenizer.chat_template, raw when none fits)",
        &template_name);
  p.add("--system", "TEXT", "system message opening the conversation", &system_text);
  p.add("-n,--max-tokens", "N", "most tokens per reply (default 256)", &max_tokens);
  p.add("--prompts", "FILE", "JSON lines with a \"turns\" array each (MT-Bench format): send all turns in order", &prompts_path);
  p.add("--questions", "K", "with --prompts: only the first K lines (default all)", &questions);
  p.epilog("Tensor parallel: mpirun -np N sinkserve chat ... (rank 0 reads stdin).");
  if (!p.parse(argc, argv)) return 0;
  const EngineOptions eo = finish_engine_options(ef);
  const SamplingParams sp = finish_sampling_options(sf);
  if (max_tokens < 1) throw UsageError("--max-tokens must be >= 1");
  if (questions < 0) throw UsageError("--questions must be >= 0");
  if (questions > 0 && prompts_path.empty()) throw UsageError("--questions needs --prompts");
  std::optional<ChatTemplate> forced;
  if (!template_name.empty()) forced = parse_template_option(template_name);
  const bool scripted = !prompts_path.empty();
  const std::vector<std::string> scripted_turns =
      scripted ? read_prompts(prompts_path, questions) : std::vector<std::string>{};

  return run_engine_command("chat", eo, [&](Engine* e) -> int {
    const Tokenizer& tok = *e->tokenizer;
    const ChatTemplate tmpl = model_chat_template(*e, forced);
    const ChatFormat format(tok, tmpl, chat_opens_with_bos(*e, tmpl));
    const CacheConfig& cc = e->cache->config();
    const char* origin = forced                                             ? ""
                         : e->file->find_string("tokenizer.chat_template") ? " (recognised in the model)"
                                                                           : " (the model names none)";
    if (cc.policy == Policy::Dense)
      std::fprintf(stderr, "chat template: %s%s | cache: dense, %d tokens\n",
                   std::string(chat_template_name(tmpl)).c_str(), origin, cc.window);
    else
      std::fprintf(stderr, "chat template: %s%s | cache: %s, %d sink + %d window tokens\n",
                   std::string(chat_template_name(tmpl)).c_str(), origin, policy_name(cc.policy).c_str(),
                   cc.sink, cc.window);
    const bool tty = ::isatty(STDIN_FILENO);
    size_t next_scripted = 0;
    // The next user turn. A person at a terminal gets a prompt to type at; otherwise the turn is
    // echoed so that stdout reads as a transcript.
    auto next_turn = [&]() -> std::optional<std::string> {
      std::string line;
      if (scripted) {
        if (next_scripted == scripted_turns.size()) return std::nullopt;
        line = scripted_turns[next_scripted++];
      } else {
        if (tty) {
          std::fputs("USER: ", stdout);
          std::fflush(stdout);
        }
        do {
          if (!std::getline(std::cin, line)) {
            if (tty) std::fputc('\n', stdout);
            return std::nullopt;
          }
          if (!line.empty() && line.back() == '\r') line.pop_back();
        } while (line.find_first_not_of(" \t") == std::string::npos);
        if (tty) return line;
      }
      std::printf("USER: %s\n", line.c_str());
      return line;
    };

    std::signal(SIGINT, on_sigint);
    Sampler sampler(sp);
    {
      Stream stream(*e->lockstep, e->sample_on);
      KVCache& cache = *e->cache;
      // A reply's last token is sampled but not yet fed; it opens the next turn's prefill.
      std::vector<int32_t> pending;
      const auto ensure_room = [&](size_t n) {
        if (cc.policy == Policy::Dense && stream.tokens() + int64_t(n) > cc.window)
          throw std::runtime_error("the dense cache is full (" + std::to_string(stream.tokens()) + " of " +
                                   std::to_string(cc.window) +
                                   " tokens): use --policy sink for a conversation of any length, or a larger --ctx");
      };
      for (int turn = 1;; ++turn) {
        const std::optional<std::string> user = next_turn();
        if (!user) break;
        std::vector<ChatMessage> msgs;
        if (turn == 1 && !system_text.empty()) msgs.push_back({"system", system_text});
        msgs.push_back({"user", *user});
        const std::vector<int32_t> ids = format.encode_turn(msgs, turn == 1, turn == 1, pending);
        const size_t carried = pending.size();  // counted with the previous reply
        for (size_t i = carried; i < ids.size(); ++i) sampler.accept(ids[i]);
        pending.clear();
        if (cc.policy != Policy::Dense && int64_t(ids.size() - carried) > cc.window)
          std::fprintf(stderr,
                       "note: turn %d's prompt is %zu tokens, more than the %d-token window: the reply "
                       "sees only its last %d tokens%s\n",
                       turn, ids.size() - carried, cc.window, cc.window,
                       cc.sink > 0 ? " and the attention sinks" : "");
        ensure_room(ids.size());

        std::fputs("ASSISTANT: ", stdout);
        std::fflush(stdout);
        const auto t0 = std::chrono::steady_clock::now();
        int32_t next = stream.feed_and_sample(ids, sampler);
        const double t_prompt = seconds_since(t0);

        StreamDecoder dec(tok);
        ReplyPrinter printer(format.stop_strings());
        int64_t produced = 0;
        g_interrupted = false;
        g_generating = true;
        const auto t1 = std::chrono::steady_clock::now();
        while (produced < max_tokens && !g_interrupted) {
          if (format.ends_reply(next)) break;
          ++produced;
          sampler.accept(next);
          // A text stop string is complete with this token: its earlier tokens are already in the
          // cache, as generated.
          if (printer.add(dec.push(next))) break;
          if (produced == max_tokens) {
            pending.push_back(next);
            break;
          }
          ensure_room(1);
          next = stream.feed_and_sample({&next, 1}, sampler);
        }
        g_generating = false;
        printer.add(dec.flush());
        printer.finish();
        std::fputs("\n\n", stdout);
        std::fflush(stdout);
        const double t_gen = seconds_since(t1);
        std::fprintf(stderr,
                     "turn %d: prompt %zu tokens (%.1f tok/s) | reply %lld tokens (%.1f tok/s)%s | "
                     "stream %lld tokens | cache %lld tokens\n",
                     turn, ids.size() - carried, t_prompt > 0 ? double(ids.size()) / t_prompt : 0.0,
                     (long long)produced, t_gen > 0 ? double(produced) / t_gen : 0.0,
                     g_interrupted ? " interrupted" : "", (long long)(stream.tokens() + int64_t(pending.size())),
                     (long long)cache.cached_tokens(stream.slot()));
        if (scripted && g_interrupted) break;
      }
    }
    return 0;
  });
}

RegisterCommand reg({"chat", "multi-round chat through one persistent sink-cache session", &run});

}  // namespace
}  // namespace sinkserve
