#include "kernels/cpu/membw.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <string>

namespace sinkserve::cpu {
namespace {

uint64_t read_words_portable(const void* p, size_t bytes) {
  const auto* w = static_cast<const uint64_t*>(p);
  uint64_t a[8] = {};
  for (size_t i = 0; i < bytes / 8; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += w[i + j];
  uint64_t s = 0;
  for (uint64_t x : a) s += x;
  return s;
}

}  // namespace

double measure_read_bandwidth(ThreadPool& pool, size_t bytes) {
  // Many more pieces than threads: a thread that loses its core briefly does not hold up the
  // whole pass.
  constexpr size_t kPieces = 256;
  const size_t piece = std::max<size_t>(1 << 16, bytes / kPieces / 512 * 512);
  const size_t n_pieces = std::max<size_t>(1, bytes / piece);
  const size_t total = n_pieces * piece;
  void* mem = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw std::runtime_error("read bandwidth probe: cannot map " + std::to_string(total) + " bytes");
  madvise(mem, total, MADV_HUGEPAGE);  // fewer TLB misses; the probe measures DRAM, not page walks
  char* buf = static_cast<char*>(mem);
  pool.parallel_for(int64_t(n_pieces), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memset(buf + size_t(i) * piece, int(i), piece);
  });

  const bool wide = __builtin_cpu_supports("avx512f");
  std::atomic<uint64_t> sink{0};
  double best = 0.0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(int64_t(n_pieces), [&](int64_t b, int64_t e) {
      uint64_t s = 0;
      for (int64_t i = b; i < e; ++i) {
        const char* p = buf + size_t(i) * piece;
        s += wide ? read_words_avx512(p, piece) : read_words_portable(p, piece);
      }
      sink.fetch_add(s, std::memory_order_relaxed);
    });
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(total) / sec);
  }
  munmap(mem, total);
  return best;
}

}  // namespace sinkserve::cpu
