// The OpenAI-compatible wire format: request bodies of /v1/chat/completions and /v1/completions
// checked and turned into scheduler requests, the scheduler's events and refusals turned into
// response bodies, statuses and server-sent-event chunks, and the resource objects. Pure
// functions of their inputs: no sockets, no model.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "runtime/scheduler.h"

namespace sinkserve {

// An error as the OpenAI API reports it: {"error":{"message","type","param","code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the offending field, empty when none
  std::string code;   // machine-readable code, empty when none
};
ApiError api_error(int status, std::string message, std::string type, std::string code = {},
                   std::string param = {});
std::string error_body(const ApiError& e);
// How a request the scheduler refused is answered: 400 bad request, 429 no free slot (the client
// may retry), 409 session busy, 503 shutting down.
ApiError reject_error(RejectReason why, std::string message);

// The resource objects of /v1/models and /v1/sessions.
nlohmann::json model_json(const std::string& id, int64_t created);
nlohmann::json session_json(const SessionInfo& s);
nlohmann::json session_deleted_json(const std::string& id);
// POST /v1/sessions/{id}/save: the saved file's size and the session's stream tokens; or why not.
nlohmann::json session_saved_json(const std::string& id, int64_t bytes, int64_t tokens);
int save_status(SaveResult::Status s);
ApiError save_error(const SaveResult& r);
nlohmann::json list_json(nlohmann::json data);  // {"object": "list", "data": data}

// Session ids travel in URLs and headers: 1..128 characters of [A-Za-z0-9._:-].
bool valid_session_id(std::string_view id);

struct ApiRequest {
  GenerationRequest gen;  // everything but the sink
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parses and checks a request body. `chat` selects /v1/chat/completions. `header_session` is the
// X-Session-Id header (empty when absent). `served_model` is the one model id this server
// answers to. Returns false and fills `err` (naming the field) when the request is not valid.
bool parse_generation_request(std::string_view body, bool chat, const std::string& served_model,
                              std::string_view header_session, ApiRequest* out, ApiError* err);

// Formats one response, streamed or whole. `id` is unique per response.
class ResponseFormat {
 public:
  ResponseFormat(bool chat, std::string id, std::string model, int64_t created,
                 std::string session);
  // Streaming: the first chunk (chat: announces the assistant role), each text piece, the final
  // chunk with the finish reason, and the usage chunk. Each is a complete SSE event.
  std::string sse_start() const;
  std::string sse_text(const std::string& text) const;
  std::string sse_finish(FinishReason why) const;
  std::string sse_usage(const Usage& u) const;
  static std::string sse_error(const ApiError& e);
  static constexpr std::string_view kSseDone = "data: [DONE]\n\n";
  // Whole response.
  std::string body(const std::string& text, FinishReason why, const Usage& u) const;

 private:
  std::string chunk(nlohmann::json choice) const;
  bool chat_;
  std::string id_, model_, session_;
  int64_t created_;
};

}  // namespace sinkserve
