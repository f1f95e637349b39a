// Prometheus text exposition of the server's counters: HTTP responses by status, and the
// scheduler's token counters, latency histograms and slot occupancy.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "runtime/scheduler.h"

namespace sinkserve {

// Responses sent, by route and status code. Thread-safe.
class HttpCounters {
 public:
  void count(const std::string& route, int status);
  std::map<std::pair<std::string, int>, uint64_t> snapshot() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> n_;
};

std::string render_metrics(const SchedulerStats& s, const HttpCounters& http, int open_connections);

}  // namespace sinkserve
