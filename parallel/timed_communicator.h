// A communicator that forwards to another and accounts the time and bytes of the collectives the
// model issues per step (all-reduce, all-gather), for `sinkserve bench` and the server's /metrics.
// The counters may be read from any thread while the compute thread adds to them.
#pragma once
#include <atomic>
#include <chrono>
#include <memory>

#include "parallel/communicator.h"

namespace sinkserve {

class TimedCommunicator final : public Communicator {
 public:
  explicit TimedCommunicator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string name() const override { return inner_->name(); }
  void all_reduce_sum(float* buf, size_t n) override {
    const auto t0 = std::chrono::steady_clock::now();
    inner_->all_reduce_sum(buf, n);
    account(t0, n * sizeof(float));
  }
  void all_gather(const float* send, float* recv, size_t n) override {
    const auto t0 = std::chrono::steady_clock::now();
    inner_->all_gather(send, recv, n);
    account(t0, n * sizeof(float));
  }
  void broadcast(void* host_buf, size_t bytes, int root) override { inner_->broadcast(host_buf, bytes, root); }
  void all_reduce_sum_u64(uint64_t* host_buf, size_t n) override { inner_->all_reduce_sum_u64(host_buf, n); }
  void barrier() override { inner_->barrier(); }
  void abort(const std::string& message) override { inner_->abort(message); }

  double seconds() const { return double(nanoseconds_.load(std::memory_order_relaxed)) * 1e-9; }
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  uint64_t calls() const { return calls_.load(std::memory_order_relaxed); }
  void clear() { nanoseconds_ = 0, bytes_ = 0, calls_ = 0; }

 private:
  void account(std::chrono::steady_clock::time_point t0, size_t bytes) {
    const auto dt = std::chrono::steady_clock::now() - t0;
    nanoseconds_.fetch_add(uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(dt).count()),
                           std::memory_order_relaxed);
    bytes_.fetch_add(bytes, std::memory_order_relaxed);
    calls_.fetch_add(1, std::memory_order_relaxed);
  }
  std::unique_ptr<Communicator> inner_;
  std::atomic<uint64_t> nanoseconds_{0}, bytes_{0}, calls_{0};
};

}  // namespace sinkserve
