#include "cluster/openai_api.h"

#include <cmath>
#include <random>

#include <nlohmann/json.hpp>

namespace sinkserve {

using json = nlohmann::json;

namespace {

// Generated text may end in bytes of an unfinished UTF-8 character; never let that throw.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

const char* type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

class Checker {
 public:
  explicit Checker(ApiError* err) : err_(err) {}
  bool fail(std::string param, std::string message, std::string code = {}) {
    err_->status = 400;
    err_->param = std::move(param);
    err_->message = std::move(message);
    err_->code = std::move(code);
    return false;
  }
  bool wrong_type(const std::string& param, const json& v, const char* want) {
    return fail(param, "'" + param + "' must be " + want + ", got " + type_name(v));
  }

 private:
  ApiError* err_;
};

bool read_number(Checker& c, const json& body, const char* key, double lo, double hi, bool lo_open,
                 float* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number()) return c.wrong_type(key, *it, "a number");
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi || (lo_open && v == lo))
    return c.fail(key, std::string("'") + key + "' must be in " + (lo_open ? "(" : "[") +
                           json(lo).dump() + ", " + json(hi).dump() + "], got " + it->dump());
  *out = float(v);
  return true;
}

bool read_int(Checker& c, const json& body, const char* key, int64_t lo, int64_t hi, int64_t* out,
              bool* present = nullptr) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number_integer()) return c.wrong_type(key, *it, "an integer");
  if (it->is_number_unsigned() ? it->get<uint64_t>() > uint64_t(hi) : it->get<int64_t>() > hi)
    return c.fail(key, std::string("'") + key + "' must be at most " + std::to_string(hi));
  const int64_t v = it->is_number_unsigned() ? int64_t(it->get<uint64_t>()) : it->get<int64_t>();
  if (v < lo) return c.fail(key, std::string("'") + key + "' must be at least " + std::to_string(lo) +
                                     ", got " + std::to_string(v));
  *out = v;
  if (present) *present = true;
  return true;
}

bool read_content(Checker& c, const json& v, const std::string& param, std::string* out) {
  if (v.is_string()) {
    *out = v.get<std::string>();
    return true;
  }
  if (!v.is_array()) return c.wrong_type(param, v, "a string or an array of text parts");
  out->clear();
  for (size_t i = 0; i < v.size(); ++i) {
    const json& part = v[i];
    const std::string p = param + "[" + std::to_string(i) + "]";
    if (!part.is_object()) return c.wrong_type(p, part, "an object");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string() || *type != "text")
      return c.fail(p + ".type", "only content parts of type 'text' are supported");
    auto text = part.find("text");
    if (text == part.end() || !text->is_string()) return c.fail(p + ".text", "'" + p + ".text' must be a string");
    *out += text->get<std::string>();
  }
  return true;
}

}  // namespace

ApiError api_error(int status, std::string message, std::string type, std::string code, std::string param) {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.code = std::move(code);
  e.param = std::move(param);
  return e;
}

ApiError reject_error(RejectReason why, std::string message) {
  switch (why) {
    case RejectReason::BadRequest: break;
    case RejectReason::NoSlot: return api_error(429, std::move(message), "server_busy", "no_free_slot");
    case RejectReason::SessionBusy:
      return api_error(409, std::move(message), "invalid_request_error", "session_busy");
    case RejectReason::ShuttingDown: return api_error(503, std::move(message), "server_error", "shutting_down");
    case RejectReason::SessionUnreadable:
      return api_error(422, std::move(message), "invalid_request_error", "session_unreadable");
  }
  return api_error(400, std::move(message), "invalid_request_error");
}

json model_json(const std::string& id, int64_t created) {
  return {{"id", id}, {"object", "model"}, {"created", created}, {"owned_by", "sinkserve"}};
}

json session_json(const SessionInfo& s) {
  if (s.on_disk)
    return {{"id", s.id}, {"object", "session"}, {"on_disk", true}, {"bytes", s.saved_bytes}, {"saved_at", s.last_use_unix}};
  return {{"id", s.id}, {"object", "session"}, {"tokens", s.tokens}, {"cache_rows", s.cache_rows},
          {"messages", s.messages}, {"last_used_at", s.last_use_unix}, {"busy", s.busy}};
}

json session_saved_json(const std::string& id, int64_t bytes, int64_t tokens) {
  return {{"id", id}, {"object", "session.saved"}, {"bytes", bytes}, {"tokens", tokens}};
}

int save_status(SaveResult::Status s) {
  switch (s) {
    case SaveResult::Status::Saved: return 200;
    case SaveResult::Status::Unknown: return 404;
    case SaveResult::Status::Busy: return 409;
    case SaveResult::Status::NoStore: return 400;
    case SaveResult::Status::Failed: break;
  }
  return 500;
}

ApiError save_error(const SaveResult& r) {
  const int status = save_status(r.status);
  const char* code = r.status == SaveResult::Status::Unknown ? "session_not_found"
                     : r.status == SaveResult::Status::Busy  ? "session_busy"
                     : r.status == SaveResult::Status::NoStore ? "no_session_dir"
                                                               : "session_save_failed";
  return api_error(status, r.message, status >= 500 ? "server_error" : "invalid_request_error", code);
}

json session_deleted_json(const std::string& id) {
  return {{"id", id}, {"object", "session.deleted"}, {"deleted", true}};
}

json list_json(json data) { return {{"object", "list"}, {"data", std::move(data)}}; }

std::string error_body(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return dump(json{{"error", err}});
}

bool valid_session_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char ch : id) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                    ch == '.' || ch == '_' || ch == ':' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

bool parse_generation_request(std::string_view text, bool chat, const std::string& served_model,
                              std::string_view header_session, ApiRequest* out, ApiError* err) {
  Checker c(err);
  // The JSON parser takes a NUL for the end of input: whatever followed would pass unread.
  if (text.find('\0') != std::string_view::npos) return c.fail("", "the request body contains a NUL byte");
  const json body = json::parse(text, nullptr, false);
  if (body.is_discarded()) return c.fail("", "the request body is not valid JSON");
  if (!body.is_object()) return c.fail("", std::string("the request body must be a JSON object, got ") + type_name(body));
  GenerationRequest& g = out->gen;
  g.chat = chat;

  if (auto it = body.find("model"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return c.wrong_type("model", *it, "a string");
    if (*it != served_model)
      return c.fail("model", "model '" + it->get<std::string>() + "' does not exist; this server serves '" +
                                 served_model + "'",
                    "model_not_found");
  }

  if (chat) {
    auto it = body.find("messages");
    if (it == body.end()) return c.fail("messages", "'messages' is required");
    if (!it->is_array()) return c.wrong_type("messages", *it, "an array");
    if (it->empty()) return c.fail("messages", "'messages' must not be empty");
    for (size_t i = 0; i < it->size(); ++i) {
      const json& m = (*it)[i];
      const std::string p = "messages[" + std::to_string(i) + "]";
      if (!m.is_object()) return c.wrong_type(p, m, "an object");
      auto role = m.find("role");
      if (role == m.end() || !role->is_string()) return c.fail(p + ".role", "'" + p + ".role' must be a string");
      std::string r = role->get<std::string>();
      if (r == "developer") r = "system";  // the newer name of the system role
      if (r != "system" && r != "user" && r != "assistant")
        return c.fail(p + ".role", "'" + p + ".role' must be system, user or assistant, got '" + r + "'");
      auto content = m.find("content");
      if (content == m.end()) return c.fail(p + ".content", "'" + p + ".content' is required");
      ChatMessage msg{r, {}};
      if (!read_content(c, *content, p + ".content", &msg.content)) return false;
      g.messages.push_back(std::move(msg));
    }
  } else {
    auto it = body.find("prompt");
    if (it == body.end()) return c.fail("prompt", "'prompt' is required");
    if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) g.prompt = (*it)[0].get<std::string>();
    else if (it->is_string()) g.prompt = it->get<std::string>();
    else return c.wrong_type("prompt", *it, "a string (or an array of one string)");
  }

  SamplingParams& s = g.sampling;
  s.temperature = 1.0f;  // the OpenAI default
  if (!read_number(c, body, "temperature", 0, 2, false, &s.temperature)) return false;
  if (!read_number(c, body, "top_p", 0, 1, true, &s.top_p)) return false;
  if (!read_number(c, body, "min_p", 0, 1, false, &s.min_p)) return false;
  if (!read_number(c, body, "repetition_penalty", 0, 10, true, &s.repeat_penalty)) return false;
  int64_t top_k = 0;
  if (!read_int(c, body, "top_k", 0, 1 << 30, &top_k)) return false;
  s.top_k = int(top_k);
  int64_t seed = 0;
  bool seeded = false;
  if (!read_int(c, body, "seed", INT64_MIN, INT64_MAX, &seed, &seeded)) return false;
  s.seed = seeded ? uint64_t(seed) : std::random_device{}() * 0x100000000ull + std::random_device{}();

  int64_t max_tokens = -1, max_completion = -1;
  bool has_max = false, has_completion = false;
  if (!read_int(c, body, "max_tokens", 0, 1 << 30, &max_tokens, &has_max)) return false;
  if (!read_int(c, body, "max_completion_tokens", 0, 1 << 30, &max_completion, &has_completion)) return false;
  if (has_max && has_completion && max_tokens != max_completion)
    return c.fail("max_completion_tokens", "'max_tokens' and 'max_completion_tokens' disagree");
  g.max_tokens = int(has_completion ? max_completion : max_tokens);

  int64_t n = 1;
  if (!read_int(c, body, "n", 1, 1 << 30, &n)) return false;
  if (n != 1) return c.fail("n", "only n = 1 is supported");

  if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    if (it->is_string()) {
      g.stop.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      for (const json& v : *it) {
        if (!v.is_string()) return c.wrong_type("stop", v, "a string or an array of strings");
        g.stop.push_back(v.get<std::string>());
      }
    } else {
      return c.wrong_type("stop", *it, "a string or an array of strings");
    }
    if (g.stop.size() > 16) return c.fail("stop", "at most 16 stop strings are supported");
    for (const std::string& st : g.stop)
      if (st.empty()) return c.fail("stop", "stop strings must not be empty");
  }

  if (auto it = body.find("stream"); it != body.end() && !it->is_null()) {
    if (!it->is_boolean()) return c.wrong_type("stream", *it, "a boolean");
    out->stream = it->get<bool>();
  }
  if (auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return c.wrong_type("stream_options", *it, "an object");
    if (auto u = it->find("include_usage"); u != it->end() && !u->is_null()) {
      if (!u->is_boolean()) return c.wrong_type("stream_options.include_usage", *u, "a boolean");
      out->include_usage = u->get<bool>();
    }
  }

  if (auto it = body.find("ignore_eos"); it != body.end() && !it->is_null()) {
    if (!it->is_boolean()) return c.wrong_type("ignore_eos", *it, "a boolean");
    g.ignore_eos = it->get<bool>();
  }
  if (auto it = body.find("truncate_prompt"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return c.wrong_type("truncate_prompt", *it, "a string");
    if (*it != "keep_recent")
      return c.fail("truncate_prompt", "'truncate_prompt' must be \"keep_recent\", got " + it->dump());
    g.truncate_keep_recent = true;
  }
  if (auto it = body.find("session"); it != body.end() && !it->is_null()) {
    if (!it->is_string()) return c.wrong_type("session", *it, "a string");
    g.session = it->get<std::string>();
    if (g.session.empty()) return c.fail("session", "session ids are 1 to 128 characters of A-Z a-z 0-9 . _ : -");
  }
  if (!header_session.empty()) {
    if (!g.session.empty() && g.session != header_session)
      return c.fail("session", "the body's 'session' and the X-Session-Id header differ");
    g.session = std::string(header_session);
  }
  if (!g.session.empty() && !valid_session_id(g.session))
    return c.fail("session", "session ids are 1 to 128 characters of A-Z a-z 0-9 . _ : -");
  return true;
}

ResponseFormat::ResponseFormat(bool chat, std::string id, std::string model, int64_t created,
                               std::string session)
    : chat_(chat), id_(std::move(id)), model_(std::move(model)), session_(std::move(session)),
      created_(created) {}

// One chunk object; `choice` null gives the usage chunk's empty choice list.
static json make_chunk(bool chat, const std::string& id, const std::string& model, int64_t created,
                       json choice) {
  return {{"id", id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", choice.is_null() ? json::array() : json::array({std::move(choice)})}};
}

std::string ResponseFormat::chunk(json choice) const {
  return "data: " + dump(make_chunk(chat_, id_, model_, created_, std::move(choice))) + "\n\n";
}

std::string ResponseFormat::sse_start() const {
  if (!chat_) return {};
  json choice = {{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                 {"logprobs", nullptr}, {"finish_reason", nullptr}};
  return chunk(std::move(choice));
}

std::string ResponseFormat::sse_text(const std::string& text) const {
  json choice = chat_ ? json{{"index", 0}, {"delta", {{"content", text}}}, {"logprobs", nullptr},
                             {"finish_reason", nullptr}}
                      : json{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  return chunk(std::move(choice));
}

std::string ResponseFormat::sse_finish(FinishReason why) const {
  json choice = chat_ ? json{{"index", 0}, {"delta", json::object()}, {"logprobs", nullptr},
                             {"finish_reason", finish_reason_name(why)}}
                      : json{{"index", 0}, {"text", ""}, {"logprobs", nullptr},
                             {"finish_reason", finish_reason_name(why)}};
  return chunk(std::move(choice));
}

static json usage_json(const Usage& u) {
  json j = {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens},
            {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
  // Only when it happened: the session came back from --session-dir for this request.
  if (u.restored) j["session_restored"] = true;
  return j;
}

std::string ResponseFormat::sse_usage(const Usage& u) const {
  json j = make_chunk(chat_, id_, model_, created_, nullptr);
  j["usage"] = usage_json(u);
  return "data: " + j.dump() + "\n\n";
}

std::string ResponseFormat::sse_error(const ApiError& e) { return "data: " + error_body(e) + "\n\n"; }

std::string ResponseFormat::body(const std::string& text, FinishReason why, const Usage& u) const {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason_name(why)}};
  if (chat_) choice["message"] = {{"role", "assistant"}, {"content", text}};
  else choice["text"] = text;
  json j = {{"id", id_},
            {"object", chat_ ? "chat.completion" : "text_completion"},
            {"created", created_},
            {"model", model_},
            {"choices", json::array({choice})},
            {"usage", usage_json(u)}};
  if (!session_.empty()) j["session"] = session_;
  return dump(j);
}

}  // namespace sinkserve
