// The HTTP/1.1 front node (Boost.Beast) on rank 0: OpenAI-compatible routes, server-sent-event
// streaming, sessions, health and metrics. It runs its own I/O threads and talks to the
// Scheduler only through its thread-safe queue API; it never touches the model.
//
// Robustness: request bodies are bounded (413), connections beyond the limit get 503 and are
// closed, a request's headers and body must arrive within a deadline (408), a client that
// disconnects has its generation cancelled, and a client that reads slower than tokens arrive is
// cut off once its queued output exceeds a bound, so that it never holds back the compute loop or
// other clients. No I/O handler ever blocks: every wait on a socket is an asynchronous operation.
// An optional admin listener answers /health and /metrics whatever the main port's load.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "cluster/metrics.h"
#include "runtime/scheduler.h"

namespace sinkserve {

namespace detail {
struct ServerImpl;
}

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (see HttpServer::port())
  size_t max_body = 1 << 20;
  int max_connections = 256;
  int io_threads = 2;
  size_t max_pending_bytes = 1 << 20;   // per connection: output produced but not yet sent
  double idle_timeout_s = 60;           // keep-alive connections idle longer are closed
  double read_timeout_s = 10;           // a request's headers and body, from its first byte
  int admin_port = -1;                  // -1: no admin listener; 0: any free port
  double stall_timeout_s = 30;          // /health is 503 when pending work saw no step this long
  std::string model_id;                 // the one model id of /v1/models
  int64_t model_created = 0;            // its "created" (seconds since the epoch)
  // The collectives' counters for /metrics, read on an I/O thread; empty: not reported.
  std::function<CollectiveStats()> collectives;
};

class HttpServer {
 public:
  HttpServer(Scheduler& scheduler, ServerOptions opt);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds, listens and starts the I/O threads. Throws std::runtime_error naming the address.
  void start();
  int port() const;
  int admin_port() const;  // -1 without an admin listener
  // Calls `fn(signal)` (on an I/O thread) on SIGINT or SIGTERM. Call before start().
  void on_signal(std::function<void(int)> fn);
  // Stops accepting connections; requests arriving on open ones get 503. Thread-safe.
  void stop_accepting();
  // Ends every request in flight from the front node, for when the compute loop cannot: streams
  // get an error event and [DONE], other requests 503 with `message`; then the connections close.
  // Thread-safe.
  void fail_in_flight(const std::string& message);
  // Runs `fn` on an I/O thread after `delay`. Thread-safe.
  void after(std::chrono::milliseconds delay, std::function<void()> fn);
  // After the scheduler has ended every request: lets responses in flight drain for up to
  // `grace`, closes every connection and joins the I/O threads.
  void stop(std::chrono::milliseconds grace);

 private:
  std::unique_ptr<detail::ServerImpl> impl_;
};

}  // namespace sinkserve
