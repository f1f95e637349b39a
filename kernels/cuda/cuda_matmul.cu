// Matrix-vector products for decode-sized batches. At a handful of tokens a matmul reads every
// weight once and does two flops per weight byte or less, so it is bound by memory bandwidth: the
// kernel streams each row with 16-byte loads, several in flight per lane, and reuses each loaded
// weight for up to 8 tokens. Larger batches go to cuBLAS (cuda_backend.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"

namespace sinkserve::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxGemvTokens = 8;
constexpr int kUnroll = 4;  // 16-byte weight loads in flight per lane

// One 16-byte load of weights decodes into kVals floats.
template <DType T> struct WeightTraits;
template <> struct WeightTraits<DType::F32> {
  static constexpr int kVals = 4;
  static __device__ float scalar(const void* w, int64_t i) { return static_cast<const float*>(w)[i]; }
  static __device__ void decode(uint4 u, float s, float* o) {
    (void)s;
    o[0] = __uint_as_float(u.x); o[1] = __uint_as_float(u.y);
    o[2] = __uint_as_float(u.z); o[3] = __uint_as_float(u.w);
  }
};
template <> struct WeightTraits<DType::F16> {
  static constexpr int kVals = 8;
  static __device__ float scalar(const void* w, int64_t i) {
    return __half2float(static_cast<const __half*>(w)[i]);
  }
  static __device__ void decode(uint4 u, float s, float* o) {
    (void)s;
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      __half2 h;
      memcpy(&h, &words[k], 4);
      const float2 f = __half22float2(h);
      o[2 * k] = f.x;
      o[2 * k + 1] = f.y;
    }
  }
};
template <> struct WeightTraits<DType::BF16> {
  static constexpr int kVals = 8;
  static __device__ float scalar(const void* w, int64_t i) {
    return __uint_as_float(uint32_t(static_cast<const uint16_t*>(w)[i]) << 16);
  }
  static __device__ void decode(uint4 u, float s, float* o) {
    (void)s;
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      o[2 * k] = __uint_as_float(words[k] << 16);
      o[2 * k + 1] = __uint_as_float(words[k] & 0xffff0000u);
    }
  }
};
template <> struct WeightTraits<DType::Q8_0> {
  static constexpr int kVals = 16;
  static __device__ void decode(uint4 u, float s, float* o) {
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
#pragma unroll
      for (int b = 0; b < 4; ++b) o[4 * k + b] = s * float(int8_t(words[k] >> (8 * b)));
    }
  }
};

template <DType T, int NT>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_kernel(const void* __restrict__ w, const float* __restrict__ x, int64_t rows,
                int64_t cols, bool vec, const float* __restrict__ bias, float* __restrict__ y) {
  using Tr = WeightTraits<T>;
  constexpr int V = Tr::kVals;
  pdl_trigger();
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;

  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.f;

  if (vec) {
    // Q8_0 rows live in the quant plane; the scales plane follows at q8_scales_offset.
    const uint8_t* wrow;
    const __half* scales = nullptr;
    if constexpr (T == DType::Q8_0) {
      wrow = static_cast<const uint8_t*>(w) + r * cols;
      scales = reinterpret_cast<const __half*>(static_cast<const uint8_t*>(w) +
                                               q8_scales_offset(rows, cols)) + r * (cols / 32);
    } else {
      wrow = static_cast<const uint8_t*>(w) + r * cols * int64_t(16 / V);
    }
    const uint4* wv = reinterpret_cast<const uint4*>(wrow);
    const int64_t n_chunks = cols / V;
    uint4 raw[kUnroll];
    auto load = [&](int64_t c0) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t c = c0 + int64_t(u) * 32;
        // Each weight is read exactly once: keep it out of L1 so x stays resident.
        if (c < n_chunks) raw[u] = __ldcs(wv + c);
      }
    };
    // The weights are constant: the first loads go out before waiting for the kernel that
    // produces x, overlapping its tail.
    load(lane);
    pdl_wait();
    for (int64_t c0 = lane; c0 < n_chunks; c0 += 32 * kUnroll) {
      if (c0 != lane) load(c0);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t c = c0 + int64_t(u) * 32;
        if (c >= n_chunks) break;
        float s = 1.f;
        if constexpr (T == DType::Q8_0) s = __half2float(scales[c * V / 32]);
        float wf[V];
        Tr::decode(raw[u], s, wf);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          const float4* xv = reinterpret_cast<const float4*>(x + t * cols + c * V);
#pragma unroll
          for (int k = 0; k < V / 4; ++k) {
            const float4 xx = __ldg(xv + k);
            acc[t] = fmaf(wf[4 * k], xx.x, acc[t]);
            acc[t] = fmaf(wf[4 * k + 1], xx.y, acc[t]);
            acc[t] = fmaf(wf[4 * k + 2], xx.z, acc[t]);
            acc[t] = fmaf(wf[4 * k + 3], xx.w, acc[t]);
          }
        }
      }
    }
  } else {
    // Rows not 16-byte aligned (odd widths): plain coalesced scalar loads. Q8_0 never gets here:
    // its rows are whole 32-value blocks.
    pdl_wait();
    if constexpr (T != DType::Q8_0) {
      for (int64_t c = lane; c < cols; c += 32) {
        const float wf = Tr::scalar(w, r * cols + c);
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[t] = fmaf(wf, x[t * cols + c], acc[t]);
      }
    }
  }

#pragma unroll
  for (int t = 0; t < NT; ++t) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
  }
  if (lane == 0) {
    const float b = bias ? bias[r] : 0.f;
#pragma unroll
    for (int t = 0; t < NT; ++t) y[t * rows + r] = acc[t] + b;
  }
}

template <DType T, int NT>
void gemv_nt(const Weight& w, const float* x, float* y, bool vec, cudaStream_t stream) {
  const dim3 grid{unsigned((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock)};
  launch(gemv_kernel<T, NT>, grid, kWarpsPerBlock * 32, 0, stream, w.data, x, w.rows, w.cols, vec, w.bias, y);
}

template <DType T>
void gemv_type(const Weight& w, const float* x, int64_t n_tok, float* y, cudaStream_t stream) {
  constexpr int V = WeightTraits<T>::kVals;
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
  const bool vec = aligned && w.cols % V == 0;
  if (T == DType::Q8_0 && !vec)
    throw std::invalid_argument("CUDA matmul: Q8_0 activations must be 16-byte aligned");
  for (int64_t t0 = 0; t0 < n_tok; t0 += kMaxGemvTokens) {
    const float* xt = x + t0 * w.cols;
    float* yt = y + t0 * w.rows;
    switch (int(std::min<int64_t>(n_tok - t0, kMaxGemvTokens))) {
      case 1: gemv_nt<T, 1>(w, xt, yt, vec, stream); break;
      case 2: gemv_nt<T, 2>(w, xt, yt, vec, stream); break;
      case 3: gemv_nt<T, 3>(w, xt, yt, vec, stream); break;
      case 4: gemv_nt<T, 4>(w, xt, yt, vec, stream); break;
      case 5: gemv_nt<T, 5>(w, xt, yt, vec, stream); break;
      case 6: gemv_nt<T, 6>(w, xt, yt, vec, stream); break;
      case 7: gemv_nt<T, 7>(w, xt, yt, vec, stream); break;
      default: gemv_nt<T, 8>(w, xt, yt, vec, stream); break;
    }
  }
}

template <typename H>
__global__ void convert_kernel(const float* __restrict__ x, H* __restrict__ dst, int64_t n) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<H, __half>)
      dst[i] = __float2half_rn(x[i]);
    else
      dst[i] = __float2bfloat16_rn(x[i]);
  }
}

__global__ void add_bias_kernel(float* __restrict__ y, const float* __restrict__ bias,
                                int64_t n_tok, int64_t rows) {
  pdl_trigger();
  pdl_wait();
  const int64_t n = n_tok * rows;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] += bias[i % rows];
}

}  // namespace

void launch_gemv(const Weight& w, const float* x, int64_t n_tok, float* y, cudaStream_t stream) {
  switch (w.type) {
    case DType::F32: gemv_type<DType::F32>(w, x, n_tok, y, stream); return;
    case DType::F16: gemv_type<DType::F16>(w, x, n_tok, y, stream); return;
    case DType::BF16: gemv_type<DType::BF16>(w, x, n_tok, y, stream); return;
    case DType::Q8_0: gemv_type<DType::Q8_0>(w, x, n_tok, y, stream); return;
  }
  throw std::invalid_argument("CUDA matmul: unknown weight type");
}

void launch_convert_activations(DType t, const float* x, void* dst, int64_t n,
                                cudaStream_t stream) {
  if (n == 0) return;
  if (t == DType::F16)
    launch(convert_kernel<__half>, grid_for(n, 256), 256, 0, stream, x, static_cast<__half*>(dst), n);
  else
    launch(convert_kernel<__nv_bfloat16>, grid_for(n, 256), 256, 0, stream, x, static_cast<__nv_bfloat16*>(dst), n);
}

void launch_add_bias(float* y, const float* bias, int64_t n_tok, int64_t rows,
                     cudaStream_t stream) {
  if (n_tok * rows == 0) return;
  launch(add_bias_kernel, grid_for(n_tok * rows, 256), 256, 0, stream, y, bias, n_tok, rows);
}

}  // namespace sinkserve::cuda
