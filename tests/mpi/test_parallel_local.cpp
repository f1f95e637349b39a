// The parts of parallel/ and launcher/rank_guard that need no second process: the single-rank
// communicator, failure injection, the lockstep verdict (on a scripted communicator that plays
// one rank of a larger group) and run_ranked's reporting.
#include <gtest/gtest.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "launcher/rank_guard.h"
#include "parallel/communicator_factory.h"
#include "launcher/fault_injection.h"
#include "parallel/lockstep.h"

using namespace sinkserve;

namespace {

// Rank `rank` of a group whose members hold `hashes`: all_reduce_sum_u64 returns what the real
// one-hot sum would. abort() throws, so a test can observe it.
class ScriptedComm final : public Communicator {
 public:
  struct Aborted {
    std::string message;
  };
  ScriptedComm(int rank, std::vector<uint64_t> hashes) : rank_(rank), hashes_(std::move(hashes)) {}
  int rank() const override { return rank_; }
  int size() const override { return int(hashes_.size()); }
  std::string name() const override { return "scripted"; }
  void all_reduce_sum(float*, size_t) override {}
  void all_gather(const float*, float*, size_t) override {}
  void broadcast(void*, size_t, int) override {}
  void all_reduce_sum_u64(uint64_t* buf, size_t n) override {
    ASSERT_EQ(n, hashes_.size());
    ASSERT_EQ(buf[rank_], hashes_[rank_]);
    for (size_t r = 0; r < n; ++r) {
      if (int(r) != rank_) {
        ASSERT_EQ(buf[r], 0u) << "slot " << r << " of another rank not zero";
      }
      buf[r] = hashes_[r];
    }
  }
  void barrier() override {}
  [[noreturn]] void abort(const std::string& message) override { throw Aborted{message}; }

 private:
  int rank_;
  std::vector<uint64_t> hashes_;
};

std::string lockstep_error(int rank, std::vector<uint64_t> hashes) {
  ScriptedComm c(rank, hashes);
  try {
    verify_lockstep(c, hashes[rank], "cache");
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

class FailEnv : public ::testing::Test {
 protected:
  void TearDown() override {
    unsetenv("SINKSERVE_FAIL_RANK");
    unsetenv("SINKSERVE_FAIL_AT");
  }
  static void set(const char* rank, const char* at) {
    if (rank) setenv("SINKSERVE_FAIL_RANK", rank, 1);
    if (at) setenv("SINKSERVE_FAIL_AT", at, 1);
  }
};

}  // namespace

TEST(SingleCommunicator, CollectivesAreIdentity) {
  auto c = make_communicator("single");
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->name(), "single");
  std::vector<float> buf = {1.5f, -2.0f, 3.25f};
  c->all_reduce_sum(buf.data(), buf.size());
  EXPECT_EQ(buf, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  std::vector<float> out(3, 0.0f);
  c->all_gather(buf.data(), out.data(), 3);
  EXPECT_EQ(out, buf);
  uint64_t u[2] = {7, uint64_t{1} << 63};
  c->all_reduce_sum_u64(u, 2);
  EXPECT_EQ(u[0], 7u);
  EXPECT_EQ(u[1], uint64_t{1} << 63);
  int x = 42;
  c->broadcast(&x, sizeof x, 0);
  EXPECT_EQ(x, 42);
  EXPECT_THROW(c->broadcast(&x, sizeof x, 1), std::invalid_argument);
}

TEST(CommunicatorFactory, AutoOutsideMpirunIsSingleAndUnknownKindsAreNamed) {
  EXPECT_EQ(make_communicator("auto")->name(), "single");
  EXPECT_EQ(node_local_rank(), 0);
  try {
    make_communicator("gloo");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'gloo'"), std::string::npos) << e.what();
  }
#ifndef SINKSERVE_HAVE_CUDA
  EXPECT_THROW(make_communicator("nccl"), std::runtime_error);
#endif
}

TEST_F(FailEnv, InertWithoutVariables) {
  EXPECT_NO_THROW(maybe_inject_failure(0, "load"));
  EXPECT_NO_THROW(maybe_inject_failure(1, "step", 3));
}

TEST_F(FailEnv, StepFailsOnlyOnItsRankAndStep) {
  set("1", "step:3");
  EXPECT_NO_THROW(maybe_inject_failure(1, "step", 2));
  EXPECT_NO_THROW(maybe_inject_failure(0, "step", 3));
  EXPECT_NO_THROW(maybe_inject_failure(1, "load"));
  try {
    maybe_inject_failure(1, "step", 3);
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "injected failure at step:3 on rank 1");
  }
}

TEST_F(FailEnv, PointWithoutStepFailsEveryTime) {
  set("0", "load");
  EXPECT_THROW(maybe_inject_failure(0, "load"), std::runtime_error);
  EXPECT_NO_THROW(maybe_inject_failure(0, "step", 0));
}

TEST_F(FailEnv, MalformedSpecsAreRejectedByName) {
  auto message = [](int rank) {
    try {
      maybe_inject_failure(rank, "step", 0);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  set("1", "step:x");
  EXPECT_NE(message(0).find("SINKSERVE_FAIL_AT='step:x'"), std::string::npos) << message(0);
  set("one", "load");
  EXPECT_NE(message(0).find("SINKSERVE_FAIL_RANK='one'"), std::string::npos) << message(0);
  unsetenv("SINKSERVE_FAIL_AT");
  set("1", nullptr);
  EXPECT_NE(message(1).find("SINKSERVE_FAIL_RANK is set without SINKSERVE_FAIL_AT"),
            std::string::npos)
      << message(1);
}

TEST(Lockstep, EqualHashesPass) {
  for (int r = 0; r < 4; ++r) EXPECT_EQ(lockstep_error(r, {9, 9, 9, 9}), "");
}

TEST(Lockstep, NamesTheMinorityOnEveryRank) {
  const std::string want =
      "ranks out of lockstep in cache: diverged rank 2 (rank 2 has 0x0000000000000005, "
      "ranks 0,1,3 have 0x0000000000000009)";
  for (int r = 0; r < 4; ++r) EXPECT_EQ(lockstep_error(r, {9, 9, 5, 9}), want) << "rank " << r;
}

TEST(Lockstep, MajorityWinsOverRankZero) {
  EXPECT_EQ(lockstep_error(1, {1, 7, 7}),
            "ranks out of lockstep in cache: diverged rank 0 (rank 0 has 0x0000000000000001, "
            "ranks 1,2 have 0x0000000000000007)");
}

TEST(Lockstep, TieKeepsRankZerosGroupAndListsEveryOtherGroup) {
  EXPECT_EQ(lockstep_error(0, {4, 4, 3, 8}),
            "ranks out of lockstep in cache: diverged ranks 2,3 (rank 2 has 0x0000000000000003, "
            "rank 3 has 0x0000000000000008, ranks 0,1 have 0x0000000000000004)");
  EXPECT_EQ(lockstep_error(0, {1, 2}),
            "ranks out of lockstep in cache: diverged rank 1 (rank 1 has 0x0000000000000002, "
            "rank 0 has 0x0000000000000001)");
}

TEST(RankGuard, SingleRankPropagatesToMain) {
  auto c = make_single_communicator();
  EXPECT_EQ(run_ranked("x", *c, [] { return 4; }), 4);
  EXPECT_THROW(run_ranked("x", *c, []() -> int { throw std::runtime_error("e"); }),
               std::runtime_error);
}

TEST(RankGuard, MultiRankFailureReportsAndAborts) {
  ScriptedComm c(1, {0, 0, 0});
  EXPECT_EQ(run_ranked("serve", c, [] { return 0; }), 0);
  testing::internal::CaptureStderr();
  try {
    run_ranked("serve", c, []() -> int { throw std::runtime_error("disk on fire"); });
    FAIL() << "did not abort";
  } catch (const ScriptedComm::Aborted& a) {
    EXPECT_EQ(a.message, "ending all 3 ranks after the error above");
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "sinkserve serve: rank 1: error: disk on fire\n");
  testing::internal::CaptureStderr();
  EXPECT_THROW(run_ranked("serve", c, [] { return 2; }), ScriptedComm::Aborted);
  EXPECT_EQ(testing::internal::GetCapturedStderr(),
            "sinkserve serve: rank 1: error: exited with status 2\n");
}
