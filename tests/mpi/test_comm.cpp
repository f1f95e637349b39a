// Collectives of a real multi-rank job, checked against values every rank computes independently
// from the rank ids. Run under mpirun with any number of ranks (or alone, as a single rank):
//   test_comm [auto|mpi|single]
// A failed check throws; run_ranked then ends the job, so a broken collective fails the test
// instead of hanging it.
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "launcher/rank_guard.h"
#include "parallel/communicator_factory.h"
#include "parallel/lockstep.h"

using namespace sinkserve;

namespace {

#define CHECK(cond, ...)                                                                  \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      char detail_[512];                                                                  \
      std::snprintf(detail_, sizeof detail_, __VA_ARGS__);                                \
      throw std::runtime_error(std::string(__FILE__ ":") + std::to_string(__LINE__) +     \
                               ": check failed: " #cond ": " + detail_);                 \
    }                                                                                     \
  } while (0)

int expected_size() {
  const char* s = std::getenv("OMPI_COMM_WORLD_SIZE");
  return s ? std::atoi(s) : 1;
}

// Values are small integers, so every float sum below is exact and can be compared with ==.
void check_all_reduce(Communicator& c, size_t n) {
  const int S = c.size(), r = c.rank();
  std::vector<float> buf(n);
  for (size_t i = 0; i < n; ++i) buf[i] = float((r + 1) * int(i % 1021)) - float(r);
  c.all_reduce_sum(buf.data(), n);
  const float rank_sum = float(S * (S + 1) / 2), minus = float(S * (S - 1) / 2);
  for (size_t i = 0; i < n; ++i) {
    float want = rank_sum * float(i % 1021) - minus;
    CHECK(buf[i] == want, "all_reduce_sum n=%zu: [%zu] = %g, want %g", n, i, buf[i], want);
  }
}

void check_all_gather(Communicator& c, size_t n, bool in_place) {
  const int S = c.size(), r = c.rank();
  std::vector<float> recv(n * S, -1.0f), own(n);
  for (size_t i = 0; i < n; ++i) own[i] = float(r * 100000 + int(i % 50000));
  const float* send = own.data();
  if (in_place) {
    std::memcpy(recv.data() + size_t(r) * n, own.data(), n * sizeof(float));
    send = recv.data() + size_t(r) * n;
  }
  c.all_gather(send, recv.data(), n);
  for (int src = 0; src < S; ++src)
    for (size_t i = 0; i < n; ++i) {
      float want = float(src * 100000 + int(i % 50000));
      CHECK(recv[src * n + i] == want, "all_gather n=%zu in_place=%d: rank %d [%zu] = %g, want %g",
            n, in_place, src, i, recv[src * n + i], want);
    }
}

void check_broadcast(Communicator& c, size_t bytes) {
  for (int root = 0; root < c.size(); ++root) {
    std::vector<unsigned char> buf(bytes);
    for (size_t i = 0; i < bytes; ++i)
      buf[i] = c.rank() == root ? static_cast<unsigned char>((i * 131 + root * 7) & 0xff) : 0xAA;
    c.broadcast(buf.data(), bytes, root);
    for (size_t i = 0; i < bytes; ++i) {
      unsigned want = (i * 131 + root * 7) & 0xff;
      CHECK(buf[i] == want, "broadcast %zu bytes from root %d: [%zu] = %u, want %u", bytes, root, i,
            unsigned(buf[i]), want);
    }
  }
}

void check_u64(Communicator& c) {
  const uint64_t S = c.size(), r = c.rank();
  // Above 2^53: a sum routed through doubles would lose the low bits.
  std::vector<uint64_t> v = {(uint64_t{1} << 60) + r, r * r, 0xFFFFFFFFull * (r + 1)};
  c.all_reduce_sum_u64(v.data(), v.size());
  uint64_t sum_r = S * (S - 1) / 2, sum_r2 = (S - 1) * S * (2 * S - 1) / 6;
  uint64_t want[] = {S * (uint64_t{1} << 60) + sum_r, sum_r2, 0xFFFFFFFFull * (S * (S + 1) / 2)};
  for (size_t i = 0; i < v.size(); ++i)
    CHECK(v[i] == want[i], "all_reduce_sum_u64 [%zu] = %" PRIu64 ", want %" PRIu64, i, v[i],
          want[i]);
}

// Rank r arrives r * 50 ms late; a real barrier lets no rank leave before the last one entered.
// The ranks share one machine, whose monotonic clock every process reads alike, so their entry
// and exit times compare directly (no assumption about when each left the previous barrier).
void check_barrier(Communicator& c) {
  auto now_ns = [] {
    return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::steady_clock::now().time_since_epoch())
                        .count());
  };
  c.barrier();
  std::this_thread::sleep_for(std::chrono::milliseconds(50 * c.rank()));
  std::vector<uint64_t> entered(size_t(c.size()), 0);
  entered[size_t(c.rank())] = now_ns();
  c.barrier();
  const uint64_t left = now_ns();
  c.all_reduce_sum_u64(entered.data(), entered.size());
  for (int r = 0; r < c.size(); ++r)
    CHECK(left >= entered[size_t(r)], "rank %d left the barrier %.1f ms before rank %d entered it",
          c.rank(), double(entered[size_t(r)] - left) / 1e6, r);
}

void check_errors(Communicator& c) {
  bool threw = false;
  try {
    int v = 0;
    c.broadcast(&v, sizeof v, c.size());
  } catch (const std::invalid_argument& e) {
    threw = std::strstr(e.what(), "root") != nullptr;
  }
  CHECK(threw, "broadcast from a root outside the group did not throw");
  threw = false;
  try {
    make_communicator("infiniband");
  } catch (const std::invalid_argument& e) {
    threw = std::strstr(e.what(), "'infiniband'") != nullptr;
  }
  CHECK(threw, "an unknown communicator kind did not throw a message naming it");
  if (c.size() > 1) {
    threw = false;
    try {
      make_communicator("single");
    } catch (const std::runtime_error& e) {
      threw = std::strstr(e.what(), "mpirun") != nullptr;
    }
    CHECK(threw, "'single' under a multi-rank mpirun did not throw");
  }
}

void time_all_reduce(Communicator& c, size_t n) {
  if (c.size() == 1) return;
  std::vector<float> buf(n, 1.0f);
  c.all_reduce_sum(buf.data(), n);
  c.barrier();
  const int iters = 50;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) c.all_reduce_sum(buf.data(), n);
  double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      iters;
  if (c.rank() == 0)
    std::printf("test_comm: all_reduce_sum of %zu floats: %.1f us\n", n, us);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string kind = argc > 1 ? argv[1] : "auto";
  std::unique_ptr<Communicator> comm;
  try {
    comm = make_communicator(kind);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_comm: %s\n", e.what());
    return 1;
  }
  return run_ranked("test_comm", *comm, [&]() -> int {
    Communicator& c = *comm;
    CHECK(c.size() == expected_size(), "size %d, launcher started %d", c.size(), expected_size());
    CHECK(c.rank() >= 0 && c.rank() < c.size(), "rank %d of %d", c.rank(), c.size());
    const char* want_name = kind == "auto" ? (c.size() > 1 ? "mpi" : "single") : kind.c_str();
    CHECK(c.name() == want_name, "communicator '%s', want '%s'", c.name().c_str(), want_name);

    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{4096}, size_t{1} << 20})
      check_all_reduce(c, n);
    for (size_t n : {size_t{0}, size_t{1}, size_t{33}, size_t{1} << 18}) {
      check_all_gather(c, n, false);
      check_all_gather(c, n, true);
    }
    for (size_t bytes : {size_t{0}, size_t{3}, size_t{4096}, size_t{5} << 20}) check_broadcast(c, bytes);
    check_u64(c);
    check_barrier(c);
    verify_lockstep(c, 0x5eed0000000000ffull, "test hash");  // equal everywhere: must pass
    check_errors(c);
    time_all_reduce(c, 4096);
    time_all_reduce(c, size_t{1} << 20);
    if (c.rank() == 0) std::printf("test_comm: %s, %d rank(s): ok\n", c.name().c_str(), c.size());
    return 0;
  });
}
