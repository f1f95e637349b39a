// Attention over the sink cache, flash-decoding style. A block owns one (query token, KV head)
// pair and one split of that token's keys; all query heads of the GQA group share each loaded key
// and value row. Within a split the scores stay in shared memory (two passes, exact softmax);
// across splits the partial results are merged with their log-sum-exp, so a long window is spread
// over many SMs even for a single decoding token.
//
// A token's keys, in order: its n_sink sink rows (row0 + j, scored with q_sink), then n_win ring
// rows starting at ring index win_begin and wrapping (scored with q_win). Prefill chunks need no
// mask: each token's span already excludes later tokens.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_fp16.h>

#include "kernels/cuda/cuda_common.cuh"

namespace sinkserve::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kKeysPerWarpStep = 4;  // key rows in flight per warp in the scoring pass
constexpr int kValueLoads = 8;       // value rows in flight per thread in the output pass

struct AttnArgs {
  const float* q_win;
  const float* q_sink;
  const void* k;
  const void* v;
  const AttnSpan* spans;
  const float* alibi;  // per query head, or null
  float* partials;  // [n_tok][n_heads][n_splits] x (head_dim values, m, l)
  float* out;
  int n_heads, n_kv, head_dim, group;
  int split, n_splits;
  float scale;
};

__device__ __forceinline__ int64_t key_row(const AttnSpan& s, int j) {
  if (j < s.n_sink) return s.row0 + j;
  int ring = s.win_begin + (j - s.n_sink);
  if (ring >= s.ring_size) ring -= s.ring_size;
  return s.row0 + s.sink_rows + ring;
}

// Value e of cache row `row` (rows of `width` values) stored as KT, as F32. Q8_0 rows are blocks of
// 32 values: an F16 scale, then 32 int8 (34 bytes, so every scale is 2-byte aligned).
template <DType KT>
__device__ __forceinline__ float kv_load(const void* base, int64_t row, int64_t width, int64_t e) {
  const int64_t i = row * width + e;
  if constexpr (KT == DType::F32) {
    return __ldg(static_cast<const float*>(base) + i);
  } else if constexpr (KT == DType::F16) {
    return __half2float(__ushort_as_half(__ldg(static_cast<const unsigned short*>(base) + i)));
  } else if constexpr (KT == DType::BF16) {
    return __uint_as_float(uint32_t(__ldg(static_cast<const unsigned short*>(base) + i)) << 16);
  } else {
    const auto* b = static_cast<const uint8_t*>(base) + (i / 32) * 34;
    const float d = __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(b))));
    return d * float(static_cast<int8_t>(__ldg(b + 2 + i % 32)));
  }
}

// DPL = values of a head that each lane holds (head_dim <= 32 * DPL); KT = the cache's type.
template <int DPL, DType KT>
__global__ void __launch_bounds__(kThreads) attention_split_kernel(AttnArgs a) {
  pdl_trigger();
  pdl_wait();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int G = a.group, hd = a.head_dim;
  float* q_s = reinterpret_cast<float*>(smem_raw);  // [2][G][hd]: window, then sink
  float* sc = q_s + 2 * G * hd;                     // [G][split]: scores, then probabilities
  float* ml = sc + G * a.split;                     // [G][2]: max, sum
  int64_t* rows = reinterpret_cast<int64_t*>(ml + 2 * G);  // [split]: 8-aligned, every count above is even

  const int t = blockIdx.x / a.n_kv, kh = blockIdx.x % a.n_kv, sp = blockIdx.y;
  const AttnSpan span = a.spans[t];
  const int n_keys = span.n_sink + span.n_win;
  const int j0 = sp * a.split, j1 = min(n_keys, j0 + a.split), nj = max(0, j1 - j0);
  const int64_t q_stride = int64_t(a.n_heads) * hd, kv_stride = int64_t(a.n_kv) * hd;
  const int h0 = kh * G;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  for (int i = threadIdx.x; i < 2 * G * hd; i += kThreads) {
    const float* q = i < G * hd ? a.q_win : a.q_sink;
    const int gi = i % (G * hd);
    q_s[i] = q[t * q_stride + int64_t(h0) * hd + gi] * a.scale;
  }
  for (int j = threadIdx.x; j < nj; j += kThreads) rows[j] = key_row(span, j0 + j);
  __syncthreads();

  // Scores: a warp per key row, lanes across head_dim, several rows loaded before use.
  for (int jb = warp * kKeysPerWarpStep; jb < nj; jb += kWarps * kKeysPerWarpStep) {
    float kv[kKeysPerWarpStep][DPL];
#pragma unroll
    for (int u = 0; u < kKeysPerWarpStep; ++u) {
      const int j = jb + u;
      const int64_t row = j < nj ? rows[j] : 0;
#pragma unroll
      for (int e = 0; e < DPL; ++e) {
        const int d = lane + 32 * e;
        kv[u][e] = (j < nj && d < hd) ? kv_load<KT>(a.k, row, kv_stride, int64_t(kh) * hd + d) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kKeysPerWarpStep; ++u) {
      const int j = jb + u;
      if (j >= nj) break;
      const float* qb = q_s + (j0 + j < span.n_sink ? G * hd : 0);
      for (int g = 0; g < G; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < DPL; ++e) {
          const int d = lane + 32 * e;
          if (d < hd) dot = fmaf(kv[u][e], qb[g * hd + d], dot);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        // ALiBi: the key's distance inside the cache, n_keys - 1 - (its index).
        if (lane == 0)
          sc[g * a.split + j] = a.alibi ? dot - a.alibi[h0 + g] * float(n_keys - 1 - (j0 + j)) : dot;
      }
    }
  }
  __syncthreads();

  // Softmax statistics of this split, a warp per head.
  for (int g = warp; g < G; g += kWarps) {
    float m = -FLT_MAX;
    for (int j = lane; j < nj; j += 32) m = fmaxf(m, sc[g * a.split + j]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.f;
    for (int j = lane; j < nj; j += 32) {
      const float p = expf(sc[g * a.split + j] - m);
      sc[g * a.split + j] = p;
      l += p;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (lane == 0) {
      ml[2 * g] = m;
      ml[2 * g + 1] = l;
    }
  }
  __syncthreads();

  // Weighted values: a thread per (head, dim); consecutive threads read consecutive floats of a
  // value row, and the heads of the group hit the same row in L1.
  for (int i = threadIdx.x; i < G * hd; i += kThreads) {
    const int g = i / hd, d = i % hd;
    const int64_t col = int64_t(kh) * hd + d;
    const float* p = sc + g * a.split;
    // kValueLoads independent loads in flight: one chain of dependent loads per key would make
    // this pass latency bound.
    float acc = 0.f;
    int j = 0;
    for (; j + kValueLoads <= nj; j += kValueLoads) {
      float vv[kValueLoads];
#pragma unroll
      for (int u = 0; u < kValueLoads; ++u) vv[u] = kv_load<KT>(a.v, rows[j + u], kv_stride, col);
#pragma unroll
      for (int u = 0; u < kValueLoads; ++u) acc = fmaf(p[j + u], vv[u], acc);
    }
    for (; j < nj; ++j) acc = fmaf(p[j], kv_load<KT>(a.v, rows[j], kv_stride, col), acc);
    const int h = h0 + g;
    if (a.n_splits == 1) {
      const float l = ml[2 * g + 1];
      a.out[t * q_stride + int64_t(h) * hd + d] = l > 0.f ? acc / l : 0.f;
    } else {
      float* part = a.partials + ((int64_t(t) * a.n_heads + h) * a.n_splits + sp) * (hd + 2);
      part[d] = acc;
      if (d == 0) {
        part[hd] = nj > 0 ? ml[2 * g] : -FLT_MAX;
        part[hd + 1] = nj > 0 ? ml[2 * g + 1] : 0.f;
      }
    }
  }
}

// out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s, one block per (token, head).
__global__ void attention_merge_kernel(const float* __restrict__ partials, int n_splits,
                                       int head_dim, float* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  const int64_t th = blockIdx.x;  // token * n_heads + head: out rows are laid out the same way
  const float* part = partials + th * n_splits * (head_dim + 2);
  float m = -FLT_MAX;
  for (int s = 0; s < n_splits; ++s) m = fmaxf(m, part[s * (head_dim + 2) + head_dim]);
  float l = 0.f;
  for (int s = 0; s < n_splits; ++s) {
    const float ls = part[s * (head_dim + 2) + head_dim + 1];
    if (ls > 0.f) l += expf(part[s * (head_dim + 2) + head_dim] - m) * ls;
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < n_splits; ++s) {
      const float* ps = part + s * (head_dim + 2);
      if (ps[head_dim + 1] > 0.f) acc += expf(ps[head_dim] - m) * ps[d];
    }
    out[th * head_dim + d] = l > 0.f ? acc / l : 0.f;
  }
}

size_t smem_bytes(int group, int head_dim, int split) {
  const size_t floats = size_t(2 * group * head_dim + group * split + 2 * group);
  return floats * sizeof(float) + size_t(split) * sizeof(int64_t);
}

template <int DPL>
void launch_split(const AttnShape& s, const AttnPlan& p, const AttnArgs& args, DType kv_type,
                  cudaStream_t stream) {
  const dim3 grid(unsigned(s.n_tok * s.n_kv_heads), unsigned(p.n_splits));
  switch (kv_type) {
    case DType::F16: launch(attention_split_kernel<DPL, DType::F16>, grid, kThreads, p.smem, stream, args); break;
    case DType::BF16: launch(attention_split_kernel<DPL, DType::BF16>, grid, kThreads, p.smem, stream, args); break;
    case DType::Q8_0: launch(attention_split_kernel<DPL, DType::Q8_0>, grid, kThreads, p.smem, stream, args); break;
    default: launch(attention_split_kernel<DPL, DType::F32>, grid, kThreads, p.smem, stream, args); break;
  }
}

template <int DPL>
void enable_smem(size_t bytes) {
  for (const void* k : {reinterpret_cast<const void*>(attention_split_kernel<DPL, DType::F32>),
                        reinterpret_cast<const void*>(attention_split_kernel<DPL, DType::F16>),
                        reinterpret_cast<const void*>(attention_split_kernel<DPL, DType::BF16>),
                        reinterpret_cast<const void*>(attention_split_kernel<DPL, DType::Q8_0>)})
    SS_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace

AttnPlan plan_attention(const AttnShape& s, int num_sms, size_t smem_limit) {
  if (s.head_dim < 1 || s.head_dim > 256)
    throw std::invalid_argument("CUDA attention: head_dim " + std::to_string(s.head_dim) +
                                " is outside 1..256");
  if (s.n_kv_heads < 1 || s.n_heads % s.n_kv_heads != 0)
    throw std::invalid_argument("CUDA attention: " + std::to_string(s.n_heads) +
                                " query heads do not divide into " +
                                std::to_string(s.n_kv_heads) + " KV heads");
  const int group = s.n_heads / s.n_kv_heads;
  const int64_t pairs = s.n_tok * s.n_kv_heads;
  // Aim for about four resident blocks per SM; a split never drops below 64 keys, where the
  // fixed cost of a block (loading the queries, the merge) would dominate.
  const int64_t want_splits = std::max<int64_t>(1, (4 * int64_t(num_sms) + pairs - 1) / pairs);
  int split = int(std::max<int64_t>(1, (s.max_keys + want_splits - 1) / want_splits));
  split = std::clamp((split + 31) / 32 * 32, 64, 1024);
  while (split > 32 && smem_bytes(group, s.head_dim, split) > smem_limit) split /= 2;
  if (smem_bytes(group, s.head_dim, split) > smem_limit)
    throw std::invalid_argument("CUDA attention: a group of " + std::to_string(group) +
                                " heads of " + std::to_string(s.head_dim) +
                                " values does not fit in shared memory");
  AttnPlan p;
  p.split = split;
  p.n_splits = std::max(1, (s.max_keys + split - 1) / split);
  p.smem = smem_bytes(group, s.head_dim, split);
  return p;
}

int64_t attention_partial_floats(const AttnShape& s, const AttnPlan& p) {
  return p.n_splits > 1 ? s.n_tok * s.n_heads * int64_t(p.n_splits) * (s.head_dim + 2) : 0;
}

void enable_attention_smem(size_t bytes) {
  enable_smem<1>(bytes);
  enable_smem<2>(bytes);
  enable_smem<4>(bytes);
  enable_smem<8>(bytes);
}

void launch_attention(const AttnShape& s, const AttnPlan& p, const float* q_win,
                      const float* q_sink, DType kv_type, const void* k, const void* v,
                      const AttnSpan* spans, const float* alibi, float* partials, float* out,
                      cudaStream_t stream) {
  if (s.n_tok == 0) return;
  AttnArgs args{q_win, q_sink, k, v, spans, alibi, partials, out,
                s.n_heads, s.n_kv_heads, s.head_dim, s.n_heads / s.n_kv_heads,
                p.split, p.n_splits, float(1.0 / std::sqrt(double(s.head_dim)))};
  const int dpl = (s.head_dim + 31) / 32;
  if (dpl <= 1) launch_split<1>(s, p, args, kv_type, stream);
  else if (dpl <= 2) launch_split<2>(s, p, args, kv_type, stream);
  else if (dpl <= 4) launch_split<4>(s, p, args, kv_type, stream);
  else launch_split<8>(s, p, args, kv_type, stream);
  if (p.n_splits > 1) {
    launch(attention_merge_kernel, unsigned(s.n_tok * s.n_heads), 128, 0, stream, partials, p.n_splits, s.head_dim, out);
  }
}

}  // namespace sinkserve::cuda
