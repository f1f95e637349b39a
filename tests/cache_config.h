// A CacheConfig in one expression, for tests.
#pragma once
#include "cache/kv_cache.h"

namespace sinkserve::test {

inline CacheConfig cache_config(Policy p, int sink, int window, int chunk = 64) {
  CacheConfig c;
  c.policy = p;
  c.sink = sink;
  c.window = window;
  c.chunk = chunk;
  return c;
}

}  // namespace sinkserve::test
