// The generation response: a request handed to the scheduler, and its events (on the compute
// thread) carried to the connection's strand and written as one JSON body or as server-sent
// events, within the client's output bound.
#include <nlohmann/json.hpp>

#include "cluster/http_connection.h"

namespace sinkserve {

namespace {

// What one queued event costs against a client's output bound beside its text: the SSE framing
// and JSON envelope of a chunk.
constexpr size_t kEventOverhead = 192;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// One request's generation: filled by the scheduler's compute thread through the sink, drained
// on the connection's strand.
struct Gen {
  Gen(bool stream_, bool usage_, std::string route_, ResponseFormat f)
      : stream(stream_), include_usage(usage_), route(std::move(route_)), fmt(std::move(f)) {}
  std::mutex mu;
  std::vector<StreamEvent> events;
  bool posted = false;
  bool closed = false;    // the connection gave up: the sink refuses further events
  bool overflow = false;  // ... because the client fell too far behind
  size_t pending = 0;     // bytes queued in events or written but not yet sent

  uint64_t id = 0;
  const bool stream, include_usage;
  const std::string route;
  const ResponseFormat fmt;
  std::string text;  // whole (non-streamed) reply
};

void Connection::generate(const std::string& route, bool chat) {
  auto& req = parser_->get();
  ApiRequest ar;
  ApiError err;
  std::string_view header_session;
  if (auto h = req.find("X-Session-Id"); h != req.end()) header_session = {h->value().data(), h->value().size()};
  if (!parse_generation_request(req.body(), chat, srv_->opt.model_id, header_session, &ar, &err))
    return respond(route, err.status, error_body(err));
  const uint64_t n = srv_->next_response++;
  const int64_t created = unix_now();
  ResponseFormat fmt(chat, (chat ? "chatcmpl-" : "cmpl-") + std::to_string(created) + "-" + std::to_string(n),
                     srv_->opt.model_id, created, ar.gen.session);
  session_ = ar.gen.session;
  auto g = std::make_shared<Gen>(ar.stream, ar.include_usage, route, std::move(fmt));
  gen_ = g;
  response_done_ = false;
  // The sink keeps the connection alive until the scheduler is done with the request.
  ar.gen.sink = [g, self = shared_from_this(), limit = srv_->opt.max_pending_bytes](const StreamEvent& e) {
    std::lock_guard lk(g->mu);
    if (g->closed) return false;
    if (e.kind == StreamEvent::Kind::Token && e.text.empty()) return true;
    const size_t cost = e.text.size() + kEventOverhead;
    const bool droppable = e.kind == StreamEvent::Kind::Token;
    if (droppable && g->pending + cost > limit) {
      g->closed = g->overflow = true;
    } else {
      g->pending += cost;
      g->events.push_back(e);
    }
    if (!g->posted) {
      g->posted = true;
      net::post(self->stream_.get_executor(), [self, g] { self->drain(g); });
    }
    return !g->closed;
  };
  g->id = srv_->sched.submit(std::move(ar.gen));
  // From here until the reply is done a read is pending, to see a hang-up at once; a client
  // that has already sent its next request is evidently still there.
  if (buf_.size() == 0) read_some();
}

void Connection::drain(const std::shared_ptr<Gen>& g) {
  std::vector<StreamEvent> events;
  bool overflow;
  {
    std::lock_guard lk(g->mu);
    events.swap(g->events);
    g->posted = false;
    overflow = g->overflow;
  }
  if (g != gen_) return;  // the connection already gave up on it
  for (const StreamEvent& e : events) {
    const size_t cost = e.text.size() + kEventOverhead;
    switch (e.kind) {
      case StreamEvent::Kind::Started: on_started(*g, cost); break;
      case StreamEvent::Kind::Rejected: on_rejected(*g, e); break;
      case StreamEvent::Kind::Token:
        if (g->stream) enqueue(frame(g->fmt.sse_text(e.text)), cost);
        else {
          g->text += e.text;
          give_back(cost);
        }
        break;
      case StreamEvent::Kind::Done: on_done(*g, e, cost); break;
    }
    if (g != gen_) break;
  }
  // The scheduler has already cancelled the request when the sink refused an event.
  if (overflow && g == gen_) {
    gen_.reset();
    close();
    return;
  }
  flush();
}

void Connection::give_back(size_t cost) {
  if (!gen_) return;
  std::lock_guard lk(gen_->mu);
  gen_->pending -= std::min(gen_->pending, cost);
}

void Connection::on_started(Gen& g, size_t cost) {
  if (g.stream) {
    if (!chunked_) keep_alive_ = false;
    std::string head = chunked_ ? "HTTP/1.1 200 OK\r\n" : "HTTP/1.0 200 OK\r\n";
    head += "Server: sinkserve\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
    if (chunked_) head += "Transfer-Encoding: chunked\r\n";
    if (!session_.empty()) head += "X-Session-Id: " + session_ + "\r\n";
    head += keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    const std::string first = g.fmt.sse_start();
    if (!first.empty()) head += frame(first);
    enqueue(std::move(head), cost);
    started_ = true;
  } else {
    give_back(cost);
  }
}

void Connection::on_rejected(Gen& g, const StreamEvent& e) {
  const ApiError err = reject_error(e.reject, e.message);
  std::vector<std::pair<std::string, std::string>> extra;
  if (e.reject == RejectReason::NoSlot) extra.push_back({"Retry-After", "1"});
  if (e.reject == RejectReason::ShuttingDown) keep_alive_ = false;
  const std::string route = g.route;
  gen_.reset();
  respond(route, err.status, error_body(err), "application/json", extra);
}

void Connection::on_done(Gen& g, const StreamEvent& e, size_t cost) {
  const bool ok = e.finish == FinishReason::Stop || e.finish == FinishReason::Length;
  const ApiError failure =
      e.finish == FinishReason::Shutdown
          ? api_error(503, "the server shut down before the reply was complete", "server_error", "shutting_down")
          : api_error(409, "the request was cancelled (its session was deleted)", "invalid_request_error",
                      "request_cancelled");
  if (!ok) keep_alive_ = keep_alive_ && e.finish != FinishReason::Shutdown;
  if (g.stream) {
    std::string tail;
    if (!e.text.empty()) tail += frame(g.fmt.sse_text(e.text));
    if (ok) {
      tail += frame(g.fmt.sse_finish(e.finish));
      if (g.include_usage) tail += frame(g.fmt.sse_usage(e.usage));
    } else {
      tail += frame(ResponseFormat::sse_error(failure));
    }
    end_stream(g.route, std::move(tail), cost);
  } else {
    const std::string route = g.route;
    std::string body = ok ? g.fmt.body(g.text + e.text, e.finish, e.usage) : error_body(failure);
    gen_.reset();
    respond(route, ok ? 200 : failure.status, std::move(body));
  }
}

void Connection::end_stream(const std::string& route, std::string tail, size_t cost) {
  tail += frame(ResponseFormat::kSseDone);
  if (chunked_) tail += "0\r\n\r\n";
  srv_->counters.count(route, 200);
  enqueue(std::move(tail), cost);
  gen_.reset();
  response_done_ = true;
}

// The compute loop cannot answer any more: the reply in flight ends here.
void Connection::fail(const std::string& message) {
  if (closed_) return;
  keep_alive_ = false;
  if (!gen_) {
    if (!writing_ && outq_.empty()) close();
    return;
  }
  {
    std::lock_guard lk(gen_->mu);
    gen_->closed = true;
  }
  const ApiError e = api_error(503, message, "server_error", "compute_failed");
  if (gen_->stream && started_) {
    const std::string route = gen_->route;
    end_stream(route, frame(ResponseFormat::sse_error(e)), 0);
    flush();
  } else {
    const std::string route = gen_->route;
    gen_.reset();
    respond(route, 503, error_body(e));
  }
}

void Connection::client_gone() {
  if (gen_) {
    {
      std::lock_guard lk(gen_->mu);
      gen_->closed = true;
    }
    srv_->sched.cancel(gen_->id);
    gen_.reset();
  }
  close();
}

}  // namespace sinkserve
