// Shared pieces of the CUDA backend: error checking and the kernel launchers that
// cuda_backend.cu dispatches to. Every launcher queues work on `stream` and returns at once.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "kernels/backend.h"

namespace sinkserve::cuda {

[[noreturn]] inline void fail(const char* what, const char* detail, const char* file, int line) {
  throw std::runtime_error(std::string("CUDA backend: ") + what + " failed: " + detail + " (" +
                           file + ":" + std::to_string(line) + ")");
}

#define SS_CUDA_CHECK(expr)                                                              \
  do {                                                                                   \
    const cudaError_t ss_err_ = (expr);                                                  \
    if (ss_err_ != cudaSuccess)                                                          \
      ::sinkserve::cuda::fail(#expr, cudaGetErrorString(ss_err_), __FILE__, __LINE__);   \
  } while (0)

#define SS_CUBLAS_CHECK(expr)                                                             \
  do {                                                                                    \
    const cublasStatus_t ss_st_ = (expr);                                                 \
    if (ss_st_ != CUBLAS_STATUS_SUCCESS)                                                  \
      ::sinkserve::cuda::fail(#expr, cublasGetStatusString(ss_st_), __FILE__, __LINE__);  \
  } while (0)


// Programmatic dependent launch (sm_90+). Every kernel here is launched with launch() and
// starts with pdl_trigger() then pdl_wait(): the next kernel on the stream may then be scheduled
// while this one still runs (hiding its launch latency and ramp-up), and waits in pdl_wait()
// until its predecessor has finished and flushed its writes. A kernel must not touch memory that
// earlier work writes or reads before its pdl_wait(); constant weights it may. A grid starts only
// once every block of its predecessor has triggered, i.e. is resident, so waiting blocks never
// keep a predecessor's blocks from running. On older GPUs both are no-ops.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether the current device runs programmatic dependent launches (compute capability 9+, and
// not disabled with SINKSERVE_CUDA_PDL=0).
bool pdl_enabled();

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  // A launch error (bad configuration, missing kernel image) surfaces here; faults inside a kernel
  // surface at the next synchronizing call. The error is also cleared from the runtime's sticky
  // last-error slot, so that it is not reported again by an unrelated later call.
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("cudaLaunchKernelEx", cudaGetErrorString(e), __FILE__, __LINE__);
  }
}

// Blocks for a grid-stride loop over n elements (at least one block).
inline unsigned grid_for(int64_t n, int threads) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 65535)));
}

// Q8_0 weights are repacked on upload from GGUF's 34-byte blocks into two planes, so that a warp
// reads the quants with aligned 16-byte loads: rows*cols int8 quants, then (at a 256-byte aligned
// offset) rows*cols/32 F16 scales. The values are unchanged.
__host__ __device__ inline int64_t q8_scales_offset(int64_t rows, int64_t cols) {
  return (rows * cols + 255) / 256 * 256;
}

// y[t][r] = W[r] . x[t] (+ bias[r]) with the weights streamed once per group of up to 8 tokens.
void launch_gemv(const Weight& w, const float* x, int64_t n_tok, float* y, cudaStream_t stream);
// Rows [r0, r0 + n) of a block-quantized weight (Q8_0 included) as row-major F16 into dst: a
// tile for the cuBLAS path of prompt-sized batches.
void launch_dequantize_f16(const Weight& w, int64_t r0, int64_t n, void* dst, cudaStream_t stream);
// Backend::embed for block-quantized tables other than Q8_0 (whose planes launch_embed reads).
void launch_embed_blocks(const Weight& table, const int32_t* tokens, int64_t n_tok, float* out,
                         cudaStream_t stream);
// x (F32) to the weight's 16-bit type, for the cuBLAS path.
void launch_convert_activations(DType t, const float* x, void* dst, int64_t n, cudaStream_t stream);
void launch_add_bias(float* y, const float* bias, int64_t n_tok, int64_t rows, cudaStream_t stream);

void launch_embed(const Weight& table, const int32_t* tokens, int64_t n_tok, float* out,
                  cudaStream_t stream);
void launch_rmsnorm(float* out, const float* x, const float* w, int64_t n_tok, int64_t dim,
                    float eps, cudaStream_t stream);
void launch_add_rmsnorm(float* x, const float* y, float* out, const float* w, int64_t n_tok,
                        int64_t dim, float eps, cudaStream_t stream);
void launch_layernorm(float* out, const float* x, const float* w, const float* b, int64_t n_tok,
                      int64_t dim, float eps, cudaStream_t stream);
void launch_add_layernorm(float* x, const float* y, float* out, const float* w, const float* b,
                          int64_t n_tok, int64_t dim, float eps, cudaStream_t stream);
// inv_freq[i] = rope_inv_freq(p, head_dim, i) for i < n_rot / 2; every array in device memory.
void launch_rope_and_store(const float* qkv, int64_t stride, int64_t n_tok, int n_heads,
                           int n_kv_heads, int head_dim, int n_rot, const int64_t* pos_win,
                           const int64_t* pos_sink, const double* inv_freq, bool neox,
                           float* q_win, float* q_sink, float* k_cache, float* v_cache,
                           const int64_t* rows, cudaStream_t stream);
// Converts n rows of width F32 values (src, dense) into cache rows rows[i] stored as t (F16, BF16
// or Q8_0 blocks of 32, rounded as quantize_row does).
void launch_store_kv_rows(DType t, const float* src, int64_t n, int64_t width, void* dst,
                          const int64_t* rows, cudaStream_t stream);
void launch_activate(Activation act, float* out, const float* gate, const float* up, int64_t n_tok,
                     int64_t width, int64_t in_stride, cudaStream_t stream);
void launch_clamp(float* x, int64_t n, float limit, cudaStream_t stream);
void launch_add(float* x, const float* y, int64_t n, cudaStream_t stream);
void launch_gather_rows(float* dst, int64_t width, const int64_t* rows, const float* src,
                        int64_t n, cudaStream_t stream);
// One row's SampleSpec as the sampling kernel reads it; its penalized tokens are
// penalized[penalized_at, penalized_at + n_penalized) of one array for all rows.
struct SampleRow {
  float temperature, top_p, min_p, penalty, coin;
  int32_t top_k, n_penalized;
  int64_t penalized_at;
};
// Backend::sample: e_rows is scratch of n_rows * width floats; out (device) gets a token per row.
void launch_sample(float* logits, int64_t n_rows, int64_t width, const SampleRow* specs,
                   const int32_t* penalized, float* e_rows, int32_t* out, cudaStream_t stream);

// Attention as Backend::attention describes it. `spans` is in device memory; `host_spans` (the
// same descriptors) sizes the grid. `partials` must hold attention_partial_floats(...) floats.
struct AttnShape {
  int64_t n_tok;
  int n_heads, n_kv_heads, head_dim;
  int max_keys;  // the largest n_sink + n_win over the tokens
};
struct AttnPlan {
  int split;     // keys per block
  int n_splits;  // blocks per (token, KV head)
  size_t smem;   // dynamic shared memory per block
};
AttnPlan plan_attention(const AttnShape& s, int num_sms, size_t smem_limit);
int64_t attention_partial_floats(const AttnShape& s, const AttnPlan& p);
// k, v: cache rows stored as kv_type; alibi: device array of n_heads slopes, or null.
void launch_attention(const AttnShape& s, const AttnPlan& p, const float* q_win,
                      const float* q_sink, DType kv_type, const void* k, const void* v,
                      const AttnSpan* spans, const float* alibi, float* partials, float* out,
                      cudaStream_t stream);
// Raises the kernels' dynamic shared-memory ceiling to `bytes` (once per device).
void enable_attention_smem(size_t bytes);

}  // namespace sinkserve::cuda
