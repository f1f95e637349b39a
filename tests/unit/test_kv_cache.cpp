// The cache's bookkeeping against the definition of what attention sees, written out plainly.
#include <gtest/gtest.h>

#include <set>

#include "cache/kv_cache.h"
#include "runtime/process_memory.h"
#include "tests/cache_config.h"

using namespace sinkserve;
using sinkserve::test::cache_config;

namespace {

// Stream positions a query at position p sees: the sinks and the last `window` tokens.
std::set<int64_t> visible(int64_t p, int sink, int window) {
  std::set<int64_t> s;
  for (int64_t j = 0; j <= p; ++j)
    if (j < sink || j > p - window) s.insert(j);
  return s;
}

// Replays a stream fed in steps of `step` tokens, tracking which stream position each cache row
// holds, and checks every query's span against the definition.
void check_stream(Policy policy, int sink, int window, int chunk, int step, int64_t total) {
  auto be = make_cpu_backend(1);
  KVCache cache(*be, 1, 8, cache_config(policy, sink, window, chunk), 2);
  const int slot = cache.acquire();
  ASSERT_EQ(slot, 0);
  const int other = cache.acquire();  // a second slot must never be touched
  ASSERT_EQ(other, 1);
  const int S = cache.config().sink;
  std::vector<int64_t> row_holds(size_t(cache.slot_rows() * 2), -1);
  std::vector<TokenPlan> plan(static_cast<size_t>(step));
  for (int64_t p0 = 0; p0 < total; p0 += step) {
    const int n = int(std::min<int64_t>(step, total - p0));
    cache.plan(slot, n, plan.data());
    for (int i = 0; i < n; ++i) {
      const int64_t p = p0 + i;
      const TokenPlan& t = plan[size_t(i)];
      ASSERT_GE(t.store_row, 0);
      ASSERT_LT(t.store_row, cache.slot_rows());
      row_holds[size_t(t.store_row)] = p;
      EXPECT_EQ(t.pos_win, p);
      EXPECT_EQ(t.pos_sink, std::min<int64_t>(p, S + window - 1));
    }
    // Every token's keys are written before any token of the step attends (as in the model).
    for (int i = 0; i < n; ++i) {
      const int64_t p = p0 + i;
      const AttnSpan& a = plan[size_t(i)].span;
      std::set<int64_t> seen;
      for (int j = 0; j < a.n_sink; ++j) seen.insert(row_holds[size_t(a.row0 + j)]);
      for (int j = 0; j < a.n_win; ++j)
        seen.insert(row_holds[size_t(a.row0 + a.sink_rows + (a.win_begin + j) % a.ring_size)]);
      EXPECT_EQ(seen, visible(p, S, window)) << "position " << p;
      EXPECT_EQ(int64_t(seen.size()), int64_t(a.n_sink) + a.n_win) << "a row counted twice at " << p;
    }
    cache.commit(slot, n);
  }
  EXPECT_EQ(cache.stream_tokens(slot), total);
  EXPECT_EQ(cache.stream_tokens(other), 0);
}

TEST(KVCache, SinkSpansMatchDefinitionTokenByToken) { check_stream(Policy::Sink, 4, 10, 1, 1, 200); }
TEST(KVCache, SinkSpansMatchDefinitionInChunks) {
  for (int step : {1, 3, 7, 16}) check_stream(Policy::Sink, 4, 10, 16, step, 300);
}
TEST(KVCache, WindowPolicyHasNoSinks) { check_stream(Policy::Window, 4, 10, 8, 5, 100); }
TEST(KVCache, DenseSeesEverything) { check_stream(Policy::Dense, 0, 100, 8, 9, 100); }

TEST(KVCache, DenseRefusesToGrowPastCapacity) {
  auto be = make_cpu_backend(1);
  KVCache cache(*be, 1, 8, cache_config(Policy::Dense, 0, 10, 4), 1);
  const int s = cache.acquire();
  std::vector<TokenPlan> plan(11);
  cache.plan(s, 10, plan.data());
  cache.commit(s, 10);
  EXPECT_THROW(cache.plan(s, 1, plan.data()), std::length_error);
}

TEST(KVCache, StepLargerThanChunkIsRefused) {
  auto be = make_cpu_backend(1);
  KVCache cache(*be, 1, 8, cache_config(Policy::Sink, 4, 10, 4), 1);
  std::vector<TokenPlan> plan(5);
  EXPECT_THROW(cache.plan(cache.acquire(), 5, plan.data()), std::invalid_argument);
}

TEST(KVCache, MemoryIsFixedAndLiveBytesSaturate) {
  auto be = make_cpu_backend(1);
  KVCache cache(*be, 3, 16, cache_config(Policy::Sink, 4, 20, 8), 2);
  const int64_t pool = cache.pool_bytes();
  EXPECT_EQ(pool, 2 * (4 + 20 + 8) * 16 * 4 * 2 * 3);
  const int s = cache.acquire();
  std::vector<TokenPlan> plan(8);
  for (int i = 0; i < 100; ++i) {
    cache.plan(s, 8, plan.data());
    cache.commit(s, 8);
  }
  EXPECT_EQ(cache.cached_tokens(s), 24);
  EXPECT_EQ(cache.live_bytes(s), 24 * 16 * 4 * 2 * 3);
  EXPECT_EQ(cache.pool_bytes(), pool);
}

TEST(KVCache, SlotsAreAcquiredReleasedAndHashed) {
  auto be = make_cpu_backend(1);
  const CacheConfig cfg = cache_config(Policy::Sink, 4, 10, 4);
  KVCache a(*be, 1, 8, cfg, 2), b(*be, 1, 8, cfg, 2);
  EXPECT_EQ(a.acquire(), 0);
  EXPECT_EQ(a.acquire(), 1);
  EXPECT_EQ(a.acquire(), -1);
  EXPECT_EQ(a.free_slots(), 0);
  a.release(0);
  EXPECT_EQ(a.free_slots(), 1);
  EXPECT_EQ(a.acquire(), 0);
  b.acquire();
  b.acquire();
  EXPECT_EQ(a.metadata_hash(), b.metadata_hash());
  a.commit(1, 3);
  EXPECT_NE(a.metadata_hash(), b.metadata_hash());
  b.commit(1, 3);
  EXPECT_EQ(a.metadata_hash(), b.metadata_hash());
}

TEST(KVCache, PolicyNamesParse) {
  EXPECT_EQ(parse_policy("sink"), Policy::Sink);
  EXPECT_EQ(parse_policy("recompute"), Policy::Recompute);
  EXPECT_THROW(parse_policy("lru"), std::invalid_argument);
}

}  // namespace

// `serve --sessions 1000000000` once drove the machine into the OOM killer: the pool is now
// checked against MemAvailable before anything, the slot table included, is allocated.
TEST(KVCache, RefusesAPoolLargerThanAvailableMemoryBeforeTouchingIt) {
  auto be = make_cpu_backend(1);
  const int64_t before = resident_bytes();
  try {
    KVCache cache(*be, 5, 32, cache_config(Policy::Sink, 4, 508, 64), 1'000'000'000);
    FAIL() << "a pool of " << cache.pool_bytes() << " bytes was allocated";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("1000000000 slots x 576 rows x 5 layers need"), std::string::npos) << m;
    EXPECT_NE(m.find("is available (host MemAvailable"), std::string::npos) << m;
    EXPECT_NE(m.find("lower --sessions"), std::string::npos) << m;
  }
  EXPECT_LT(resident_bytes() - before, int64_t(64) << 20);
  // A pool that fits is allocated as before, also when another process on the host takes one.
  KVCache fits(*be, 5, 32, cache_config(Policy::Sink, 4, 508, 64), 1000, 2);
  EXPECT_EQ(fits.n_slots(), 1000);
}
