// Float buffers to and from a backend's memory, for tests of any backend.
#pragma once
#include <cstddef>
#include <vector>

#include "kernels/backend.h"

namespace sinkserve::test {

// A new backend buffer holding v; the caller releases it.
inline float* to_backend(Backend& be, const std::vector<float>& v) {
  auto* p = static_cast<float*>(be.alloc(v.size() * sizeof(float)));
  be.to_device(p, v.data(), v.size() * sizeof(float));
  return p;
}

inline std::vector<float> from_backend(Backend& be, const float* p, size_t n) {
  std::vector<float> v(n);
  be.to_host(v.data(), p, n * sizeof(float));
  return v;
}

}  // namespace sinkserve::test
