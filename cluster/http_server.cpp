// The transport: listeners, connection limits, reading each request under its deadlines, and
// writing responses with bounded queued output. What a request gets is decided in
// http_routes.cpp; generation responses are produced in http_generation.cpp.
#include "cluster/http_server.h"

#include <array>
#include <csignal>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "cluster/http_connection.h"

namespace sinkserve {

namespace {

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
constexpr size_t kHeaderLimit = 16 * 1024;
// Connections the admin listener holds at once: a few monitors, never the main port's crowd.
constexpr int kAdminConnections = 16;

std::string chunk_frame(std::string_view data) {
  char size[20];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  std::string out = size;
  out.append(data);
  out += "\r\n";
  return out;
}

}  // namespace

Connection::Connection(detail::ServerImpl* srv, tcp::socket&& s, bool admin)
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

Connection::~Connection() { --(admin_ ? srv_->admin_open : srv_->open); }

void Connection::start() {
  net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_request(); });
}

void Connection::close_when_idle() {
  net::post(stream_.get_executor(), [self = shared_from_this()] {
    self->keep_alive_ = false;
    if (!self->gen_ && !self->writing_ && self->outq_.empty()) self->close();
  });
}

void Connection::fail_in_flight(const std::string& message) {
  net::post(stream_.get_executor(), [self = shared_from_this(), message] { self->fail(message); });
}

// A read that ended because the client went away: close without answering.
bool Connection::is_hangup(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == net::error::eof ||
         ec == net::error::operation_aborted || ec == net::error::connection_reset;
}

std::string Connection::seconds(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%g s", s);
  return b;
}

void Connection::arm(Wait w, double seconds) {
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

void Connection::disarm() {
  wait_ = Wait::None;
  ++timer_gen_;
  timer_.cancel();
}

void Connection::read_request() {
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
void Connection::read_some() {
  if (reading_ || closed_) return;
  reading_ = true;
  stream_.socket().async_read_some(buf_.prepare(4096),
                                   [self = shared_from_this()](beast::error_code ec, size_t n) {
                                     self->on_some(ec, n);
                                   });
}

void Connection::on_some(beast::error_code ec, size_t n) {
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

void Connection::start_parse() {
  fresh_ = false;
  arm(Wait::Request, srv_->opt.read_timeout_s);
  reading_ = true;
  http::async_read_header(stream_, buf_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
}

// A read cut short by the request deadline: 408 when the client had begun a request.
bool Connection::deadline_passed() {
  if (!timed_out_) return false;
  if (parser_->got_some() || buf_.size() > 0) {
    fail_request(408, "the request did not arrive within " + seconds(srv_->opt.read_timeout_s) +
                          " (--read-timeout)");
  } else {
    close();
  }
  return true;
}

void Connection::on_header(beast::error_code ec) {
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

void Connection::read_body() {
  reading_ = true;
  http::async_read(stream_, buf_, *parser_,
                   [self = shared_from_this()](beast::error_code ec, size_t) { self->on_request(ec); });
}

void Connection::on_request(beast::error_code ec) {
  reading_ = false;
  if (deadline_passed()) return;
  if (ec == http::error::body_limit) return too_large();
  if (is_hangup(ec)) return close();
  if (ec) return fail_request(400, std::string("malformed HTTP request: ") + ec.message());
  disarm();
  handle();
}

void Connection::too_large() {
  fail_request(413, "the request body exceeds the limit of " + std::to_string(srv_->opt.max_body) +
                        " bytes (--max-body)");
}

// A request that cannot be read on: answer and close, since the rest of the stream is unparsed.
void Connection::fail_request(int status, std::string message) {
  disarm();
  keep_alive_ = false;
  respond("other", status, error_body(api_error(status, std::move(message), "invalid_request_error")));
}

void Connection::respond(const std::string& route, int status, std::string body,
                         const char* content_type,
                         const std::vector<std::pair<std::string, std::string>>& extra) {
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

std::string Connection::frame(std::string_view data) const {
  return chunked_ ? chunk_frame(data) : std::string(data);
}

void Connection::enqueue(std::string data, size_t credit) {
  if (closed_) return;
  outq_.push_back({std::move(data), credit});
}

void Connection::flush() {
  if (writing_ || closed_) return;
  if (outq_.empty()) {
    if (response_done_ && !gen_) after_response();
    return;
  }
  writing_ = true;
  net::async_write(stream_, net::buffer(outq_.front().first),
                   [self = shared_from_this()](beast::error_code ec, size_t) { self->on_write(ec); });
}

void Connection::on_write(beast::error_code ec) {
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

void Connection::after_response() {
  if (keep_alive_ && srv_->accepting && !closed_) return read_request();
  close();
}

void Connection::close() {
  if (closed_) return;
  closed_ = true;
  disarm();
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
  stream_.socket().close(ec);
  if (!writing_) outq_.clear();
}

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
    const std::string body = error_body(api_error(503, "too many open connections (--max-connections)",
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
