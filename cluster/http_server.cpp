#include "cluster/http_server.h"

#include <atomic>
#include <csignal>
#include <deque>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>  // before Asio: its C++20 coroutine support uses std::exchange

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "cluster/metrics.h"
#include "cluster/openai_api.h"

namespace sinkserve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

namespace {

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr size_t kHeaderLimit = 16 * 1024;
// Connections the admin listener holds at once: a few monitors, never the main port's crowd.
constexpr int kAdminConnections = 16;
// What one queued event costs against a client's output bound beside its text: the SSE framing
// and JSON envelope of a chunk.
constexpr size_t kEventOverhead = 192;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string chunk_frame(std::string_view data) {
  char size[20];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  std::string out = size;
  out.append(data);
  out += "\r\n";
  return out;
}

ApiError make_error(int status, std::string message, std::string type, std::string code = {},
                    std::string param = {}) {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.code = std::move(code);
  e.param = std::move(param);
  return e;
}

}  // namespace

class Connection;

struct detail::ServerImpl {
  ServerImpl(Scheduler& s, ServerOptions o) : sched(s), opt(std::move(o)) {}

  Scheduler& sched;
  ServerOptions opt;
  HttpCounters counters;
  std::atomic<int> open{0};
  std::atomic<int> admin_open{0};
  std::atomic<bool> accepting{true};
  std::atomic<uint64_t> next_response{1};
  std::mutex conns_mu;
  std::vector<std::weak_ptr<Connection>> conns;
  std::function<void(int)> signal_fn;

  // Destroyed before the counters above: pending handlers own connections that count themselves.
  net::io_context ioc;
  tcp::acceptor acceptor{net::make_strand(ioc)};
  tcp::acceptor admin_acceptor{net::make_strand(ioc)};
  net::signal_set signals{ioc, SIGINT, SIGTERM};
  std::vector<std::thread> threads;
  int bound_port = 0;
  int bound_admin_port = -1;

  void listen(tcp::acceptor& a, int port, const char* what);
  void do_accept(tcp::acceptor& a, bool admin);
  void refuse(tcp::socket s);
  void wait_signal();
  template <class Fn>
  void each_connection(Fn fn);
};

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

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(detail::ServerImpl* srv, tcp::socket&& s, bool admin)
      : srv_(srv), stream_(std::move(s)), timer_(stream_.get_executor()), admin_(admin) {
    ++(admin_ ? srv_->admin_open : srv_->open);
    // Tokens are small writes: Nagle's algorithm would hold each one back for the client's ACK.
    beast::error_code ec;
    stream_.socket().set_option(tcp::no_delay(true), ec);
    // Autotuned send buffers grow to megabytes that --client-buffer does not see: a client that
    // stops reading would hold its stream running that much longer before it is cut off.
    const int sndbuf = int(std::min<size_t>(srv_->opt.max_pending_bytes, size_t(1) << 20));
    stream_.socket().set_option(net::socket_base::send_buffer_size(sndbuf), ec);
  }
  ~Connection() { --(admin_ ? srv_->admin_open : srv_->open); }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_request(); });
  }
  // Server shutdown: closes the connection unless a response is still being produced or sent.
  void close_when_idle() {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      self->keep_alive_ = false;
      if (!self->gen_ && !self->writing_ && self->outq_.empty()) self->close();
    });
  }
  void fail_in_flight(const std::string& message) {
    net::post(stream_.get_executor(), [self = shared_from_this(), message] { self->fail(message); });
  }

 private:
  // A read that ended because the client went away: close without answering.
  static bool is_hangup(const beast::error_code& ec) {
    return ec == http::error::end_of_stream || ec == net::error::eof ||
           ec == net::error::operation_aborted || ec == net::error::connection_reset;
  }

  // Deadlines. One timer guards whichever wait is current; a handler from an earlier arming
  // finds its generation stale and does nothing.
  enum class Wait { None, Idle, Request };
  void arm(Wait w, double seconds) {
    wait_ = w;
    const uint64_t gen = ++timer_gen_;
    timer_.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(seconds)));
    timer_.async_wait([self = shared_from_this(), gen](beast::error_code ec) {
      if (ec || gen != self->timer_gen_ || self->closed_) return;
      if (self->wait_ == Wait::Idle) return self->close();
      if (self->wait_ == Wait::Request) {
        // The pending read ends with operation_aborted and answers 408.
        self->timed_out_ = true;
        beast::error_code ignored;
        self->stream_.socket().cancel(ignored);
      }
    });
  }
  void disarm() {
    wait_ = Wait::None;
    ++timer_gen_;
    timer_.cancel();
  }

  void read_request() {
    if (closed_) return;
    response_done_ = false;
    session_.clear();
    chunked_ = true;
    head_ = false;
    started_ = false;
    timed_out_ = false;
    parser_.emplace();
    parser_->body_limit(srv_->opt.max_body);
    parser_->header_limit(kHeaderLimit);
    // Keep-alive: wait for the next request's first bytes under the idle timeout. The read may
    // already be pending: it watched for a hang-up during the last reply.
    if (reading_) return arm(Wait::Idle, srv_->opt.idle_timeout_s);
    if (buf_.size() > 0 || fresh_) return start_parse();
    arm(Wait::Idle, srv_->opt.idle_timeout_s);
    read_some();
  }

  // One read of whatever arrives, into the buffer the parser reads from: between requests it
  // waits for the next one; during a reply it notices a client that hangs up.
  void read_some() {
    if (reading_ || closed_) return;
    reading_ = true;
    stream_.socket().async_read_some(buf_.prepare(4096),
                                     [self = shared_from_this()](beast::error_code ec, size_t n) {
                                       self->on_some(ec, n);
                                     });
  }

  void on_some(beast::error_code ec, size_t n) {
    reading_ = false;
    if (!ec) buf_.commit(n);
    if (closed_) return;
    if (gen_) {
      // During a reply the client has nothing to say: an end of stream means it is gone. Bytes
      // are its next request (pipelined), parsed once this reply is done.
      if (ec) client_gone();
      return;
    }
    if (ec) {
      if (!writing_ && outq_.empty()) close();
      return;
    }
    if (wait_ == Wait::Idle) start_parse();
  }

  void start_parse() {
    fresh_ = false;
    arm(Wait::Request, srv_->opt.read_timeout_s);
    reading_ = true;
    http::async_read_header(stream_, buf_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
  }

  // A read cut short by the request deadline: 408 when the client had begun a request.
  bool deadline_passed() {
    if (!timed_out_) return false;
    if (parser_->got_some() || buf_.size() > 0) {
      fail_request(408, "the request did not arrive within " + seconds(srv_->opt.read_timeout_s) +
                            " (--read-timeout)");
    } else {
      close();
    }
    return true;
  }
  static std::string seconds(double s) {
    char b[32];
    std::snprintf(b, sizeof b, "%g s", s);
    return b;
  }

  void on_header(beast::error_code ec) {
    reading_ = false;
    if (deadline_passed()) return;
    if (ec == http::error::header_limit) return fail_request(431, "request headers are too large");
    if (ec == http::error::body_limit) return too_large();
    if (is_hangup(ec)) return close();
    if (ec) return fail_request(400, std::string("malformed HTTP request: ") + ec.message());
    if (auto len = parser_->content_length(); len && *len > srv_->opt.max_body) return too_large();
    auto& req = parser_->get();
    auto expect = req.find(http::field::expect);
    if (expect != req.end() && beast::iequals(expect->value(), "100-continue")) {
      writing_ = true;
      net::async_write(stream_, net::buffer(kContinue),
                       [self = shared_from_this()](beast::error_code wec, size_t) {
                         self->writing_ = false;
                         if (wec || self->closed_) return self->close();
                         self->read_body();
                       });
      return;
    }
    read_body();
  }

  void read_body() {
    reading_ = true;
    http::async_read(stream_, buf_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_request(ec); });
  }

  void on_request(beast::error_code ec) {
    reading_ = false;
    if (deadline_passed()) return;
    if (ec == http::error::body_limit) return too_large();
    if (is_hangup(ec)) return close();
    if (ec) return fail_request(400, std::string("malformed HTTP request: ") + ec.message());
    disarm();
    handle();
  }

  void too_large() {
    fail_request(413, "the request body exceeds the limit of " + std::to_string(srv_->opt.max_body) +
                          " bytes (--max-body)");
  }

  // A request that cannot be read on: answer and close, since the rest of the stream is unparsed.
  void fail_request(int status, std::string message) {
    disarm();
    keep_alive_ = false;
    respond("other", status, error_body(make_error(status, std::move(message), "invalid_request_error")));
  }

  static std::string route_of(std::string_view path) {
    for (std::string_view r : {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/sessions",
                               "/health", "/metrics"})
      if (path == r || (path.size() > r.size() && path.substr(0, r.size()) == r && path[r.size()] == '/'))
        return std::string(r);
    return "other";
  }

  void handle() {
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
      return respond(route, 503, error_body(make_error(503, "the server is shutting down", "server_error",
                                                       "shutting_down")));
    }
    auto method_not_allowed = [&](const char* allow) {
      respond(route, 405,
              error_body(make_error(405, std::string(req.method_string()) + " is not allowed on " +
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
      return respond(route, 404, error_body(make_error(404, "the admin port serves /health and /metrics only",
                                                       "invalid_request_error", "not_found")));
    const std::string_view sessions_prefix = "/v1/sessions/";
    const std::string_view models_prefix = "/v1/models/";
    if (path == "/v1/chat/completions" || path == "/v1/completions") {
      if (m != http::verb::post) return method_not_allowed("POST");
      return generate(route, path == "/v1/chat/completions");
    }
    if (path == "/v1/models") {
      if (m != http::verb::get) return method_not_allowed("GET");
      return respond(route, 200, json{{"object", "list"}, {"data", json::array({model_json()})}}.dump());
    }
    if (path.substr(0, models_prefix.size()) == models_prefix) {
      if (m != http::verb::get) return method_not_allowed("GET");
      if (path.substr(models_prefix.size()) != srv_->opt.model_id)
        return respond(route, 404, error_body(make_error(404, "model '" + std::string(path.substr(models_prefix.size())) +
                                                                  "' does not exist",
                                                         "invalid_request_error", "model_not_found")));
      return respond(route, 200, model_json().dump());
    }
    if (path == "/v1/sessions") {
      if (m != http::verb::get) return method_not_allowed("GET");
      json data = json::array();
      for (const SessionInfo& s : srv_->sched.sessions()) data.push_back(session_json(s));
      return respond(route, 200, json{{"object", "list"}, {"data", data}}.dump());
    }
    if (path.substr(0, sessions_prefix.size()) == sessions_prefix) {
      const std::string id(path.substr(sessions_prefix.size()));
      if (m == http::verb::delete_) {
        if (!srv_->sched.delete_session(id)) return session_not_found(route, id);
        return respond(route, 200, json{{"id", id}, {"object", "session.deleted"}, {"deleted", true}}.dump());
      }
      if (m != http::verb::get) return method_not_allowed("GET, DELETE");
      for (const SessionInfo& s : srv_->sched.sessions())
        if (s.id == id) return respond(route, 200, session_json(s).dump());
      return session_not_found(route, id);
    }
    respond(route, 404, error_body(make_error(404, "no route " + std::string(path), "invalid_request_error",
                                              "not_found")));
  }

  // Healthy while pending work makes progress: a step must have completed within
  // --stall-timeout (a rank stopped or lost holds every step back).
  void health(const std::string& route) {
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

  json model_json() const {
    return {{"id", srv_->opt.model_id}, {"object", "model"}, {"created", srv_->opt.model_created},
            {"owned_by", "sinkserve"}};
  }
  static json session_json(const SessionInfo& s) {
    return {{"id", s.id}, {"object", "session"}, {"tokens", s.tokens}, {"cache_rows", s.cache_rows},
            {"messages", s.messages},
            {"last_used_at", s.last_use_unix}, {"busy", s.busy}};
  }
  void session_not_found(const std::string& route, const std::string& id) {
    respond(route, 404, error_body(make_error(404, "session '" + id + "' does not exist",
                                              "invalid_request_error", "session_not_found")));
  }

  void generate(const std::string& route, bool chat) {
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

  void drain(const std::shared_ptr<Gen>& g) {
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

  void give_back(size_t cost) {
    if (!gen_) return;
    std::lock_guard lk(gen_->mu);
    gen_->pending -= std::min(gen_->pending, cost);
  }

  void on_started(Gen& g, size_t cost) {
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

  void on_rejected(Gen& g, const StreamEvent& e) {
    int status = 400;
    std::string type = "invalid_request_error", code;
    std::vector<std::pair<std::string, std::string>> extra;
    switch (e.reject) {
      case RejectReason::BadRequest: break;
      case RejectReason::NoSlot:
        status = 429, type = "server_busy", code = "no_free_slot";
        extra.push_back({"Retry-After", "1"});
        break;
      case RejectReason::SessionBusy: status = 409, code = "session_busy"; break;
      case RejectReason::ShuttingDown:
        status = 503, type = "server_error", code = "shutting_down";
        keep_alive_ = false;
        break;
    }
    const std::string route = g.route;
    gen_.reset();
    respond(route, status, error_body(make_error(status, e.message, type, code)), "application/json", extra);
  }

  void on_done(Gen& g, const StreamEvent& e, size_t cost) {
    const bool ok = e.finish == FinishReason::Stop || e.finish == FinishReason::Length;
    const ApiError failure =
        e.finish == FinishReason::Shutdown
            ? make_error(503, "the server shut down before the reply was complete", "server_error", "shutting_down")
            : make_error(409, "the request was cancelled (its session was deleted)", "invalid_request_error",
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

  void end_stream(const std::string& route, std::string tail, size_t cost) {
    tail += frame(ResponseFormat::kSseDone);
    if (chunked_) tail += "0\r\n\r\n";
    srv_->counters.count(route, 200);
    enqueue(std::move(tail), cost);
    gen_.reset();
    response_done_ = true;
  }

  // The compute loop cannot answer any more: the reply in flight ends here.
  void fail(const std::string& message) {
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
    const ApiError e = make_error(503, message, "server_error", "compute_failed");
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

  void client_gone() {
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

  void respond(const std::string& route, int status, std::string body,
               const char* content_type = "application/json",
               const std::vector<std::pair<std::string, std::string>>& extra = {}) {
    http::response<http::string_body> res{http::int_to_status(unsigned(status)), 11};
    res.set(http::field::server, "sinkserve");
    res.set(http::field::content_type, content_type);
    if (!session_.empty()) res.set("X-Session-Id", session_);
    for (const auto& [k, v] : extra) res.set(k, v);
    res.keep_alive(keep_alive_);
    res.body() = std::move(body);
    res.prepare_payload();
    std::ostringstream os;
    if (head_) os << res.base();  // HEAD: the headers GET would send, Content-Length included
    else os << res;
    srv_->counters.count(route, status);
    enqueue(os.str(), 0);
    response_done_ = true;
    flush();
  }

  std::string frame(std::string_view data) const { return chunked_ ? chunk_frame(data) : std::string(data); }

  void enqueue(std::string data, size_t credit) {
    if (closed_) return;
    outq_.push_back({std::move(data), credit});
  }

  void flush() {
    if (writing_ || closed_) return;
    if (outq_.empty()) {
      if (response_done_ && !gen_) after_response();
      return;
    }
    writing_ = true;
    net::async_write(stream_, net::buffer(outq_.front().first),
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_write(ec); });
  }

  void on_write(beast::error_code ec) {
    writing_ = false;
    if (closed_) {
      outq_.clear();  // kept until now: the write that just ended was reading its front
      return;
    }
    const size_t credit = outq_.front().second;
    outq_.pop_front();
    give_back(credit);
    if (ec) return client_gone();
    flush();
  }

  void after_response() {
    if (keep_alive_ && srv_->accepting && !closed_) return read_request();
    close();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    disarm();
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
    if (!writing_) outq_.clear();
  }

  detail::ServerImpl* srv_;
  beast::tcp_stream stream_;
  net::steady_timer timer_;
  const bool admin_;  // on the admin listener: /health and /metrics only
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::deque<std::pair<std::string, size_t>> outq_;  // bytes to send, and their credit
  Wait wait_ = Wait::None;
  uint64_t timer_gen_ = 0;
  bool fresh_ = true;       // no request read yet: the request deadline runs from the accept
  bool reading_ = false;    // a read on the socket is pending
  bool timed_out_ = false;  // the request deadline cancelled the pending read
  bool writing_ = false;
  bool response_done_ = true;
  bool keep_alive_ = true;
  bool closed_ = false;
  bool chunked_ = true;  // the request's HTTP version allows a chunked reply
  bool head_ = false;
  bool started_ = false;  // a stream's headers are queued: its end must be an event, not a status
  std::string session_;  // of the request being answered, echoed as X-Session-Id
  std::shared_ptr<Gen> gen_;
};

template <class Fn>
void detail::ServerImpl::each_connection(Fn fn) {
  std::lock_guard lk(conns_mu);
  for (auto& w : conns)
    if (auto c = w.lock()) fn(*c);
}

void detail::ServerImpl::do_accept(tcp::acceptor& a, bool admin) {
  a.async_accept(net::make_strand(ioc), [this, &a, admin](beast::error_code ec, tcp::socket s) {
    if (!a.is_open()) return;
    if (!ec) {
      if (!accepting) {
        beast::error_code ignored;
        s.close(ignored);
      } else if (admin ? admin_open.load() >= kAdminConnections : open.load() >= opt.max_connections) {
        refuse(std::move(s));
      } else {
        auto c = std::make_shared<Connection>(this, std::move(s), admin);
        {
          std::lock_guard lk(conns_mu);
          std::erase_if(conns, [](const std::weak_ptr<Connection>& w) { return w.expired(); });
          conns.push_back(c);
        }
        c->start();
      }
    }
    do_accept(a, admin);
  });
}
void detail::ServerImpl::refuse(tcp::socket s) {
  counters.count("connection", 503);
  static const std::string kRefusal = [] {
    const std::string body = error_body(make_error(503, "too many open connections (--max-connections)",
                                                   "server_error", "too_many_connections"));
    return "HTTP/1.1 503 Service Unavailable\r\nServer: sinkserve\r\nContent-Type: application/json\r\n"
           "Retry-After: 1\r\nConnection: close\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
  }();
  // Answer, then drain whatever the client sent until it closes (bounded in time), so that the
  // close does not reset the connection before the client has read the answer.
  struct Refusal : std::enable_shared_from_this<Refusal> {
    explicit Refusal(tcp::socket s) : st(std::move(s)) {}
    beast::tcp_stream st;
    std::array<char, 4096> buf;
    void start() {
      st.expires_after(std::chrono::seconds(2));
      net::async_write(st, net::buffer(kRefusal), [self = shared_from_this()](beast::error_code ec, size_t) {
        if (ec) return;
        beast::error_code ignored;
        self->st.socket().shutdown(tcp::socket::shutdown_send, ignored);
        self->drain();
      });
    }
    void drain() {
      st.async_read_some(net::buffer(buf), [self = shared_from_this()](beast::error_code ec, size_t) {
        if (!ec) self->drain();
      });
    }
  };
  std::make_shared<Refusal>(std::move(s))->start();
}

void detail::ServerImpl::wait_signal() {
  signals.async_wait([this](beast::error_code ec, int sig) {
    if (ec) return;
    if (signal_fn) signal_fn(sig);
    wait_signal();
  });
}

HttpServer::HttpServer(Scheduler& scheduler, ServerOptions opt)
    : impl_(std::make_unique<detail::ServerImpl>(scheduler, std::move(opt))) {}

HttpServer::~HttpServer() {
  if (!impl_->threads.empty()) stop(std::chrono::milliseconds(0));
}

void HttpServer::on_signal(std::function<void(int)> fn) { impl_->signal_fn = std::move(fn); }

void detail::ServerImpl::listen(tcp::acceptor& a, int port, const char* what) {
  beast::error_code ec;
  const auto addr = net::ip::make_address(opt.host, ec);
  if (ec) throw std::runtime_error("invalid --host '" + opt.host + "': " + ec.message());
  const tcp::endpoint ep(addr, uint16_t(port));
  const std::string where = opt.host + ":" + std::to_string(port);
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error(std::string("cannot listen") + what + " on " + where + ": " + ec.message());
}

void HttpServer::start() {
  detail::ServerImpl& s = *impl_;
  s.listen(s.acceptor, s.opt.port, "");
  s.bound_port = s.acceptor.local_endpoint().port();
  s.do_accept(s.acceptor, false);
  if (s.opt.admin_port >= 0) {
    s.listen(s.admin_acceptor, s.opt.admin_port, " (--admin-port)");
    s.bound_admin_port = s.admin_acceptor.local_endpoint().port();
    s.do_accept(s.admin_acceptor, true);
  }
  s.wait_signal();
  for (int i = 0; i < std::max(1, s.opt.io_threads); ++i) s.threads.emplace_back([&s] { s.ioc.run(); });
}

int HttpServer::port() const { return impl_->bound_port; }

int HttpServer::admin_port() const { return impl_->bound_admin_port; }

void HttpServer::stop_accepting() {
  detail::ServerImpl& s = *impl_;
  if (!s.accepting.exchange(false)) return;
  for (tcp::acceptor* a : {&s.acceptor, &s.admin_acceptor})
    net::post(a->get_executor(), [a] {
      beast::error_code ec;
      a->close(ec);
    });
  s.each_connection([](Connection& c) { c.close_when_idle(); });
}

void HttpServer::fail_in_flight(const std::string& message) {
  impl_->each_connection([&](Connection& c) { c.fail_in_flight(message); });
}

void HttpServer::after(std::chrono::milliseconds delay, std::function<void()> fn) {
  auto t = std::make_shared<net::steady_timer>(impl_->ioc, delay);
  t->async_wait([t, fn = std::move(fn)](beast::error_code ec) {
    if (!ec) fn();
  });
}

void HttpServer::stop(std::chrono::milliseconds grace) {
  detail::ServerImpl& s = *impl_;
  stop_accepting();
  const auto deadline = std::chrono::steady_clock::now() + grace;
  while (s.open.load() + s.admin_open.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  s.ioc.stop();
  for (std::thread& t : s.threads) t.join();
  s.threads.clear();
}

}  // namespace sinkserve
