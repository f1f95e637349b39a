// A persistent fork/join pool for the CPU backend. The forward pass calls parallel_for about ten
// times per layer per decoded token, so dispatch must cost microseconds: workers spin on a
// generation counter for a while after each job and only then sleep on a futex, and the calling
// thread takes a share of the work instead of waiting idle.
#pragma once
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace sinkserve::cpu {

class ThreadPool {
 public:
  // `threads` counts the calling thread; 0 = one per CPU the process may run on. With more than
  // one thread (and no more than the allowed CPUs), each worker is pinned to its own allowed CPU,
  // all but the first, which is left to the calling thread: unpinned threads on small VMs are
  // sometimes scheduled onto the same core.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end) over disjoint ranges covering [0, n) exactly once, on the pool's threads
  // and the caller, and returns when all are done. The first exception thrown by fn is rethrown
  // here. Nested calls (from inside fn) run inline.
  template <class F>
  void parallel_for(int64_t n, F&& fn) {
    using Fn = std::remove_reference_t<F>;
    run(n, [](void* ctx, int64_t b, int64_t e) { (*static_cast<Fn*>(ctx))(b, e); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  using Task = void (*)(void*, int64_t, int64_t);
  void run(int64_t n, Task task, void* ctx);
  void worker_main(int cpu);
  void work_on_current_job();

  int n_threads_;
  bool oversubscribed_;  // more threads than CPUs: yield instead of spinning
  std::vector<std::thread> workers_;
  std::mutex submit_;  // one job at a time when several threads share a pool

  // The job being run: written by the submitter before the generation bump that publishes it.
  Task task_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 1;
  alignas(64) std::atomic<int64_t> next_{0};
  alignas(64) std::atomic<int> pending_{0};    // workers still inside the current job
  alignas(64) std::atomic<uint32_t> generation_{0};  // futex word
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
};

// The CPUs this process may run on, in ascending order.
std::vector<int> allowed_cpus();

}  // namespace sinkserve::cpu
