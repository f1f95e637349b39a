// `sinkserve chat` end to end on the trained stories260K model: a whole MT-Bench conversation
// through one session with a window far smaller than the conversation, so the sink cache evicts
// across turns.
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/fixtures.h"

namespace fs = std::filesystem;
using sinkserve::test::CliResult;

namespace {

fs::path dir() {
  static const fs::path d = sinkserve::test::make_temp_dir("test_cli_chat");
  return d;
}

CliResult run(const std::string& args, const std::string* stdin_text = nullptr) {
  return sinkserve::test::run_sinkserve(dir(), args, stdin_text);
}

// Single quotes for /bin/sh.
std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

const int kWindow = 60, kSink = 4, kTokens = 40;

std::string model_args() {
  return "--model " + sinkserve::test::fixture("models/stories260K.gguf") + " --threads 1 --temp 0 --sink " +
         std::to_string(kSink) + " --window " + std::to_string(kWindow);
}

std::string chat_args() {
  return "chat " + model_args() + " --template raw -n " + std::to_string(kTokens) + " --prompts " +
         sinkserve::test::fixture("prompts/mt_bench.jsonl") + " --questions 3";
}

struct Turn {
  std::string user, assistant;
};

// Splits the transcript "USER: u\nASSISTANT: a\n\n..." into its turns.
std::vector<Turn> parse_transcript(const std::string& out) {
  std::vector<Turn> turns;
  size_t at = 0;
  while (at < out.size()) {
    EXPECT_EQ(out.compare(at, 6, "USER: "), 0) << "at byte " << at << " of:\n" << out;
    const size_t user_end = out.find("\nASSISTANT: ", at);
    if (user_end == std::string::npos) {
      ADD_FAILURE() << "a USER line without its ASSISTANT reply:\n" << out.substr(at);
      break;
    }
    const size_t reply = user_end + 12, reply_end = out.find("\n\n", reply);
    if (reply_end == std::string::npos) {
      ADD_FAILURE() << "a reply without the blank line that ends it:\n" << out.substr(at);
      break;
    }
    turns.push_back({out.substr(at + 6, user_end - at - 6), out.substr(reply, reply_end - reply)});
    at = reply_end + 2;
  }
  return turns;
}

struct TurnStats {
  long long prompt, reply, stream, cache;
};

std::vector<TurnStats> parse_stats(const std::string& err) {
  static const std::regex re(
      R"(turn \d+: prompt (\d+) tokens \([^)]*\) \| reply (\d+) tokens \([^)]*\) \| stream (\d+) tokens \| cache (\d+) tokens)");
  std::vector<TurnStats> s;
  for (auto it = std::sregex_iterator(err.begin(), err.end(), re); it != std::sregex_iterator(); ++it)
    s.push_back({std::stoll((*it)[1]), std::stoll((*it)[2]), std::stoll((*it)[3]), std::stoll((*it)[4])});
  return s;
}

TEST(CliChat, MtBenchThroughOneSessionEvictsAndStaysBounded) {
  const CliResult r = run(chat_args());
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<Turn> turns = parse_transcript(r.out);
  ASSERT_EQ(turns.size(), 6u) << r.out;
  // The first three MT-Bench questions, two turns each, in file order.
  EXPECT_EQ(turns[0].user.rfind("Compose an engaging travel blog post about a recent trip to Hawaii", 0), 0u);
  EXPECT_EQ(turns[1].user, "Rewrite your previous response. Start every sentence with the letter A.");
  EXPECT_EQ(turns[2].user.rfind("Draft a professional email", 0), 0u);
  EXPECT_EQ(turns[5].user, "Take your previous response and rephrase it as a limerick.");
  for (const Turn& t : turns) EXPECT_FALSE(t.assistant.empty()) << "after: " << t.user;

  const std::vector<TurnStats> stats = parse_stats(r.err);
  ASSERT_EQ(stats.size(), 6u) << r.err;
  long long total = 0;
  for (size_t i = 0; i < stats.size(); ++i) {
    // Every token of the conversation went through the one stream exactly once: nothing was
    // reset or recomputed between turns.
    total += stats[i].prompt + stats[i].reply;
    EXPECT_EQ(stats[i].stream, total) << "turn " << i + 1;
    EXPECT_GT(stats[i].reply, 0);
    EXPECT_LE(stats[i].reply, kTokens);
    // Constant memory: the cache never holds more than the sinks and the window.
    EXPECT_LE(stats[i].cache, kSink + kWindow) << "turn " << i + 1;
    if (i > 0) {
      EXPECT_GT(stats[i].stream, stats[i - 1].stream);
    }
  }
  EXPECT_GT(stats.back().stream, 4 * (kSink + kWindow)) << "the conversation never outgrew the window";
  EXPECT_EQ(stats.back().cache, kSink + kWindow) << "the cache fills up to sinks + window";
}

TEST(CliChat, IdenticalRunsGiveIdenticalTranscripts) {
  const CliResult a = run(chat_args());
  const CliResult b = run(chat_args());
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
}

// The first turn of a chat is exactly a generation from the rendered turn: same tokens, same
// chunked prefill, same greedy reply.
TEST(CliChat, FirstReplyEqualsGenerateOnTheRenderedTurn) {
  const CliResult chat = run(chat_args());
  ASSERT_EQ(chat.code, 0) << chat.err;
  const std::vector<Turn> turns = parse_transcript(chat.out);
  ASSERT_FALSE(turns.empty());
  // With the raw template and no system message the first turn renders to the question itself.
  const CliResult gen = run("generate " + model_args() + " -n " + std::to_string(kTokens) + " --prompt " +
                            quoted(turns[0].user));
  ASSERT_EQ(gen.code, 0) << gen.err;
  std::string expected = gen.out;
  while (!expected.empty() && std::isspace(static_cast<unsigned char>(expected.back()))) expected.pop_back();
  EXPECT_EQ(turns[0].assistant, expected);
}

// Interactive use reads one turn per line from stdin (here a pipe), skipping blank lines.
TEST(CliChat, ReadsTurnsFromStdin) {
  const std::string input = "Once upon a time\n\n   \nTell me a story about a cat.\n";
  const CliResult r = run("chat " + model_args() + " --template vicuna --system 'A chat.' -n 12", &input);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<Turn> turns = parse_transcript(r.out);
  ASSERT_EQ(turns.size(), 2u) << r.out;
  EXPECT_EQ(turns[0].user, "Once upon a time");
  EXPECT_EQ(turns[1].user, "Tell me a story about a cat.");
  EXPECT_EQ(parse_stats(r.err).size(), 2u) << r.err;
  EXPECT_NE(r.err.find("chat template: vicuna"), std::string::npos) << r.err;
}

TEST(CliChat, DenseCacheEndsWithAClearErrorWhenFull) {
  const CliResult r = run("chat --model " + sinkserve::test::fixture("models/stories260K.gguf") +
                          " --threads 1 --temp 0 --policy dense --ctx 100 --template raw -n 40 --prompts " +
                          sinkserve::test::fixture("prompts/mt_bench.jsonl") + " --questions 3");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("the dense cache is full"), std::string::npos) << r.err;
}

TEST(CliChat, BadArgumentsAreUsageErrors) {
  const fs::path bad = dir() / "bad.jsonl";
  sinkserve::test::write_bytes(bad, "{\"turns\": [\"hi\"]}\n{\"turns\": 3}\n");
  CliResult r = run("chat " + model_args() + " --prompts " + bad.string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("line 2"), std::string::npos) << r.err;
  r = run("chat " + model_args() + " --template nope");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--template"), std::string::npos) << r.err;
  r = run("chat " + model_args() + " -n 0");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--max-tokens"), std::string::npos) << r.err;
}

}  // namespace
