// Backend::sample on the device: one block per row of logits. The top-k and nucleus thresholds
// are found by bisection over the order-preserving integer image of the floats, each step one
// block-wide count or sum, so no sort is needed; every sum runs in a fixed order, so a given
// spec always draws the same token.
#include <climits>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/cuda_common.cuh"

namespace sinkserve::cuda {
namespace {

constexpr int kThreads = 1024;

struct Candidate {
  int index;
  float value;
};

// The larger value; the lower index among equal values.
struct ArgMaxOp {
  __device__ Candidate operator()(const Candidate& a, const Candidate& b) const {
    return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
  }
};

struct MaxOp {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

using ReduceF = cub::BlockReduce<float, kThreads>;
using ReduceI = cub::BlockReduce<int, kThreads>;
using ReduceC = cub::BlockReduce<Candidate, kThreads>;
using ScanF = cub::BlockScan<float, kThreads>;
using ScanI = cub::BlockScan<int, kThreads>;

struct Shared {
  union {
    ReduceF::TempStorage f;
    ReduceI::TempStorage i;
    ReduceC::TempStorage c;
    ScanF::TempStorage sf;
    ScanI::TempStorage si;
  } tmp;
  float ends[kThreads];  // inclusive prefix sums of the threads' ranges
  Candidate best;
  float f;
  int i;
};

// Floats in the order of their values (for the non-NaN floats here).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct Plus {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// v reduced over the block with op, for every thread; `slot` carries it from thread 0.
template <typename Reduce, typename T, typename Op>
__device__ T block_reduce(T v, Op op, typename Reduce::TempStorage& tmp, T& slot) {
  const T r = Reduce(tmp).Reduce(v, op);
  if (threadIdx.x == 0) slot = r;
  __syncthreads();
  const T all = slot;
  __syncthreads();  // tmp and slot are free again
  return all;
}
__device__ float block_sum(float v, Shared& sh) { return block_reduce<ReduceF>(v, Plus(), sh.tmp.f, sh.f); }
__device__ int block_count(int v, Shared& sh) { return block_reduce<ReduceI>(v, Plus(), sh.tmp.i, sh.i); }
__device__ int block_max(int v, Shared& sh) { return block_reduce<ReduceI>(v, MaxOp(), sh.tmp.i, sh.i); }

__global__ void __launch_bounds__(kThreads)
sample_kernel(float* __restrict__ logits, int64_t width, const SampleRow* __restrict__ specs,
              const int32_t* __restrict__ penalized, float* __restrict__ e_rows,
              int32_t* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  __shared__ Shared sh;
  const SampleRow s = specs[blockIdx.x];
  float* l = logits + int64_t(blockIdx.x) * width;
  float* e = e_rows + int64_t(blockIdx.x) * width;
  const int tid = threadIdx.x;

  for (int i = tid; i < s.n_penalized; i += kThreads) {
    float& x = l[penalized[s.penalized_at + i]];
    x = x > 0.0f ? x / s.penalty : x * s.penalty;
  }
  __syncthreads();

  // The argmax; NaN compares false and so never wins, like -inf.
  Candidate mine{INT_MAX, -INFINITY};
  for (int64_t i = tid; i < width; i += kThreads)
    if (l[i] > mine.value) mine = {int(i), l[i]};
  const Candidate best = block_reduce<ReduceC>(mine, ArgMaxOp(), sh.tmp.c, sh.best);
  const float m = best.value / s.temperature;
  if (best.index == INT_MAX || s.temperature == 0.0f || isinf(m)) {
    if (tid == 0) out[blockIdx.x] = best.index == INT_MAX ? -1 : best.index;
    return;
  }
  auto z = [&](int64_t i) {
    const float v = l[i];
    return isnan(v) ? -INFINITY : v / s.temperature;
  };

  // Top-k: kth = the largest key with at least top_k keys at or above it; of the tokens at kth,
  // the lowest-indexed `ties` stay.
  bool top_k = false;
  uint32_t kth = 0;
  int ties = 0;
  if (s.top_k > 0) {
    int n = 0;
    for (int64_t i = tid; i < width; i += kThreads) n += z(i) > -INFINITY;
    if (s.top_k < block_count(n, sh)) {
      top_k = true;
      uint64_t lo = 0, hi = uint64_t(1) << 32;
      while (hi - lo > 1) {
        const uint64_t mid = lo + (hi - lo) / 2;
        int c = 0;
        for (int64_t i = tid; i < width; i += kThreads) c += order_key(z(i)) >= mid;
        (block_count(c, sh) >= s.top_k ? lo : hi) = mid;
      }
      kth = uint32_t(lo);
      int above = 0;
      for (int64_t i = tid; i < width; i += kThreads) above += order_key(z(i)) > kth;
      ties = s.top_k - block_count(above, sh);
    }
  }

  // From here each thread owns a contiguous range of the row, so that ranges in thread order are
  // vocabulary order (for the tie rule and the draw).
  const int64_t per = (width + kThreads - 1) / kThreads;
  const int64_t a = min(width, tid * per), b = min(width, a + per);
  int tie_rank = 0;
  if (top_k) {
    int my_ties = 0;
    for (int64_t i = a; i < b; ++i) my_ties += order_key(z(i)) == kth;
    ScanI(sh.tmp.si).ExclusiveSum(my_ties, tie_rank);
    __syncthreads();
  }
  // e: probabilities relative to the most likely token (whose e is 1); 0 for dropped tokens.
  float sum = 0.0f;
  for (int64_t i = a; i < b; ++i) {
    const float zi = z(i);
    bool keep = zi > -INFINITY;
    if (top_k && keep) {
      const uint32_t k = order_key(zi);
      keep = k > kth || (k == kth && tie_rank++ < ties);
    }
    float v = keep ? expf(zi - m) : 0.0f;
    if (v < s.min_p) v = 0.0f;
    e[i] = v;
    sum += v;
  }
  sum = block_sum(sum, sh);

  // Nucleus: p_key = the largest key whose tokens at or above it carry more than top_p of the mass.
  uint64_t p_key = 0;
  if (s.top_p > 0.0f && s.top_p < 1.0f) {
    const float target = s.top_p * sum;
    uint64_t hi = uint64_t(1) << 32;
    while (hi - p_key > 1) {
      const uint64_t mid = p_key + (hi - p_key) / 2;
      float part = 0.0f;
      for (int64_t i = a; i < b; ++i)
        if (e[i] > 0.0f && order_key(e[i]) >= mid) part += e[i];
      (block_sum(part, sh) > target ? p_key : hi) = mid;
    }
  }
  auto kept = [&](int64_t i) { return e[i] > 0.0f && order_key(e[i]) >= p_key; };

  // The draw: the thread whose range holds coin * total walks it.
  float range = 0.0f;
  int last = -1;
  for (int64_t i = a; i < b; ++i)
    if (kept(i)) {
      range += e[i];
      last = int(i);
    }
  float end;
  ScanF(sh.tmp.sf).InclusiveSum(range, end);
  sh.ends[tid] = end;
  __syncthreads();
  const float total = sh.ends[kThreads - 1];
  const float r = s.coin * total;
  if (!(r < total)) {  // rounding: the draw lands past the last kept token
    const int final_kept = block_max(last, sh);
    if (tid == 0) out[blockIdx.x] = final_kept;
    return;
  }
  const float begin = tid == 0 ? 0.0f : sh.ends[tid - 1];
  if (begin <= r && r < end) {
    float acc = begin;
    int pick = last;
    for (int64_t i = a; i < b; ++i)
      if (kept(i)) {
        acc += e[i];
        if (r < acc) {
          pick = int(i);
          break;
        }
      }
    out[blockIdx.x] = pick;
  }
}

}  // namespace

void launch_sample(float* logits, int64_t n_rows, int64_t width, const SampleRow* specs,
                   const int32_t* penalized, float* e_rows, int32_t* out, cudaStream_t stream) {
  if (n_rows == 0) return;
  launch(sample_kernel, unsigned(n_rows), kThreads, 0, stream, logits, width, specs, penalized,
         e_rows, out);
}

}  // namespace sinkserve::cuda
