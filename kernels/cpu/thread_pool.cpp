#include "kernels/cpu/thread_pool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>
#include <system_error>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace sinkserve::cpu {
namespace {

thread_local bool tl_inside_job = false;

// How long an idle worker polls before sleeping. Decode issues jobs back to back, microseconds
// apart; a futex wake costs tens of microseconds, a spin iteration tens of nanoseconds.
constexpr int kSpinIterations = 1 << 16;

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr,
          nullptr, 0);
}

void pin_thread(pthread_t thread, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  // Failure (e.g. a restrictive container) costs performance, not correctness.
  pthread_setaffinity_np(thread, sizeof(set), &set);
}

}  // namespace

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.empty()) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    for (int c = 0; c < std::max(1L, n); ++c) cpus.push_back(c);
  }
  return cpus;
}

ThreadPool::ThreadPool(int threads) {
  if (threads < 0) throw std::invalid_argument("thread pool: negative thread count " + std::to_string(threads));
  const std::vector<int> cpus = allowed_cpus();
  n_threads_ = threads == 0 ? int(cpus.size()) : threads;
  oversubscribed_ = n_threads_ > int(cpus.size());
  // Worker i runs on allowed CPU i, leaving the first to the calling thread. The caller itself is
  // not pinned: threads it creates later (servers, MPI progress) would inherit a one-CPU mask.
  const bool pin = n_threads_ > 1 && !oversubscribed_;
  workers_.reserve(n_threads_ - 1);
  try {
    for (int i = 1; i < n_threads_; ++i)
      workers_.emplace_back([this, cpu = pin ? cpus[i] : -1] { worker_main(cpu); });
  } catch (const std::system_error& e) {
    // The system refused a thread: stop the ones already running before reporting it, since
    // destroying a joinable std::thread would terminate the process.
    stop_.store(true);
    generation_.fetch_add(1);
    futex_wake_all(&generation_);
    for (auto& t : workers_) t.join();
    throw std::runtime_error("thread pool: could not start " + std::to_string(n_threads_) +
                             " threads (" + e.what() + ")");
  }
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  futex_wake_all(&generation_);
  for (auto& t : workers_) t.join();
}

void ThreadPool::work_on_current_job() {
  const int64_t n = n_, chunk = chunk_;
  for (;;) {
    const int64_t b = next_.fetch_add(chunk, std::memory_order_relaxed);
    if (b >= n || failed_.load(std::memory_order_relaxed)) break;
    try {
      task_(ctx_, b, std::min(n, b + chunk));
    } catch (...) {
      if (!failed_.exchange(true)) error_ = std::current_exception();
      break;
    }
  }
}

void ThreadPool::worker_main(int cpu) {
  if (cpu >= 0) pin_thread(pthread_self(), cpu);
  tl_inside_job = true;  // a worker never submits to its own pool
  uint32_t seen = 0;
  for (;;) {
    uint32_t g = generation_.load(std::memory_order_acquire);
    const int spins = oversubscribed_ ? 0 : kSpinIterations;
    for (int spin = 0; g == seen && spin < spins; ++spin) {
      cpu_relax();
      g = generation_.load(std::memory_order_acquire);
    }
    while (g == seen) {
      // Dekker pairing with run(): either the submitter sees this sleeper and wakes it, or this
      // thread sees the new generation before sleeping (both sides are seq_cst).
      sleepers_.fetch_add(1);
      if (generation_.load() == seen) futex_wait(&generation_, seen);
      sleepers_.fetch_sub(1);
      g = generation_.load(std::memory_order_acquire);
    }
    seen = g;
    if (stop_.load()) return;
    work_on_current_job();
    pending_.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::run(int64_t n, Task task, void* ctx) {
  if (n <= 0) return;
  if (n_threads_ == 1 || n == 1 || tl_inside_job) {
    task(ctx, 0, n);
    return;
  }
  std::lock_guard lock(submit_);
  task_ = task;
  ctx_ = ctx;
  n_ = n;
  // A few chunks per thread balance a core that gets preempted without making the shared
  // counter hot.
  chunk_ = std::max<int64_t>(1, (n + 4 * n_threads_ - 1) / (4 * n_threads_));
  next_.store(0, std::memory_order_relaxed);
  failed_.store(false, std::memory_order_relaxed);
  error_ = nullptr;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1);  // seq_cst: publishes the job above
  if (sleepers_.load() > 0) futex_wake_all(&generation_);

  tl_inside_job = true;
  work_on_current_job();
  tl_inside_job = false;
  while (pending_.load(std::memory_order_acquire) != 0) {
    if (oversubscribed_) sched_yield();
    else cpu_relax();
  }
  if (failed_.load()) std::rethrow_exception(error_);
}

}  // namespace sinkserve::cpu
