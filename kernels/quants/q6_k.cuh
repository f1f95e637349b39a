// CUDA decoding of Q6_K (layout and CPU variants: q6_k.cpp).
#pragma once
#include "kernels/quants/device.cuh"

namespace sinkserve::cuda {

template <>
struct DeviceType<DType::Q6_K> {
  static constexpr int kValues = 256, kBytes = 210;
  __device__ static void decode8(const uint8_t* b, int v, float* o) {
    const int h = v / 128, k = v % 128 / 32, l = v % 32;
    const float dl = ld_half(b + 208) * float(int8_t(b[192 + 8 * h + 2 * k + l / 16]));
    const uint8_t *ql = b + 64 * h + 32 * (k & 1) + l, *qh = b + 128 + 32 * h + l;
#pragma unroll
    for (int i = 0; i < 8; ++i)
      o[i] = dl * float((((ql[i] >> (k < 2 ? 0 : 4)) & 15) | ((qh[i] >> (2 * k)) & 3) << 4) - 32);
  }
};

}  // namespace sinkserve::cuda
