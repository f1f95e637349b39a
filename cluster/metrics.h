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

// The tensor-parallel collectives (all-reduce, all-gather) rank 0's steps have issued: their
// payload and the time rank 0 spent in them, waiting for the other ranks included. NCCL enqueues
// them on the GPU's stream, so there the time is their launch only.
struct CollectiveStats {
  int ranks = 1;
  double seconds = 0;
  uint64_t bytes = 0;
  uint64_t calls = 0;
};

// `collectives` null: the server does not measure them.
std::string render_metrics(const SchedulerStats& s, const HttpCounters& http, int open_connections,
                           const CollectiveStats* collectives = nullptr);

}  // namespace sinkserve
