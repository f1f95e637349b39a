// The element-wise and row-wise kernels of the forward pass. All are memory bound and tiny next to
// the matmuls; they are written for exactness first (F32 math, RoPE angles in double) and
// coalesced access.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_common.cuh"

namespace sinkserve::cuda {
namespace {

unsigned grid_for(int64_t n, int threads) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 65535)));
}

__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < n_warps; ++i) s += red[i];
  __syncthreads();  // red may be reused by the caller
  return s;
}

template <DType T>
__device__ float load_weight(const void* data, int64_t rows, int64_t cols, int64_t r, int64_t c) {
  if constexpr (T == DType::F32) {
    return static_cast<const float*>(data)[r * cols + c];
  } else if constexpr (T == DType::F16) {
    return __half2float(static_cast<const __half*>(data)[r * cols + c]);
  } else if constexpr (T == DType::BF16) {
    return __uint_as_float(uint32_t(static_cast<const uint16_t*>(data)[r * cols + c]) << 16);
  } else {
    const auto* base = static_cast<const uint8_t*>(data);
    const auto* scales = reinterpret_cast<const __half*>(base + q8_scales_offset(rows, cols));
    return __half2float(scales[(r * cols + c) / 32]) *
           float(reinterpret_cast<const int8_t*>(base)[r * cols + c]);
  }
}

template <DType T>
__global__ void embed_kernel(const void* __restrict__ table, int64_t rows, int64_t cols,
                             const int32_t* __restrict__ tokens, float* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const int64_t t = blockIdx.x;
  const int64_t r = tokens[t];
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    out[t * cols + c] = load_weight<T>(table, rows, cols, r, c);
}

__global__ void rmsnorm_kernel(float* out, const float* x, const float* __restrict__ w,
                               int64_t dim, float eps) {
  pdl_trigger();
  pdl_wait();
  __shared__ float red[32];
  const float* xr = x + int64_t(blockIdx.x) * dim;
  float* yr = out + int64_t(blockIdx.x) * dim;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  const float inv = 1.0f / sqrtf(block_sum(ss, red) / float(dim) + eps);
  // In place (out == x) is fine: each element is read and written by the same thread.
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// One thread per (token, rotation pair); the angle is shared by every head of the token. Stream
// positions grow without bound, so the angle is formed and reduced in double: in float, pos *
// inv_freq loses all fractional precision past position 2^24. inv_freq comes from the host, so
// that the angles equal the CPU backend's bit for bit.
__global__ void rope_kernel(float* x, int64_t n_tok, int n_heads, int head_dim,
                            const int64_t* __restrict__ pos, const double* __restrict__ inv_freq,
                            bool neox) {
  pdl_trigger();
  pdl_wait();
  const int half = head_dim / 2;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n_tok * half) return;
  const int64_t t = idx / half;
  const int i = int(idx % half);
  double s, c;
  sincos(double(pos[t]) * inv_freq[i], &s, &c);
  float* row = x + t * int64_t(n_heads) * head_dim;
  const int a = neox ? i : 2 * i;
  const int b = neox ? i + half : 2 * i + 1;
  for (int h = 0; h < n_heads; ++h) {
    float* hp = row + int64_t(h) * head_dim;
    const double x0 = hp[a], x1 = hp[b];
    hp[a] = float(x0 * c - x1 * s);
    hp[b] = float(x0 * s + x1 * c);
  }
}

__global__ void swiglu_kernel(float* out, const float* gate, const float* up, int64_t n_tok,
                              int64_t width, int64_t in_stride) {
  pdl_trigger();
  pdl_wait();
  const int64_t n = n_tok * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = i / width * in_stride + i % width;
    const float g = gate[at];
    out[i] = g / (1.0f + expf(-g)) * up[at];
  }
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

// scatter: dst[rows[i]] = src[i]; gather: dst[i] = src[rows[i]]. One block per row.
template <bool kScatter>
__global__ void move_rows_kernel(float* __restrict__ dst, int64_t width,
                                 const int64_t* __restrict__ rows, const float* __restrict__ src) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = blockIdx.x;
  const int64_t d = kScatter ? rows[i] : i;
  const int64_t s = kScatter ? i : rows[i];
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) dst[d * width + c] = src[s * width + c];
}

}  // namespace

void launch_embed(const Weight& table, const int32_t* tokens, int64_t n_tok, float* out,
                  cudaStream_t stream) {
  if (n_tok == 0) return;
  const dim3 grid{unsigned(n_tok)}, block{256};
  switch (table.type) {
    case DType::F32: launch(embed_kernel<DType::F32>, grid, block, 0, stream, table.data, table.rows, table.cols, tokens, out); break;
    case DType::F16: launch(embed_kernel<DType::F16>, grid, block, 0, stream, table.data, table.rows, table.cols, tokens, out); break;
    case DType::BF16: launch(embed_kernel<DType::BF16>, grid, block, 0, stream, table.data, table.rows, table.cols, tokens, out); break;
    case DType::Q8_0: launch(embed_kernel<DType::Q8_0>, grid, block, 0, stream, table.data, table.rows, table.cols, tokens, out); break;
  }
  SS_LAUNCH_CHECK();
}

void launch_rmsnorm(float* out, const float* x, const float* w, int64_t n_tok, int64_t dim,
                    float eps, cudaStream_t stream) {
  if (n_tok == 0) return;
  launch(rmsnorm_kernel, unsigned(n_tok), 256, 0, stream, out, x, w, dim, eps);
  SS_LAUNCH_CHECK();
}

void launch_rope(float* x, int64_t n_tok, int n_heads, int head_dim, const int64_t* pos,
                 const double* inv_freq, bool neox, cudaStream_t stream) {
  const int64_t n = n_tok * (head_dim / 2);
  if (n == 0) return;
  launch(rope_kernel, unsigned((n + 127) / 128), 128, 0, stream, x, n_tok, n_heads, head_dim, pos, inv_freq, neox);
  SS_LAUNCH_CHECK();
}

void launch_swiglu(float* out, const float* gate, const float* up, int64_t n_tok, int64_t width,
                   int64_t in_stride, cudaStream_t stream) {
  const int64_t n = n_tok * width;
  if (n == 0) return;
  launch(swiglu_kernel, grid_for(n, 256), 256, 0, stream, out, gate, up, n_tok, width, in_stride);
  SS_LAUNCH_CHECK();
}

void launch_add(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch(add_kernel, grid_for(n, 256), 256, 0, stream, x, y, n);
  SS_LAUNCH_CHECK();
}

void launch_scatter_rows(float* dst, int64_t width, const int64_t* rows, const float* src,
                         int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch(move_rows_kernel<true>, unsigned(n), 128, 0, stream, dst, width, rows, src);
  SS_LAUNCH_CHECK();
}

void launch_gather_rows(float* dst, int64_t width, const int64_t* rows, const float* src,
                        int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch(move_rows_kernel<false>, unsigned(n), 128, 0, stream, dst, width, rows, src);
  SS_LAUNCH_CHECK();
}

}  // namespace sinkserve::cuda
