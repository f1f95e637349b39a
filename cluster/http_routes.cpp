// The routes: what each path and method answers. Generation requests go on to
// http_generation.cpp; everything else is answered here at once from the scheduler's state.
#include <nlohmann/json.hpp>

#include "cluster/http_connection.h"

namespace sinkserve {

using json = nlohmann::json;

std::string Connection::route_of(std::string_view path) {
  for (std::string_view r : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/sessions",
                             "/health", "/metrics"})
    if (path == r || (path.size() > r.size() && path.substr(0, r.size()) == r && path[r.size()] == '/'))
      return std::string(r);
  return "other";
}

void Connection::handle() {
  auto& req = parser_->get();
  keep_alive_ = req.keep_alive();
  // HTTP/1.0 knows no chunked encoding: a stream's body ends where the connection closes.
  chunked_ = req.version() >= 11;
  head_ = req.method() == http::verb::head;
  std::string_view target(req.target().data(), req.target().size());
  const std::string_view path = target.substr(0, target.find('?'));
  const std::string route = route_of(path);
  const http::verb m = req.method();
  if (!srv_->accepting) {
    keep_alive_ = false;
    return respond(route, 503, error_body(api_error(503, "the server is shutting down", "server_error",
                                                    "shutting_down")));
  }
  auto method_not_allowed = [&](const char* allow) {
    respond(route, 405,
            error_body(api_error(405, std::string(req.method_string()) + " is not allowed on " +
                                          std::string(path) + " (allowed: " + allow + ")",
                                 "invalid_request_error", "method_not_allowed")),
            "application/json", {{"Allow", allow}});
  };
  if (path == "/health") {
    if (m != http::verb::get && m != http::verb::head) return method_not_allowed("GET, HEAD");
    return health(route);
  }
  if (path == "/metrics") {
    if (m != http::verb::get && m != http::verb::head) return method_not_allowed("GET, HEAD");
    const int open = srv_->open.load() + srv_->admin_open.load();
    std::optional<CollectiveStats> coll;
    if (srv_->opt.collectives) coll = srv_->opt.collectives();
    return respond(route, 200, render_metrics(srv_->sched.stats(), srv_->counters, open, coll ? &*coll : nullptr),
                   "text/plain; version=0.0.4; charset=utf-8");
  }
  if (admin_)
    return respond(route, 404, error_body(api_error(404, "the admin port serves /health and /metrics only",
                                                    "invalid_request_error", "not_found")));
  const std::string_view sessions_prefix = "/v1/sessions/";
  const std::string_view models_prefix = "/v1/models/";
  if (path == "/v1/chat/completions" || path == "/v1/completions") {
    if (m != http::verb::post) return method_not_allowed("POST");
    return generate(route, path == "/v1/chat/completions");
  }
  if (path == "/v1/models") {
    if (m != http::verb::get) return method_not_allowed("GET");
    const json model = model_json(srv_->opt.model_id, srv_->opt.model_created);
    return respond(route, 200, list_json(json::array({model})).dump());
  }
  if (path.substr(0, models_prefix.size()) == models_prefix) {
    if (m != http::verb::get) return method_not_allowed("GET");
    if (path.substr(models_prefix.size()) != srv_->opt.model_id)
      return respond(route, 404, error_body(api_error(404, "model '" + std::string(path.substr(models_prefix.size())) +
                                                               "' does not exist",
                                                      "invalid_request_error", "model_not_found")));
    return respond(route, 200, model_json(srv_->opt.model_id, srv_->opt.model_created).dump());
  }
  if (path == "/v1/sessions") {
    if (m != http::verb::get) return method_not_allowed("GET");
    json data = json::array();
    for (const SessionInfo& s : srv_->sched.sessions()) data.push_back(session_json(s));
    return respond(route, 200, list_json(data).dump());
  }
  if (path.substr(0, sessions_prefix.size()) == sessions_prefix) {
    std::string id(path.substr(sessions_prefix.size()));
    constexpr std::string_view save_suffix = "/save";
    if (id.size() > save_suffix.size() && id.compare(id.size() - save_suffix.size(), save_suffix.size(), save_suffix) == 0) {
      if (m != http::verb::post) return method_not_allowed("POST");
      id.resize(id.size() - save_suffix.size());
      const SaveResult r = srv_->sched.save_session(id);
      if (r.status == SaveResult::Status::Saved) return respond(route, 200, session_saved_json(id, r.bytes, r.tokens).dump());
      return respond(route, save_status(r.status), error_body(save_error(r)));
    }
    if (m == http::verb::delete_) {
      if (!srv_->sched.delete_session(id)) return session_not_found(route, id);
      return respond(route, 200, session_deleted_json(id).dump());
    }
    if (m != http::verb::get) return method_not_allowed("GET, DELETE");
    for (const SessionInfo& s : srv_->sched.sessions())
      if (s.id == id) return respond(route, 200, session_json(s).dump());
    return session_not_found(route, id);
  }
  respond(route, 404, error_body(api_error(404, "no route " + std::string(path), "invalid_request_error",
                                           "not_found")));
}

// Healthy while pending work makes progress: a step must have completed within
// --stall-timeout (a rank stopped or lost holds every step back).
void Connection::health(const std::string& route) {
  const SchedulerStats st = srv_->sched.stats();
  const double age = st.pending > 0 ? st.last_step_age_s : 0.0;
  const double limit = srv_->opt.stall_timeout_s;
  const bool stalled = limit > 0 && st.pending > 0 && age > limit;
  json body = {{"status", stalled ? "stalled" : "ok"}, {"free_slots", st.free_slots}, {"slots", st.total_slots},
               {"pending", st.pending}, {"last_step_age_seconds", age}};
  if (stalled)
    body["message"] = "no forward step has completed for " + seconds(age) + " while " +
                      std::to_string(st.pending) + " request(s) are pending (--stall-timeout " +
                      seconds(limit) + ")";
  respond(route, stalled ? 503 : 200, body.dump());
}

void Connection::session_not_found(const std::string& route, const std::string& id) {
  respond(route, 404, error_body(api_error(404, "session '" + id + "' does not exist",
                                           "invalid_request_error", "session_not_found")));
}

}  // namespace sinkserve
