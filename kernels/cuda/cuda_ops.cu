// The element-wise and row-wise kernels of the forward pass. All are memory bound and tiny next to
// the matmuls; they are written for exactness first (F32 math, RoPE angles in double) and
// coalesced access.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_common.cuh"

namespace sinkserve::cuda {
namespace {

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

// RMSNorm (kLayer false) or LayerNorm (mean and biased variance, then the bias b when given) of
// each row of x into out, one block per row; with kAdd, x += y first and is kept (the residual add
// fused with the norm after it). Each thread reads and writes only its own elements, so out may
// be x.
template <bool kAdd, bool kLayer>
__global__ void norm_kernel(float* out, float* x, const float* __restrict__ y,
                            const float* __restrict__ w, const float* __restrict__ b, int64_t dim,
                            float eps) {
  pdl_trigger();
  pdl_wait();
  __shared__ float red[32];
  const int64_t row = int64_t(blockIdx.x) * dim;
  float* xr = x + row;
  float* o = out + row;
  float acc = 0.f;  // LayerNorm: the sum; RMSNorm: the sum of squares
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = xr[i];
    if constexpr (kAdd) {
      v += y[row + i];
      xr[i] = v;
    }
    acc = kLayer ? acc + v : fmaf(v, v, acc);
  }
  float mean = 0.f, ms = block_sum(acc, red) / float(dim);
  if constexpr (kLayer) {
    mean = ms;
    float ss = 0.f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      const float d = xr[i] - mean;
      ss = fmaf(d, d, ss);
    }
    ms = block_sum(ss, red) / float(dim);
  }
  const float inv = 1.0f / sqrtf(ms + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    o[i] = (xr[i] - mean) * inv * w[i] + (b ? b[i] : 0.f);
}

__device__ __forceinline__ void rotate_pair(const float* src, float* dst, int a, int b, double c,
                                            double s) {
  const double x0 = src[a], x1 = src[b];
  dst[a] = float(x0 * c - x1 * s);
  dst[b] = float(x0 * s + x1 * c);
}

// One thread per (token, pair of dimensions) and head (blockIdx.y, covering query and KV heads),
// so that a single decoding token still spreads over many blocks. Pairs below n_rot/2 rotate;
// the others copy dimensions (2i, 2i + 1), which are exactly the pass-through ones [n_rot, d).
// Stream positions grow without bound, so the angle is formed and reduced in double: in float,
// pos * inv_freq loses all fractional precision past position 2^24. inv_freq comes from the
// host, in double.
__global__ void rope_store_kernel(const float* __restrict__ qkv, int64_t stride, int64_t n_tok,
                                  int n_heads, int n_kv, int head_dim, int n_rot,
                                  const int64_t* __restrict__ pos_win,
                                  const int64_t* __restrict__ pos_sink,
                                  const double* __restrict__ inv_freq, bool neox,
                                  float* __restrict__ q_win, float* __restrict__ q_sink,
                                  float* __restrict__ k_cache, float* __restrict__ v_cache,
                                  const int64_t* __restrict__ rows) {
  pdl_trigger();
  pdl_wait();
  const int half = head_dim / 2, rot_half = n_rot / 2;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n_tok * half) return;
  const int64_t t = idx / half;
  const int i = int(idx % half);
  const int h = int(blockIdx.y);
  const float* row = qkv + t * stride;
  const int64_t q_w = int64_t(n_heads) * head_dim, kv_w = int64_t(n_kv) * head_dim;
  const int64_t r = rows ? rows[t] : t;
  const int c0 = h * head_dim + 2 * i;  // the pair this thread copies when it does not rotate
  if (h < n_kv) {
    v_cache[r * kv_w + c0] = row[q_w + kv_w + c0];
    v_cache[r * kv_w + c0 + 1] = row[q_w + kv_w + c0 + 1];
  }
  if (i >= rot_half) {
    if (h < n_heads) {
      q_win[t * q_w + c0] = row[c0];
      q_win[t * q_w + c0 + 1] = row[c0 + 1];
      if (q_sink) {
        q_sink[t * q_w + c0] = row[c0];
        q_sink[t * q_w + c0 + 1] = row[c0 + 1];
      }
    }
    if (h < n_kv) {
      k_cache[r * kv_w + c0] = row[q_w + c0];
      k_cache[r * kv_w + c0 + 1] = row[q_w + c0 + 1];
    }
    return;
  }
  const int a = h * head_dim + (neox ? i : 2 * i);
  const int b = a + (neox ? rot_half : 1);
  double s, c;
  sincos(double(pos_win[t]) * inv_freq[i], &s, &c);
  if (h < n_heads) rotate_pair(row, q_win + t * q_w, a, b, c, s);
  if (h < n_kv) rotate_pair(row + q_w, k_cache + r * kv_w, a, b, c, s);
  if (q_sink && h < n_heads) {
    sincos(double(pos_sink[t]) * inv_freq[i], &s, &c);
    rotate_pair(row, q_sink + t * q_w, a, b, c, s);
  }
}

// F32 to BF16, round to nearest even, NaN kept quiet: the bits quantize_row writes.
__device__ __forceinline__ unsigned short to_bf16_bits(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40);
  return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// One thread per value: F16 or BF16 cache rows.
template <bool kBf16>
__global__ void store_kv_16_kernel(const float* __restrict__ src, int64_t n, int64_t width,
                                   unsigned short* __restrict__ dst, const int64_t* __restrict__ rows) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n * width;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float v = src[i];
    dst[rows[i / width] * width + i % width] = kBf16 ? to_bf16_bits(v) : __half_as_ushort(__float2half_rn(v));
  }
}

// One warp per block of 32 values: the scale is the block's largest magnitude / 127, and values
// round half away from zero, as quantize_row does.
__global__ void store_kv_q8_kernel(const float* __restrict__ src, int64_t n, int64_t width,
                                   uint8_t* __restrict__ dst, const int64_t* __restrict__ rows) {
  pdl_trigger();
  pdl_wait();
  const int lane = threadIdx.x & 31;
  const int64_t blocks = width / 32;
  const int64_t b = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (b >= n * blocks) return;
  const int64_t t = b / blocks, k = b % blocks;
  const float x = src[t * width + k * 32 + lane];
  float amax = fabsf(x);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
  uint8_t* out = dst + (rows[t] * blocks + k) * 34;
  if (lane == 0) *reinterpret_cast<unsigned short*>(out) = __half_as_ushort(__float2half_rn(d));
  out[2 + lane] = uint8_t(int8_t(roundf(x * id)));
}

// x * sigmoid(k x') covers SiLU and tanh-GELU (0.5 (1 + tanh u) = sigmoid(2u)); exact GELU as
// erfc(-z) rather than 1 + erf(z), which cancels for negative inputs.
__device__ __forceinline__ float activation(Activation act, float x) {
  switch (act) {
    case Activation::Silu: return x / (1.0f + expf(-x));
    case Activation::GeluTanh: {
      const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
      return x / (1.0f + expf(-2.0f * u));
    }
    case Activation::GeluErf: return 0.5f * x * erfcf(-x * 0.7071067811865476f);
  }
  return x;
}

__global__ void activate_kernel(Activation act, float* out, const float* gate, const float* up,
                                int64_t n_tok, int64_t width, int64_t in_stride) {
  pdl_trigger();
  pdl_wait();
  const int64_t n = n_tok * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = i / width * in_stride + i % width;
    out[i] = activation(act, gate[at]) * (up ? up[at] : 1.0f);
  }
}

__global__ void clamp_kernel(float* x, int64_t n, float limit) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = fminf(fmaxf(x[i], -limit), limit);
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

// dst[i] = src[rows[i]]. One block per row.
__global__ void gather_rows_kernel(float* __restrict__ dst, int64_t width,
                                   const int64_t* __restrict__ rows, const float* __restrict__ src) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = blockIdx.x;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) dst[i * width + c] = src[rows[i] * width + c];
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
}

void launch_rmsnorm(float* out, const float* x, const float* w, int64_t n_tok, int64_t dim,
                    float eps, cudaStream_t stream) {
  if (n_tok == 0) return;
  launch(norm_kernel<false, false>, unsigned(n_tok), 256, 0, stream, out, const_cast<float*>(x),
         static_cast<const float*>(nullptr), w, static_cast<const float*>(nullptr), dim, eps);
}

void launch_add_rmsnorm(float* x, const float* y, float* out, const float* w, int64_t n_tok,
                        int64_t dim, float eps, cudaStream_t stream) {
  if (n_tok == 0) return;
  launch(norm_kernel<true, false>, unsigned(n_tok), 256, 0, stream, out, x, y, w,
         static_cast<const float*>(nullptr), dim, eps);
}

void launch_layernorm(float* out, const float* x, const float* w, const float* b, int64_t n_tok,
                      int64_t dim, float eps, cudaStream_t stream) {
  if (n_tok == 0) return;
  launch(norm_kernel<false, true>, unsigned(n_tok), 256, 0, stream, out, const_cast<float*>(x),
         static_cast<const float*>(nullptr), w, b, dim, eps);
}

void launch_add_layernorm(float* x, const float* y, float* out, const float* w, const float* b,
                          int64_t n_tok, int64_t dim, float eps, cudaStream_t stream) {
  if (n_tok == 0) return;
  launch(norm_kernel<true, true>, unsigned(n_tok), 256, 0, stream, out, x, y, w, b, dim, eps);
}

void launch_rope_and_store(const float* qkv, int64_t stride, int64_t n_tok, int n_heads,
                           int n_kv_heads, int head_dim, int n_rot, const int64_t* pos_win,
                           const int64_t* pos_sink, const double* inv_freq, bool neox,
                           float* q_win, float* q_sink, float* k_cache, float* v_cache,
                           const int64_t* rows, cudaStream_t stream) {
  const int64_t n = n_tok * (head_dim / 2);
  if (n == 0) return;
  const dim3 grid{unsigned((n + 127) / 128), unsigned(std::max(n_heads, n_kv_heads))};
  launch(rope_store_kernel, grid, 128, 0, stream, qkv, stride, n_tok, n_heads, n_kv_heads,
         head_dim, n_rot, pos_win, pos_sink, inv_freq, neox, q_win, q_sink, k_cache, v_cache, rows);
}

void launch_store_kv_rows(DType t, const float* src, int64_t n, int64_t width, void* dst,
                          const int64_t* rows, cudaStream_t stream) {
  if (n == 0) return;
  switch (t) {
    case DType::F16:
      launch(store_kv_16_kernel<false>, grid_for(n * width, 256), 256, 0, stream, src, n, width,
             static_cast<unsigned short*>(dst), rows);
      break;
    case DType::BF16:
      launch(store_kv_16_kernel<true>, grid_for(n * width, 256), 256, 0, stream, src, n, width,
             static_cast<unsigned short*>(dst), rows);
      break;
    case DType::Q8_0:
      launch(store_kv_q8_kernel, unsigned((n * width + 255) / 256), 256, 0, stream, src, n, width,
             static_cast<uint8_t*>(dst), rows);
      break;
    default: break;
  }
}

void launch_activate(Activation act, float* out, const float* gate, const float* up, int64_t n_tok,
                     int64_t width, int64_t in_stride, cudaStream_t stream) {
  const int64_t n = n_tok * width;
  if (n == 0) return;
  launch(activate_kernel, grid_for(n, 256), 256, 0, stream, act, out, gate, up, n_tok, width,
         in_stride);
}

void launch_clamp(float* x, int64_t n, float limit, cudaStream_t stream) {
  if (n == 0) return;
  launch(clamp_kernel, grid_for(n, 256), 256, 0, stream, x, n, limit);
}

void launch_add(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch(add_kernel, grid_for(n, 256), 256, 0, stream, x, y, n);
}

void launch_gather_rows(float* dst, int64_t width, const int64_t* rows, const float* src,
                        int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch(gather_rows_kernel, unsigned(n), 128, 0, stream, dst, width, rows, src);
}

}  // namespace sinkserve::cuda
