// A job in which one rank fails while the others wait for it in a collective (or hang outside MPI).
// Each mode must end the whole job with a non-zero exit and the failing rank's message; the test
// harness (expect_job_failure.sh) enforces the deadline, so a hang fails the test.
//   rank_failure throw     rank 1 throws; the others block in a barrier
//   rank_failure status    rank 1 returns exit status 3; the others block in a barrier
//   rank_failure inject    every rank runs "load" then 100 all-reduce "steps", calling
//                          maybe_inject_failure (driven by SINKSERVE_FAIL_RANK / SINKSERVE_FAIL_AT)
//   rank_failure lockstep  rank 1 reports a different cache hash to verify_lockstep
//   rank_failure hang      rank 1 sleeps forever outside MPI; rank 0 throws after 200 ms
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>

#include "launcher/rank_guard.h"
#include "parallel/communicator_factory.h"
#include "launcher/fault_injection.h"
#include "parallel/lockstep.h"

using namespace sinkserve;

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  auto comm = make_communicator("auto");
  Communicator& c = *comm;
  return run_ranked("rank_failure", c, [&]() -> int {
    if (c.size() < 2) throw std::runtime_error("rank_failure needs at least 2 ranks");
    if (mode == "throw") {
      if (c.rank() == 1) throw std::runtime_error("boom on rank 1");
      c.barrier();
    } else if (mode == "status") {
      if (c.rank() == 1) return 3;
      c.barrier();
    } else if (mode == "inject") {
      maybe_inject_failure(c.rank(), "load");
      for (int64_t step = 0; step < 100; ++step) {
        maybe_inject_failure(c.rank(), "step", step);
        float x = 1.0f;
        c.all_reduce_sum(&x, 1);
      }
    } else if (mode == "lockstep") {
      verify_lockstep(c, c.rank() == 1 ? 0xbadull : 0x600dull, "KV cache metadata");
    } else if (mode == "hang") {
      if (c.rank() == 1) {
        for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      if (c.rank() == 0) throw std::runtime_error("rank 0 gives up on its hung peer");
      c.barrier();
    } else {
      throw std::invalid_argument("unknown mode '" + mode + "'");
    }
    // Reaching this point in a failure mode means the failure did not end the job.
    if (c.rank() == 0) std::printf("rank_failure %s: completed without failing\n", mode.c_str());
    return 0;
  });
}
