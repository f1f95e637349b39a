// The OpenAI wire format without a server: request bodies parsed into scheduler requests (every
// field, and each way a field can be wrong), and responses, stream chunks, errors and resource
// objects formatted to exact JSON.
#include <gtest/gtest.h>

#include <string>

#include "cluster/openai_api.h"

namespace sinkserve {
namespace {

constexpr const char* kModel = "stories";

struct Parsed {
  bool ok;
  ApiRequest req;
  ApiError err;
};

Parsed parse(const std::string& body, bool chat = true, const std::string& header_session = "") {
  Parsed p;
  p.ok = parse_generation_request(body, chat, kModel, header_session, &p.req, &p.err);
  return p;
}

// A request that must be refused with this param and message (status 400).
void expect_refused(const std::string& body, const std::string& param, const std::string& message,
                    bool chat = true, const std::string& code = "") {
  const Parsed p = parse(body, chat);
  ASSERT_FALSE(p.ok) << body;
  EXPECT_EQ(p.err.status, 400) << body;
  EXPECT_EQ(p.err.param, param) << body;
  EXPECT_EQ(p.err.message, message) << body;
  EXPECT_EQ(p.err.code, code) << body;
}

const std::string kUser = R"("messages":[{"role":"user","content":"hi"}])";

TEST(OpenAiParse, ChatRequestWithEveryField) {
  const Parsed p = parse(R"({"model":"stories","messages":[{"role":"developer","content":"be brief"},
      {"role":"user","content":[{"type":"text","text":"one "},{"type":"text","text":"two"}]},
      {"role":"assistant","content":"ok"}],
      "temperature":0.5,"top_p":0.9,"min_p":0.05,"repetition_penalty":1.1,"top_k":40,"seed":7,
      "max_tokens":12,"n":1,"stop":["END","\n\n"],"stream":true,"stream_options":{"include_usage":true},
      "ignore_eos":true,"truncate_prompt":"keep_recent","session":"s-1"})");
  ASSERT_TRUE(p.ok) << p.err.message;
  const GenerationRequest& g = p.req.gen;
  EXPECT_TRUE(g.chat);
  ASSERT_EQ(g.messages.size(), 3u);
  EXPECT_EQ(g.messages[0].role, "system");  // "developer" is the newer name
  EXPECT_EQ(g.messages[0].content, "be brief");
  EXPECT_EQ(g.messages[1].role, "user");
  EXPECT_EQ(g.messages[1].content, "one two");
  EXPECT_EQ(g.messages[2].role, "assistant");
  EXPECT_FLOAT_EQ(g.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(g.sampling.top_p, 0.9f);
  EXPECT_FLOAT_EQ(g.sampling.min_p, 0.05f);
  EXPECT_FLOAT_EQ(g.sampling.repeat_penalty, 1.1f);
  EXPECT_EQ(g.sampling.top_k, 40);
  EXPECT_EQ(g.sampling.seed, 7u);
  EXPECT_EQ(g.max_tokens, 12);
  EXPECT_EQ(g.stop, (std::vector<std::string>{"END", "\n\n"}));
  EXPECT_TRUE(p.req.stream);
  EXPECT_TRUE(p.req.include_usage);
  EXPECT_TRUE(g.ignore_eos);
  EXPECT_TRUE(g.truncate_keep_recent);
  EXPECT_EQ(g.session, "s-1");
}

TEST(OpenAiParse, Defaults) {
  const Parsed p = parse("{" + kUser + "}");
  ASSERT_TRUE(p.ok) << p.err.message;
  const GenerationRequest& g = p.req.gen;
  EXPECT_FLOAT_EQ(g.sampling.temperature, 1.0f);  // the OpenAI default
  EXPECT_FLOAT_EQ(g.sampling.top_p, SamplingParams{}.top_p);
  EXPECT_EQ(g.sampling.top_k, 0);
  EXPECT_EQ(g.max_tokens, -1);
  EXPECT_TRUE(g.stop.empty());
  EXPECT_FALSE(p.req.stream);
  EXPECT_FALSE(p.req.include_usage);
  EXPECT_FALSE(g.ignore_eos);
  EXPECT_FALSE(g.truncate_keep_recent);
  EXPECT_TRUE(g.session.empty());
  // Nulls read as absent.
  const Parsed n = parse(R"({"model":null,"temperature":null,"stop":null,"stream":null,"session":null,)" + kUser + "}");
  ASSERT_TRUE(n.ok) << n.err.message;
  EXPECT_FLOAT_EQ(n.req.gen.sampling.temperature, 1.0f);
}

TEST(OpenAiParse, CompletionPrompt) {
  Parsed p = parse(R"({"prompt":"Once upon"})", false);
  ASSERT_TRUE(p.ok);
  EXPECT_FALSE(p.req.gen.chat);
  EXPECT_EQ(p.req.gen.prompt, "Once upon");
  p = parse(R"({"prompt":["Once upon"],"max_completion_tokens":5,"stop":"."})", false);
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.req.gen.prompt, "Once upon");
  EXPECT_EQ(p.req.gen.max_tokens, 5);
  EXPECT_EQ(p.req.gen.stop, std::vector<std::string>{"."});
  expect_refused("{}", "prompt", "'prompt' is required", false);
  expect_refused(R"({"prompt":["a","b"]})", "prompt", "'prompt' must be a string (or an array of one string), got an array", false);
  expect_refused(R"({"prompt":3})", "prompt", "'prompt' must be a string (or an array of one string), got an integer", false);
}

TEST(OpenAiParse, MalformedBodies) {
  expect_refused("{\"messages\":", "", "the request body is not valid JSON");
  expect_refused("", "", "the request body is not valid JSON");
  expect_refused(std::string("{}\0{}", 5), "", "the request body contains a NUL byte");
  expect_refused("[1,2]", "", "the request body must be a JSON object, got an array");
  expect_refused("\"text\"", "", "the request body must be a JSON object, got a string");
}

TEST(OpenAiParse, Model) {
  expect_refused(R"({"model":1,)" + kUser + "}", "model", "'model' must be a string, got an integer");
  expect_refused(R"({"model":"gpt-4",)" + kUser + "}", "model",
                 "model 'gpt-4' does not exist; this server serves 'stories'", true, "model_not_found");
}

TEST(OpenAiParse, Messages) {
  expect_refused("{}", "messages", "'messages' is required");
  expect_refused(R"({"messages":{}})", "messages", "'messages' must be an array, got an object");
  expect_refused(R"({"messages":[]})", "messages", "'messages' must not be empty");
  expect_refused(R"({"messages":["hi"]})", "messages[0]", "'messages[0]' must be an object, got a string");
  expect_refused(R"({"messages":[{"content":"hi"}]})", "messages[0].role", "'messages[0].role' must be a string");
  expect_refused(R"({"messages":[{"role":"user","content":"a"},{"role":"tool","content":"b"}]})", "messages[1].role",
                 "'messages[1].role' must be system, user or assistant, got 'tool'");
  expect_refused(R"({"messages":[{"role":"user"}]})", "messages[0].content", "'messages[0].content' is required");
  expect_refused(R"({"messages":[{"role":"user","content":5}]})", "messages[0].content",
                 "'messages[0].content' must be a string or an array of text parts, got an integer");
  expect_refused(R"({"messages":[{"role":"user","content":[3]}]})", "messages[0].content[0]",
                 "'messages[0].content[0]' must be an object, got an integer");
  expect_refused(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", "messages[0].content[0].type",
                 "only content parts of type 'text' are supported");
  expect_refused(R"({"messages":[{"role":"user","content":[{"type":"text","text":null}]}]})",
                 "messages[0].content[0].text", "'messages[0].content[0].text' must be a string");
}

TEST(OpenAiParse, SamplingRanges) {
  const auto with = [](const std::string& field) { return "{" + field + "," + kUser + "}"; };
  expect_refused(with(R"("temperature":"hot")"), "temperature", "'temperature' must be a number, got a string");
  expect_refused(with(R"("temperature":2.5)"), "temperature", "'temperature' must be in [0.0, 2.0], got 2.5");
  expect_refused(with(R"("temperature":-1)"), "temperature", "'temperature' must be in [0.0, 2.0], got -1");
  expect_refused(with(R"("top_p":0)"), "top_p", "'top_p' must be in (0.0, 1.0], got 0");
  expect_refused(with(R"("top_p":1.5)"), "top_p", "'top_p' must be in (0.0, 1.0], got 1.5");
  expect_refused(with(R"("min_p":-0.5)"), "min_p", "'min_p' must be in [0.0, 1.0], got -0.5");
  expect_refused(with(R"("repetition_penalty":0)"), "repetition_penalty", "'repetition_penalty' must be in (0.0, 10.0], got 0");
  expect_refused(with(R"("top_k":1.5)"), "top_k", "'top_k' must be an integer, got a number");
  expect_refused(with(R"("top_k":-1)"), "top_k", "'top_k' must be at least 0, got -1");
  expect_refused(with(R"("seed":"x")"), "seed", "'seed' must be an integer, got a string");
  EXPECT_TRUE(parse(with(R"("temperature":0)")).ok);
  EXPECT_TRUE(parse(with(R"("top_p":1)")).ok);
  EXPECT_TRUE(parse(with(R"("seed":-5)")).ok);
}

TEST(OpenAiParse, LengthAndChoices) {
  const auto with = [](const std::string& field) { return "{" + field + "," + kUser + "}"; };
  expect_refused(with(R"("max_tokens":-1)"), "max_tokens", "'max_tokens' must be at least 0, got -1");
  expect_refused(with(R"("max_tokens":2000000000)"), "max_tokens", "'max_tokens' must be at most 1073741824");
  expect_refused(with(R"("max_tokens":18446744073709551615)"), "max_tokens", "'max_tokens' must be at most 1073741824");
  expect_refused(with(R"("max_tokens":4,"max_completion_tokens":5)"), "max_completion_tokens",
                 "'max_tokens' and 'max_completion_tokens' disagree");
  EXPECT_EQ(parse(with(R"("max_tokens":5,"max_completion_tokens":5)")).req.gen.max_tokens, 5);
  expect_refused(with(R"("n":2)"), "n", "only n = 1 is supported");
  expect_refused(with(R"("n":0)"), "n", "'n' must be at least 1, got 0");
}

TEST(OpenAiParse, Stop) {
  const auto with = [](const std::string& field) { return "{" + field + "," + kUser + "}"; };
  expect_refused(with(R"("stop":1)"), "stop", "'stop' must be a string or an array of strings, got an integer");
  expect_refused(with(R"("stop":["a",2])"), "stop", "'stop' must be a string or an array of strings, got an integer");
  expect_refused(with(R"("stop":[""])"), "stop", "stop strings must not be empty");
  std::string many = R"("stop":[)";
  for (int i = 0; i < 17; ++i) many += std::string(i ? "," : "") + "\"s" + std::to_string(i) + "\"";
  expect_refused(with(many + "]"), "stop", "at most 16 stop strings are supported");
}

TEST(OpenAiParse, StreamFlags) {
  const auto with = [](const std::string& field) { return "{" + field + "," + kUser + "}"; };
  expect_refused(with(R"("stream":"yes")"), "stream", "'stream' must be a boolean, got a string");
  expect_refused(with(R"("stream_options":true)"), "stream_options", "'stream_options' must be an object, got a boolean");
  expect_refused(with(R"("stream_options":{"include_usage":1})"), "stream_options.include_usage",
                 "'stream_options.include_usage' must be a boolean, got an integer");
  expect_refused(with(R"("ignore_eos":0)"), "ignore_eos", "'ignore_eos' must be a boolean, got an integer");
  expect_refused(with(R"("truncate_prompt":true)"), "truncate_prompt", "'truncate_prompt' must be a string, got a boolean");
  expect_refused(with(R"("truncate_prompt":"keep_oldest")"), "truncate_prompt",
                 "'truncate_prompt' must be \"keep_recent\", got \"keep_oldest\"");
}

TEST(OpenAiParse, Sessions) {
  const std::string rule = "session ids are 1 to 128 characters of A-Z a-z 0-9 . _ : -";
  const auto with = [](const std::string& field) { return "{" + field + "," + kUser + "}"; };
  expect_refused(with(R"("session":7)"), "session", "'session' must be a string, got an integer");
  expect_refused(with(R"("session":"")"), "session", rule);
  expect_refused(with(R"("session":"a b")"), "session", rule);
  expect_refused(with(R"("session":")" + std::string(129, 'x') + "\""), "session", rule);
  EXPECT_TRUE(parse(with(R"("session":")" + std::string(128, 'x') + "\"")).ok);
  // The X-Session-Id header names the session, and must agree with the body's.
  Parsed p = parse("{" + kUser + "}", true, "from-header");
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.req.gen.session, "from-header");
  p = parse(with(R"("session":"a")"), true, "a");
  ASSERT_TRUE(p.ok);
  EXPECT_EQ(p.req.gen.session, "a");
  p = parse(with(R"("session":"a")"), true, "b");
  ASSERT_FALSE(p.ok);
  EXPECT_EQ(p.err.message, "the body's 'session' and the X-Session-Id header differ");
  p = parse("{" + kUser + "}", true, "bad/id");
  ASSERT_FALSE(p.ok);
  EXPECT_EQ(p.err.message, rule);
  EXPECT_TRUE(valid_session_id("A-z_0.9:x"));
  EXPECT_FALSE(valid_session_id("é"));
}

TEST(OpenAiFormat, ErrorBody) {
  EXPECT_EQ(error_body(api_error(400, "bad \"x\"", "invalid_request_error")),
            R"({"error":{"code":null,"message":"bad \"x\"","param":null,"type":"invalid_request_error"}})");
  EXPECT_EQ(error_body(api_error(404, "gone", "invalid_request_error", "not_found", "model")),
            R"({"error":{"code":"not_found","message":"gone","param":"model","type":"invalid_request_error"}})");
  EXPECT_EQ(ResponseFormat::sse_error(api_error(503, "down", "server_error", "compute_failed")),
            "data: {\"error\":{\"code\":\"compute_failed\",\"message\":\"down\",\"param\":null,\"type\":\"server_error\"}}\n\n");
}

TEST(OpenAiFormat, RejectionsMapToStatuses) {
  struct Case {
    RejectReason why;
    int status;
    const char* type;
    const char* code;
  };
  for (const Case& c : {Case{RejectReason::BadRequest, 400, "invalid_request_error", ""},
                        Case{RejectReason::NoSlot, 429, "server_busy", "no_free_slot"},
                        Case{RejectReason::SessionBusy, 409, "invalid_request_error", "session_busy"},
                        Case{RejectReason::ShuttingDown, 503, "server_error", "shutting_down"},
                        Case{RejectReason::SessionUnreadable, 422, "invalid_request_error", "session_unreadable"}}) {
    const ApiError e = reject_error(c.why, "why");
    EXPECT_EQ(e.status, c.status);
    EXPECT_EQ(e.type, c.type);
    EXPECT_EQ(e.code, c.code);
    EXPECT_EQ(e.message, "why");
  }
}

TEST(OpenAiFormat, SessionSaves) {
  EXPECT_EQ(session_saved_json("s1", 4096, 70).dump(), R"({"bytes":4096,"id":"s1","object":"session.saved","tokens":70})");
  struct Case {
    SaveResult::Status status;
    int http;
    const char* type;
    const char* code;
  };
  for (const Case& c : {Case{SaveResult::Status::Unknown, 404, "invalid_request_error", "session_not_found"},
                        Case{SaveResult::Status::Busy, 409, "invalid_request_error", "session_busy"},
                        Case{SaveResult::Status::NoStore, 400, "invalid_request_error", "no_session_dir"},
                        Case{SaveResult::Status::Failed, 500, "server_error", "session_save_failed"}}) {
    SaveResult r;
    r.status = c.status;
    r.message = "why";
    const ApiError e = save_error(r);
    EXPECT_EQ(save_status(c.status), c.http);
    EXPECT_EQ(e.status, c.http);
    EXPECT_EQ(e.type, c.type);
    EXPECT_EQ(e.code, c.code);
    EXPECT_EQ(e.message, "why");
  }
  EXPECT_EQ(save_status(SaveResult::Status::Saved), 200);
  // A restored session's first turn says so in its usage; other turns carry no such key.
  Usage u;
  u.prompt_tokens = 3;
  u.restored = true;
  EXPECT_EQ(ResponseFormat(true, "chatcmpl-5", "stories", 9, "s").body("ok", FinishReason::Stop, u),
            R"({"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"ok","role":"assistant"}}],)"
            R"("created":9,"id":"chatcmpl-5","model":"stories","object":"chat.completion","session":"s",)"
            R"("usage":{"completion_tokens":0,"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":0},)"
            R"("session_restored":true,"total_tokens":3}})");
}

TEST(OpenAiFormat, ChatStream) {
  const ResponseFormat f(true, "chatcmpl-1", "stories", 1700000000, "s1");
  const std::string head = R"({"choices":[)";
  const std::string tail = R"(],"created":1700000000,"id":"chatcmpl-1","model":"stories","object":"chat.completion.chunk"})";
  EXPECT_EQ(f.sse_start(), "data: " + head +
                               R"({"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null})" +
                               tail + "\n\n");
  EXPECT_EQ(f.sse_text("Hi \"you\"\n"),
            "data: " + head + R"({"delta":{"content":"Hi \"you\"\n"},"finish_reason":null,"index":0,"logprobs":null})" + tail +
                "\n\n");
  EXPECT_EQ(f.sse_finish(FinishReason::Length),
            "data: " + head + R"({"delta":{},"finish_reason":"length","index":0,"logprobs":null})" + tail + "\n\n");
  Usage u;
  u.prompt_tokens = 10;
  u.completion_tokens = 3;
  u.cached_tokens = 4;
  EXPECT_EQ(f.sse_usage(u),
            "data: " + std::string(R"({"choices":[],"created":1700000000,"id":"chatcmpl-1","model":"stories",)") +
                R"("object":"chat.completion.chunk","usage":{"completion_tokens":3,"prompt_tokens":10,)" +
                R"("prompt_tokens_details":{"cached_tokens":4},"total_tokens":13}})" + "\n\n");
  EXPECT_EQ(ResponseFormat::kSseDone, "data: [DONE]\n\n");
}

TEST(OpenAiFormat, CompletionStream) {
  const ResponseFormat f(false, "cmpl-2", "stories", 5, "");
  EXPECT_EQ(f.sse_start(), "");  // completions announce no role
  EXPECT_EQ(f.sse_text("abc"),
            R"(data: {"choices":[{"finish_reason":null,"index":0,"logprobs":null,"text":"abc"}],"created":5,"id":"cmpl-2","model":"stories","object":"text_completion"})"
            "\n\n");
  EXPECT_EQ(f.sse_finish(FinishReason::Stop),
            R"(data: {"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"text":""}],"created":5,"id":"cmpl-2","model":"stories","object":"text_completion"})"
            "\n\n");
}

TEST(OpenAiFormat, WholeResponses) {
  Usage u;
  u.prompt_tokens = 2;
  u.completion_tokens = 1;
  EXPECT_EQ(ResponseFormat(true, "chatcmpl-3", "stories", 9, "s").body("yes", FinishReason::Stop, u),
            R"({"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"yes","role":"assistant"}}],)"
            R"("created":9,"id":"chatcmpl-3","model":"stories","object":"chat.completion","session":"s",)"
            R"("usage":{"completion_tokens":1,"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":3}})");
  EXPECT_EQ(ResponseFormat(false, "cmpl-4", "stories", 9, "").body("no", FinishReason::Length, u),
            R"({"choices":[{"finish_reason":"length","index":0,"logprobs":null,"text":"no"}],)"
            R"("created":9,"id":"cmpl-4","model":"stories","object":"text_completion",)"
            R"("usage":{"completion_tokens":1,"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":3}})");
  // An unfinished UTF-8 character at the end of the text never throws: it becomes U+FFFD.
  EXPECT_EQ(ResponseFormat(false, "c", "m", 0, "").sse_text("a\xC3"),
            R"(data: {"choices":[{"finish_reason":null,"index":0,"logprobs":null,"text":"a)" "\xEF\xBF\xBD"
            R"("}],"created":0,"id":"c","model":"m","object":"text_completion"})" "\n\n");
}

TEST(OpenAiFormat, Resources) {
  EXPECT_EQ(model_json("stories", 42).dump(), R"({"created":42,"id":"stories","object":"model","owned_by":"sinkserve"})");
  SessionInfo s;
  s.id = "s1";
  s.tokens = 120;
  s.cache_rows = 64;
  s.messages = 4;
  s.last_use_unix = 1.5;
  s.busy = true;
  EXPECT_EQ(session_json(s).dump(),
            R"({"busy":true,"cache_rows":64,"id":"s1","last_used_at":1.5,"messages":4,"object":"session","tokens":120})");
  SessionInfo saved;
  saved.id = "s2";
  saved.on_disk = true;
  saved.saved_bytes = 4096;
  saved.last_use_unix = 2.5;
  EXPECT_EQ(session_json(saved).dump(), R"({"bytes":4096,"id":"s2","object":"session","on_disk":true,"saved_at":2.5})");
  EXPECT_EQ(list_json(nlohmann::json::array({1, 2})).dump(), R"({"data":[1,2],"object":"list"})");
  EXPECT_EQ(session_deleted_json("s1").dump(), R"({"deleted":true,"id":"s1","object":"session.deleted"})");
}

}  // namespace
}  // namespace sinkserve
