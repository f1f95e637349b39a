// CUDA decoding of Q4_K and Q5_K (layouts and CPU variants: q4_k.cpp). Eight consecutive values
// share one 32-value group: one scale and minimum from the packed 6-bit pairs.
#pragma once
#include "kernels/quants/device.cuh"

namespace sinkserve::cuda {

__device__ __forceinline__ void k4_scale_min(const uint8_t* q, int g, int& s, int& m) {
  if (g < 4) {
    s = q[g] & 63;
    m = q[g + 4] & 63;
  } else {
    s = (q[g + 4] & 15) | (q[g - 4] >> 6) << 4;
    m = (q[g + 4] >> 4) | (q[g] >> 6) << 4;
  }
}

template <bool kFifthBit>
__device__ __forceinline__ void decode8_k4(const uint8_t* b, int v, float* o) {
  const int c = v / 64, upper = v % 64 / 32, l = v % 32, g = 2 * c + upper;
  int s, m;
  k4_scale_min(b + 4, g, s, m);
  const float dl = ld_half(b) * float(s), ml = ld_half(b + 2) * float(m);
  const uint8_t* qs = b + (kFifthBit ? 48 : 16) + 32 * c + l;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    int q = (qs[i] >> (4 * upper)) & 15;
    if (kFifthBit) q |= ((b[16 + l + i] >> g) & 1) << 4;
    o[i] = dl * float(q) - ml;
  }
}

template <>
struct DeviceType<DType::Q4_K> {
  static constexpr int kValues = 256, kBytes = 144;
  __device__ static void decode8(const uint8_t* b, int v, float* o) { decode8_k4<false>(b, v, o); }
};

template <>
struct DeviceType<DType::Q5_K> {
  static constexpr int kValues = 256, kBytes = 176;
  __device__ static void decode8(const uint8_t* b, int v, float* o) { decode8_k4<true>(b, v, o); }
};

}  // namespace sinkserve::cuda
