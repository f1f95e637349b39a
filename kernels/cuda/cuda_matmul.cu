// Matrix-vector products for decode-sized batches. At a handful of tokens a matmul reads every
// weight once and does two flops per weight byte or less, so it is bound by memory bandwidth: the
// kernel streams each row with 16-byte loads, several in flight per lane, and reuses each loaded
// weight for up to 8 tokens. Larger batches go to cuBLAS (cuda_backend.cu); block-quantized
// weights get there as F16 tiles dequantized here. The block types' decoding is their family's
// DeviceType (kernels/quants/*.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/quants/device_types.cuh"

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

// Block-quantized types (all but Q8_0, which has the planes above): one warp per row, each lane
// decoding 8 values per step with its family's DeviceType and meeting up to 8 tokens.
template <DType T, int NT>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv_blocks_kernel(const uint8_t* __restrict__ w, const float* __restrict__ x, int64_t rows,
                       int64_t cols, const float* __restrict__ bias, float* __restrict__ y) {
  using D = DeviceType<T>;
  pdl_trigger();
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;
  const uint8_t* row = w + r * (cols / D::kValues) * D::kBytes;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.f;
  pdl_wait();
  for (int64_t v = int64_t(lane) * 8; v < cols; v += 32 * 8) {
    float wf[8];
    D::decode8(row + v / D::kValues * D::kBytes, int(v % D::kValues), wf);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float4* xv = reinterpret_cast<const float4*>(x + t * cols + v);
      const float4 a = __ldg(xv), b = __ldg(xv + 1);
      acc[t] = fmaf(wf[0], a.x, fmaf(wf[1], a.y, fmaf(wf[2], a.z, fmaf(wf[3], a.w, acc[t]))));
      acc[t] = fmaf(wf[4], b.x, fmaf(wf[5], b.y, fmaf(wf[6], b.z, fmaf(wf[7], b.w, acc[t]))));
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
void gemv_blocks_nt(const Weight& w, const float* x, float* y, cudaStream_t stream) {
  const dim3 grid{unsigned((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock)};
  launch(gemv_blocks_kernel<T, NT>, grid, kWarpsPerBlock * 32, 0, stream,
         static_cast<const uint8_t*>(w.data), x, w.rows, w.cols, w.bias, y);
}

template <DType T>
void gemv_blocks(const Weight& w, const float* x, int64_t n_tok, float* y, cudaStream_t stream) {
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0)
    throw std::invalid_argument("CUDA matmul: activations of block-quantized weights must be 16-byte aligned");
  for (int64_t t0 = 0; t0 < n_tok; t0 += kMaxGemvTokens) {
    const float* xt = x + t0 * w.cols;
    float* yt = y + t0 * w.rows;
    switch (int(std::min<int64_t>(n_tok - t0, kMaxGemvTokens))) {
      case 1: gemv_blocks_nt<T, 1>(w, xt, yt, stream); break;
      case 2: gemv_blocks_nt<T, 2>(w, xt, yt, stream); break;
      case 3: gemv_blocks_nt<T, 3>(w, xt, yt, stream); break;
      case 4: gemv_blocks_nt<T, 4>(w, xt, yt, stream); break;
      case 5: gemv_blocks_nt<T, 5>(w, xt, yt, stream); break;
      case 6: gemv_blocks_nt<T, 6>(w, xt, yt, stream); break;
      case 7: gemv_blocks_nt<T, 7>(w, xt, yt, stream); break;
      default: gemv_blocks_nt<T, 8>(w, xt, yt, stream); break;
    }
  }
}

// Rows [r0, r0 + n) of a block-quantized matrix as F16, row-major: the tiles the cuBLAS path
// multiplies. Each thread decodes 8 values and stores them as one 16-byte vector.
template <DType T>
__global__ void dequantize_f16_kernel(const uint8_t* __restrict__ w, int64_t cols, int64_t n,
                                      __half* __restrict__ out) {
  using D = DeviceType<T>;
  pdl_trigger();
  pdl_wait();
  const int64_t per_row = cols / 8, total = n * per_row;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, v = i % per_row * 8;
    float f[8];
    D::decode8(w + r * (cols / D::kValues) * D::kBytes + v / D::kValues * D::kBytes, int(v % D::kValues), f);
    __half2 h[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) h[k] = __floats2half2_rn(f[2 * k], f[2 * k + 1]);
    *reinterpret_cast<uint4*>(out + r * cols + v) = *reinterpret_cast<const uint4*>(h);
  }
}

// The same for Q8_0's planes (rows_total rows in all, of which [r0, r0 + n)).
__global__ void dequantize_q8_f16_kernel(const uint8_t* __restrict__ w, int64_t rows_total, int64_t cols,
                                         int64_t r0, int64_t n, __half* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const auto* q = reinterpret_cast<const int8_t*>(w) + r0 * cols;
  const auto* scales = reinterpret_cast<const __half*>(w + q8_scales_offset(rows_total, cols)) + r0 * cols / 32;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n * cols; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2half_rn(__half2float(scales[i / 32]) * float(q[i]));
}

template <DType T>
__global__ void embed_blocks_kernel(const uint8_t* __restrict__ table, int64_t cols,
                                    const int32_t* __restrict__ tokens, float* __restrict__ out) {
  using D = DeviceType<T>;
  pdl_trigger();
  pdl_wait();
  const int64_t t = blockIdx.x;
  const uint8_t* row = table + int64_t(tokens[t]) * (cols / D::kValues) * D::kBytes;
  for (int64_t v = int64_t(threadIdx.x) * 8; v < cols; v += int64_t(blockDim.x) * 8)
    D::decode8(row + v / D::kValues * D::kBytes, int(v % D::kValues), out + t * cols + v);
}

// Calls f(std::integral_constant<DType, T>) for the block-quantized type t.
template <class F>
void with_block_type(DType t, F&& f) {
  switch (t) {
#define SINKSERVE_BLOCK_CASE(NAME, ...) \
  case DType::NAME: return f(std::integral_constant<DType, DType::NAME>{});
    SINKSERVE_QUANT_TYPES(SINKSERVE_BLOCK_CASE)
#undef SINKSERVE_BLOCK_CASE
    default: throw std::invalid_argument("CUDA: " + std::string(dtype_name(t)) + " is not block-quantized");
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
    default: break;
  }
  with_block_type(w.type, [&](auto tag) {
    constexpr DType T = decltype(tag)::value;
    if constexpr (T == DType::Q8_0) gemv_type<DType::Q8_0>(w, x, n_tok, y, stream);
    else gemv_blocks<T>(w, x, n_tok, y, stream);
  });
}

void launch_dequantize_f16(const Weight& w, int64_t r0, int64_t n, void* dst, cudaStream_t stream) {
  if (n <= 0) return;
  auto* out = static_cast<__half*>(dst);
  const auto* data = static_cast<const uint8_t*>(w.data);
  with_block_type(w.type, [&](auto tag) {
    constexpr DType T = decltype(tag)::value;
    if constexpr (T == DType::Q8_0) {
      launch(dequantize_q8_f16_kernel, grid_for(n * w.cols, 256), 256, 0, stream, data, w.rows, w.cols, r0, n, out);
    } else {
      const int64_t row_bytes = w.cols / DeviceType<T>::kValues * DeviceType<T>::kBytes;
      launch(dequantize_f16_kernel<T>, grid_for(n * w.cols / 8, 256), 256, 0, stream, data + r0 * row_bytes,
             w.cols, n, out);
    }
  });
}

void launch_embed_blocks(const Weight& table, const int32_t* tokens, int64_t n_tok, float* out,
                         cudaStream_t stream) {
  if (n_tok == 0) return;
  with_block_type(table.type, [&](auto tag) {
    constexpr DType T = decltype(tag)::value;
    if constexpr (T == DType::Q8_0) throw std::invalid_argument("CUDA embed: Q8_0 tables use launch_embed");
    else launch(embed_blocks_kernel<T>, dim3{unsigned(n_tok)}, 128, 0, stream,
                static_cast<const uint8_t*>(table.data), table.cols, tokens, out);
  });
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
