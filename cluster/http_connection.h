// The front node's internals, shared by its three parts: the transport (http_server.cpp: listeners,
// reading requests under deadlines, writing responses), the routes (http_routes.cpp: what each
// path answers) and the generation response (http_generation.cpp: a request handed to the
// scheduler and its events streamed back). Not an interface: only these files include it.
#pragma once
#include <atomic>
#include <chrono>
#include <csignal>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>  // before Asio: its C++20 coroutine support uses std::exchange
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "cluster/http_server.h"
#include "cluster/metrics.h"
#include "cluster/openai_api.h"

namespace sinkserve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

class Connection;
struct Gen;  // one generation response in flight (http_generation.cpp)

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

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(detail::ServerImpl* srv, tcp::socket&& s, bool admin);
  ~Connection();

  void start();
  // Server shutdown: closes the connection unless a response is still being produced or sent.
  void close_when_idle();
  void fail_in_flight(const std::string& message);

 private:
  // Transport (http_server.cpp).
  static bool is_hangup(const beast::error_code& ec);
  static std::string seconds(double s);  // "2.5 s", for messages
  // Deadlines. One timer guards whichever wait is current; a handler from an earlier arming
  // finds its generation stale and does nothing.
  enum class Wait { None, Idle, Request };
  void arm(Wait w, double seconds);
  void disarm();
  void read_request();
  void read_some();
  void on_some(beast::error_code ec, size_t n);
  void start_parse();
  bool deadline_passed();
  void on_header(beast::error_code ec);
  void read_body();
  void on_request(beast::error_code ec);
  void too_large();
  void fail_request(int status, std::string message);
  void respond(const std::string& route, int status, std::string body,
               const char* content_type = "application/json",
               const std::vector<std::pair<std::string, std::string>>& extra = {});
  std::string frame(std::string_view data) const;
  void enqueue(std::string data, size_t credit);
  void flush();
  void on_write(beast::error_code ec);
  void after_response();
  void close();

  // Routes (http_routes.cpp).
  static std::string route_of(std::string_view path);  // the metrics' name for a path
  void handle();
  void health(const std::string& route);
  void session_not_found(const std::string& route, const std::string& id);

  // The generation response (http_generation.cpp).
  void generate(const std::string& route, bool chat);
  void drain(const std::shared_ptr<Gen>& g);
  void give_back(size_t cost);
  void on_started(Gen& g, size_t cost);
  void on_rejected(Gen& g, const StreamEvent& e);
  void on_done(Gen& g, const StreamEvent& e, size_t cost);
  void end_stream(const std::string& route, std::string tail, size_t cost);
  void fail(const std::string& message);
  void client_gone();

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

}  // namespace sinkserve
