// The CUDA backend: device memory from cudaMalloc, one stream per backend with every operation
// queued on it asynchronously, cuBLAS for prefill-sized matmuls and the kernels of this folder
// for everything else. Host arrays that parametrise an operation (tokens, positions, spans, rows)
// are staged through pinned memory so that the caller never waits for the device.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <string>
#include <unordered_set>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/sample_spec.h"

namespace sinkserve {
namespace {

// Up to this many tokens a matmul streams the weights through the GEMV kernel; beyond it, F16/BF16
// weights go to cuBLAS's tensor-core GEMMs and F32 weights to cublasSgemm. Measured on an H100
// with llama2-7b's F16 matrices: the GEMV takes 36 us for 11008x4096 at 1 token and 42 us at 2,
// but 53 us at 4 and 106 us at 8 (each token's activations are re-read from L1 per weight),
// while cuBLAS takes 39-41 us at 16 tokens.
constexpr int64_t kGemvMaxTokens = 2;
// Block-quantized weights (Q8_0, Q4_K, ...) stream through their dequantizing GEMV kernels up to
// this many tokens (one pass of the kernel's 8): a quarter to a half of F16's bytes per weight
// moves the crossover up. Beyond it they are dequantized to F16 a tile of rows at a time, at most
// kQuantTileBytes, for cuBLAS's tensor-core GEMM: never a dense copy of the whole matrix.
constexpr int64_t kQuantGemvMaxTokens = 8;
constexpr int64_t kQuantTileBytes = int64_t(32) << 20;
// Steps recorded as CUDA Graphs: decode steps, whose matmuls are all own GEMV kernels (cuBLAS
// would need its workspace set up for capture).
constexpr int64_t kGraphMaxTokens = kGemvMaxTokens;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    SS_CUDA_CHECK(cudaSetDevice(device_));
    cudaDeviceProp prop{};
    SS_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    name_ = "cuda:" + std::to_string(device_) + " (" + prop.name + ")";
    num_sms_ = prop.multiProcessorCount;
    smem_limit_ = prop.sharedMemPerBlockOptin;
    // A blocking stream: the NCCL communicator enqueues its collectives on the legacy default
    // stream, which orders them against blocking streams only (docs/parallel.md).
    SS_CUDA_CHECK(cudaStreamCreate(&stream_));
    SS_CUBLAS_CHECK(cublasCreate(&cublas_));
    SS_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    // Plain FP32 for F32 weights: TF32 would cost ~1e-3 relative error against the CPU backend.
    SS_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    cuda::enable_attention_smem(smem_limit_);
    grow_staging(1 << 20);
    const char* graphs = std::getenv("SINKSERVE_CUDA_GRAPHS");
    graphs_ = graphs && std::string(graphs) == "1";
    if (graphs_) name_ += ", graphs";
  }

  ~CudaBackend() override {
    // Destructors must not throw: errors here (a device already lost) are ignored.
    cudaSetDevice(device_);
    discard_capture();
    cudaStreamSynchronize(stream_);
    if (step_exec_) cudaGraphExecDestroy(step_exec_);
    for (void* p : allocs_) cudaFree(p);
    cudaFree(scratch_);
    cudaFree(partials_);
    cudaFree(stage_dev_);
    cudaFreeHost(stage_host_);
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }

  int64_t memory_available() override {
    use_device();
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
      cudaGetLastError();
      return 0;  // a device that cannot say holds nothing more
    }
    return int64_t(free_bytes);
  }

  void* alloc(size_t bytes) override {
    if (bytes == 0) return nullptr;
    use_device();
    leave_step("alloc");
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error("CUDA backend: cannot allocate " + std::to_string(bytes) +
                               " bytes on " + name_ + ": " + cudaGetErrorString(e));
    }
    allocs_.insert(p);
    return p;
  }

  void release(void* p) override {
    if (!p) return;
    if (!allocs_.count(p))
      throw std::invalid_argument("CUDA backend: release() of a pointer it did not allocate");
    use_device();
    leave_step("release");
    allocs_.erase(p);
    // cudaFree waits for the device, so queued work that still reads p finishes first.
    SS_CUDA_CHECK(cudaFree(p));
  }

  void to_device(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return;
    use_device();
    leave_step("to_device");  // a recorded copy would read host_src only when the graph runs
    // From pageable memory the copy returns once the source has been read, so the caller may
    // reuse host_src at once.
    SS_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
  }

  void to_host(void* host_dst, const void* src, size_t bytes) override {
    use_device();
    leave_step("to_host");
    if (bytes) SS_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    drain();
  }

  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    use_device();
    if (replaying(Op::Copy, dst, src, bytes)) return;
    SS_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }

  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
               size_t rows) override {
    if (width == 0 || rows == 0) return;
    use_device();
    if (replaying(Op::Copy2d, dst, dst_pitch, src, src_pitch, width, rows)) return;
    SS_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows,
                                    cudaMemcpyDeviceToDevice, stream_));
  }

  void zero(void* dst, size_t bytes) override {
    if (bytes == 0) return;
    use_device();
    if (replaying(Op::Zero, dst, bytes)) return;
    SS_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
  }

  // CUDA Graphs (SINKSERVE_CUDA_GRAPHS=1), for steps of at most kGraphMaxTokens tokens. Every
  // operation of a bracketed step adds its launch parameters (pointers, sizes, staging offsets)
  // to a signature. When an instantiated graph exists, the step first runs in Check mode: the
  // operations only stage their host arrays (at the same arena offsets as when the graph was
  // captured, where its copy nodes read them) and extend the signature; if it equals the graph's,
  // end_step launches the graph as it is, with no capture or update. Otherwise nothing has run,
  // end_step returns false, the caller runs the step again, and this time it is captured (Capture
  // mode): the capture updates the graph's parameters (cudaGraphExecUpdate; a changed topology,
  // e.g. attention starting to split its keys, instantiates anew) and is launched. Inside a
  // captured step, an operation that must wait or allocate launches what was captured so far and
  // the rest of the step runs eagerly.
  void begin_step(int64_t n_tok) override {
    if (!graphs_ || n_tok > kGraphMaxTokens) return;
    use_device();
    discard_capture();  // a step that threw before end_step
    mode_ = StepMode::Eager;
    if (stage_used_ != 0) drain();  // every step stages from offset 0
    sig_ = kSigSeed;
    if (step_exec_ && !force_capture_) {
      mode_ = StepMode::Check;
      return;
    }
    force_capture_ = false;
    SS_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    mode_ = StepMode::Capture;
  }

  bool end_step() override {
    const StepMode mode = mode_;
    mode_ = StepMode::Eager;
    if (mode == StepMode::Eager) return true;
    if (mode == StepMode::Check) {
      if (sig_ != exec_sig_) {
        force_capture_ = true;
        return false;
      }
    } else {
      cudaGraph_t g = end_capture();
      if (step_exec_) {
        cudaGraphExecUpdateResultInfo info{};
        if (cudaGraphExecUpdate(step_exec_, g, &info) != cudaSuccess) {
          cudaGetLastError();
          cudaGraphExecDestroy(step_exec_);
          step_exec_ = nullptr;
        }
      }
      const cudaError_t e = step_exec_ ? cudaSuccess : cudaGraphInstantiate(&step_exec_, g, 0);
      cudaGraphDestroy(g);
      SS_CUDA_CHECK(e);
      exec_sig_ = sig_;
    }
    SS_CUDA_CHECK(cudaGraphLaunch(step_exec_, stream_));
    ++graph_launches_;
    if (mode == StepMode::Check) ++graph_replays_;
    return true;
  }

  CudaGraphStats graph_stats() const { return {graph_launches_, graph_replays_}; }

  Weight prepare_weight(DType type, const void* host_data, int64_t rows, int64_t cols,
                        const float* host_bias) override {
    if (rows < 1 || cols < 1 || !host_data)
      throw std::invalid_argument("CUDA prepare_weight: empty " + std::to_string(rows) + "x" +
                                  std::to_string(cols) + " weight");
    leave_step("prepare_weight");
    if (cols % dtype_block_values(type) != 0)
      throw std::invalid_argument("CUDA prepare_weight: " + std::string(dtype_name(type)) +
                                  " rows of " + std::to_string(cols) +
                                  " values are not whole blocks");
    use_device();
    Weight w;
    w.type = type;
    w.rows = rows;
    w.cols = cols;
    if (type == DType::Q8_0) {
      // Split the blocks into a quant plane and a scale plane (see q8_scales_offset).
      const int64_t n_blocks = rows * cols / kQ8Block;
      const int64_t off = cuda::q8_scales_offset(rows, cols);
      std::vector<uint8_t> packed(size_t(off + n_blocks * 2));
      const auto* blocks = static_cast<const BlockQ8_0*>(host_data);
      auto* scales = reinterpret_cast<uint16_t*>(packed.data() + off);
      for (int64_t b = 0; b < n_blocks; ++b) {
        std::memcpy(packed.data() + b * kQ8Block, blocks[b].qs, kQ8Block);
        scales[b] = blocks[b].d;
      }
      void* d = alloc(packed.size());
      SS_CUDA_CHECK(cudaMemcpy(d, packed.data(), packed.size(), cudaMemcpyHostToDevice));
      w.data = d;
    } else {
      const size_t bytes = size_t(dtype_row_bytes(type, cols)) * size_t(rows);
      void* d = alloc(bytes);
      SS_CUDA_CHECK(cudaMemcpy(d, host_data, bytes, cudaMemcpyHostToDevice));
      w.data = d;
    }
    if (host_bias) {
      void* b = alloc(size_t(rows) * sizeof(float));
      SS_CUDA_CHECK(cudaMemcpy(b, host_bias, size_t(rows) * sizeof(float), cudaMemcpyHostToDevice));
      w.bias = static_cast<const float*>(b);
    }
    return w;
  }

  void matmul(const Weight& w, const float* x, int64_t n_tok, float* y) override {
    if (n_tok <= 0) return;
    if (!w.data) throw std::invalid_argument("CUDA matmul: weight has no data");
    use_device();
    const bool blocks = dtype_block_values(w.type) > 1;
    if (n_tok <= (blocks ? kQuantGemvMaxTokens : kGemvMaxTokens)) {
      if (replaying(Op::Gemv, w.type, w.data, w.rows, w.cols, w.bias, x, n_tok, y)) return;
      cuda::launch_gemv(w, x, n_tok, y, stream_);
      return;
    }
    leave_step("cuBLAS matmul");
    // Row-major W[rows][cols] is column-major W^T, so y^T = op_T(W^T) x^T in cuBLAS's terms.
    const float alpha = 1.f, beta = 0.f;
    const int m = int(w.rows), n = int(n_tok), k = int(w.cols);
    if (blocks) {
      const int64_t tile_rows = std::min<int64_t>(w.rows, std::max<int64_t>(1, kQuantTileBytes / (2 * w.cols)));
      auto* xh = static_cast<uint8_t*>(scratch(size_t(n_tok * w.cols) * 2 + size_t(tile_rows * w.cols) * 2));
      void* tile = xh + size_t(n_tok * w.cols) * 2;
      cuda::launch_convert_activations(DType::F16, x, xh, n_tok * w.cols, stream_);
      for (int64_t r0 = 0; r0 < w.rows; r0 += tile_rows) {
        const int64_t rows = std::min(tile_rows, w.rows - r0);
        cuda::launch_dequantize_f16(w, r0, rows, tile, stream_);
        SS_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), n, k, &alpha, tile, CUDA_R_16F, k,
                                     xh, CUDA_R_16F, k, &beta, y + r0, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
      }
    } else if (w.type == DType::F32) {
      SS_CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha,
                                  static_cast<const float*>(w.data), k, x, k, &beta, y, m));
    } else {
      const cudaDataType_t ty = w.type == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
      void* xh = scratch(size_t(n_tok * w.cols) * 2);
      cuda::launch_convert_activations(w.type, x, xh, n_tok * w.cols, stream_);
      SS_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, w.data, ty,
                                   k, xh, ty, k, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    }
    if (w.bias) cuda::launch_add_bias(y, w.bias, n_tok, w.rows, stream_);
  }

  void embed(const Weight& table, const int32_t* tokens, int64_t n_tok, float* out) override {
    if (n_tok <= 0) return;
    for (int64_t t = 0; t < n_tok; ++t)
      if (tokens[t] < 0 || tokens[t] >= table.rows)
        throw std::out_of_range("CUDA embed: token " + std::to_string(tokens[t]) +
                                " is outside the vocabulary of " + std::to_string(table.rows));
    use_device();
    const int32_t* d_tokens = stage(tokens, size_t(n_tok));
    if (replaying(Op::Embed, table.type, table.data, table.rows, table.cols, d_tokens, n_tok, out))
      return;
    if (dtype_block_values(table.type) > 1 && table.type != DType::Q8_0)
      cuda::launch_embed_blocks(table, d_tokens, n_tok, out, stream_);
    else
      cuda::launch_embed(table, d_tokens, n_tok, out, stream_);
  }

  void rmsnorm(float* out, const float* x, const float* w, int64_t n_tok, int64_t dim,
               float eps) override {
    use_device();
    if (replaying(Op::Rmsnorm, out, x, w, n_tok, dim, eps)) return;
    cuda::launch_rmsnorm(out, x, w, n_tok, dim, eps, stream_);
  }

  void add_rmsnorm(float* x, const float* y, float* out, const float* w, int64_t n_tok, int64_t dim,
                   float eps) override {
    use_device();
    if (replaying(Op::AddRmsnorm, x, y, out, w, n_tok, dim, eps)) return;
    cuda::launch_add_rmsnorm(x, y, out, w, n_tok, dim, eps, stream_);
  }

  void layernorm(float* out, const float* x, const float* w, const float* b, int64_t n_tok,
                 int64_t dim, float eps) override {
    use_device();
    if (replaying(Op::Layernorm, out, x, w, b, n_tok, dim, eps)) return;
    cuda::launch_layernorm(out, x, w, b, n_tok, dim, eps, stream_);
  }

  void add_layernorm(float* x, const float* y, float* out, const float* w, const float* b,
                     int64_t n_tok, int64_t dim, float eps) override {
    use_device();
    if (replaying(Op::AddLayernorm, x, y, out, w, b, n_tok, dim, eps)) return;
    cuda::launch_add_layernorm(x, y, out, w, b, n_tok, dim, eps, stream_);
  }

  void rope_and_store(const float* qkv, int64_t stride, int64_t n_tok, int n_heads, int n_kv_heads,
                      int head_dim, const int64_t* pos_win, const int64_t* pos_sink,
                      const RopeParams& p, float* q_win, float* q_sink, DType kv_type,
                      void* k_cache, void* v_cache, const int64_t* rows) override {
    if (n_tok <= 0) return;
    if (head_dim % 2 != 0)
      throw std::invalid_argument("CUDA rope: head_dim " + std::to_string(head_dim) + " is odd");
    if (stride < int64_t(n_heads + 2 * n_kv_heads) * head_dim)
      throw std::invalid_argument("CUDA rope_and_store: rows of " + std::to_string(stride) +
                                  " floats hold no q|k|v");
    check_kv_type(kv_type, int64_t(n_kv_heads) * head_dim);
    const int n_rot = p.rotated(head_dim);
    if (n_rot < 0 || n_rot > head_dim || n_rot % 2 ||
        (!p.freq_factors.empty() && p.freq_factors.size() != size_t(n_rot / 2)))
      throw std::invalid_argument("CUDA rope: " + std::to_string(n_rot) + " rotated dimensions (" +
                                  std::to_string(p.freq_factors.size()) + " factors) in heads of " +
                                  std::to_string(head_dim));
    use_device();
    const std::vector<double>& freq = rope_frequencies(head_dim, p);
    const size_t pos_bytes = staged_size(size_t(n_tok) * sizeof(int64_t));
    reserve_staging(staged_size(freq.size() * sizeof(double)) + (pos_sink ? 3 : 2) * pos_bytes);
    const double* inv = freq.empty() ? nullptr : stage(freq.data(), freq.size());
    const int64_t* d_win = stage(pos_win, size_t(n_tok));
    const int64_t* d_sink = pos_sink ? stage(pos_sink, size_t(n_tok)) : nullptr;
    const int64_t* d_rows = stage(rows, size_t(n_tok));
    float* sink_out = pos_sink ? q_sink : nullptr;
    // F32 rows are written in place; other types go through dense F32 rows (keys rotated) that
    // one more kernel converts into the cache rows.
    const int64_t kv_w = int64_t(n_kv_heads) * head_dim;
    float* k_f32 = static_cast<float*>(k_cache);
    float* v_f32 = static_cast<float*>(v_cache);
    const int64_t* rope_rows = d_rows;
    if (kv_type != DType::F32) {
      k_f32 = static_cast<float*>(scratch(size_t(2 * n_tok * kv_w) * sizeof(float)));
      v_f32 = k_f32 + n_tok * kv_w;
      rope_rows = nullptr;
    }
    if (replaying(Op::Rope, qkv, stride, n_tok, n_heads, n_kv_heads, head_dim, n_rot, d_win, d_sink,
                  inv, p.neox, q_win, sink_out, kv_type, k_cache, v_cache, k_f32, d_rows))
      return;
    cuda::launch_rope_and_store(qkv, stride, n_tok, n_heads, n_kv_heads, head_dim, n_rot, d_win,
                                d_sink, inv, p.neox, q_win, sink_out, k_f32, v_f32, rope_rows,
                                stream_);
    if (kv_type != DType::F32) {
      cuda::launch_store_kv_rows(kv_type, k_f32, n_tok, kv_w, k_cache, d_rows, stream_);
      cuda::launch_store_kv_rows(kv_type, v_f32, n_tok, kv_w, v_cache, d_rows, stream_);
    }
  }

  void activate(Activation act, float* out, const float* gate, const float* up, int64_t n_tok,
                int64_t width, int64_t in_stride) override {
    use_device();
    if (replaying(Op::Activate, act, out, gate, up, n_tok, width, in_stride)) return;
    cuda::launch_activate(act, out, gate, up, n_tok, width, in_stride, stream_);
  }

  void clamp(float* x, int64_t n, float limit) override {
    use_device();
    if (replaying(Op::Clamp, x, n, limit)) return;
    cuda::launch_clamp(x, n, limit, stream_);
  }

  void add(float* x, const float* y, int64_t n) override {
    use_device();
    if (replaying(Op::Add, x, y, n)) return;
    cuda::launch_add(x, y, n, stream_);
  }

  void sample(float* logits, int64_t n_rows, int64_t width, const SampleSpec* specs,
              int32_t* out) override {
    check_sample_specs(specs, n_rows, width);
    if (n_rows <= 0) return;
    if (width > INT32_MAX)
      throw std::invalid_argument("CUDA sample: rows of " + std::to_string(width) + " logits");
    use_device();
    leave_step("sample");
    std::vector<cuda::SampleRow> rows(static_cast<size_t>(n_rows));
    std::vector<int32_t> penalized;
    for (int64_t r = 0; r < n_rows; ++r) {
      const SampleSpec& s = specs[r];
      rows[size_t(r)] = {s.temperature, s.top_p,       s.min_p,
                         s.penalty,     s.coin,        s.top_k,
                         s.n_penalized, int64_t(penalized.size())};
      penalized.insert(penalized.end(), s.penalized, s.penalized + s.n_penalized);
    }
    reserve_staging(staged_size(penalized.size() * sizeof(int32_t)) +
                    staged_size(rows.size() * sizeof(cuda::SampleRow)));
    const int32_t* d_pen = penalized.empty() ? nullptr : stage(penalized.data(), penalized.size());
    const cuda::SampleRow* d_rows = stage(rows.data(), rows.size());
    const size_t e_bytes = (size_t(n_rows * width) * sizeof(float) + 255) / 256 * 256;
    auto* buf = static_cast<uint8_t*>(scratch(e_bytes + size_t(n_rows) * sizeof(int32_t)));
    auto* d_out = reinterpret_cast<int32_t*>(buf + e_bytes);
    cuda::launch_sample(logits, n_rows, width, d_rows, d_pen, reinterpret_cast<float*>(buf), d_out,
                        stream_);
    to_host(out, d_out, size_t(n_rows) * sizeof(int32_t));
  }

  void gather_rows(float* dst, int64_t width, const int64_t* rows, const float* src,
                   int64_t n) override {
    if (n <= 0) return;
    use_device();
    const int64_t* d_rows = stage(rows, size_t(n));
    if (replaying(Op::Gather, dst, width, d_rows, src, n)) return;
    cuda::launch_gather_rows(dst, width, d_rows, src, n, stream_);
  }

  void attention(const float* q_win, const float* q_sink, int64_t n_tok, int n_heads,
                 int n_kv_heads, int head_dim, DType kv_type, const void* k, const void* v,
                 const AttnSpan* spans, const float* alibi_slopes, float* out) override {
    if (n_tok <= 0) return;
    check_kv_type(kv_type, int64_t(n_kv_heads) * head_dim);
    int max_keys = 0;
    for (int64_t t = 0; t < n_tok; ++t) {
      const AttnSpan& s = spans[t];
      if (s.n_sink < 0 || s.n_sink > s.sink_rows || s.n_win < 0 || s.n_win > s.ring_size ||
          (s.n_win > 0 && (s.win_begin < 0 || s.win_begin >= s.ring_size)) || s.row0 < 0)
        throw std::invalid_argument("CUDA attention: span of token " + std::to_string(t) +
                                    " is inconsistent (n_sink " + std::to_string(s.n_sink) +
                                    " of " + std::to_string(s.sink_rows) + ", n_win " +
                                    std::to_string(s.n_win) + " from " +
                                    std::to_string(s.win_begin) + " in a ring of " +
                                    std::to_string(s.ring_size) + ")");
      max_keys = std::max(max_keys, s.n_sink + s.n_win);
    }
    use_device();
    const cuda::AttnShape shape{n_tok, n_heads, n_kv_heads, head_dim, max_keys};
    const cuda::AttnPlan plan = cuda::plan_attention(shape, num_sms_, smem_limit_);
    float* partials = nullptr;
    if (const int64_t nf = cuda::attention_partial_floats(shape, plan); nf > 0)
      partials = partial_buffer(size_t(nf) * sizeof(float));
    reserve_staging(staged_size(size_t(n_tok) * sizeof(AttnSpan)) +
                    (alibi_slopes ? staged_size(size_t(n_heads) * sizeof(float)) : 0));
    const AttnSpan* d_spans = stage(spans, size_t(n_tok));
    const float* d_alibi = alibi_slopes ? stage(alibi_slopes, size_t(n_heads)) : nullptr;
    if (replaying(Op::Attention, n_tok, n_heads, n_kv_heads, head_dim, max_keys, plan.split,
                  plan.n_splits, plan.smem, q_win, q_sink, kv_type, k, v, d_spans, d_alibi, partials,
                  out))
      return;
    cuda::launch_attention(shape, plan, q_win, q_sink, kv_type, k, v, d_spans, d_alibi, partials,
                           out, stream_);
  }

  static void check_kv_type(DType t, int64_t width) {
    if (!kv_type_supported(t))
      throw std::invalid_argument("CUDA backend: KV cache rows cannot be stored as " +
                                  std::string(dtype_name(t)));
    if (width % dtype_block_values(t))
      throw std::invalid_argument("CUDA backend: KV rows of " + std::to_string(width) +
                                  " values do not divide into " + std::string(dtype_name(t)) +
                                  " blocks");
  }

  // A device-to-device copy of bytes/2 counts bytes/2 read plus bytes/2 written: the traffic a
  // streaming kernel can sustain. Median of several timed copies after a warm-up.
  double measure_bandwidth(size_t bytes) override {
    const size_t half = bytes / 2 / 256 * 256;
    if (half == 0) return 0;
    use_device();
    leave_step("measure_bandwidth");
    void* a = alloc(half);
    void* b = alloc(half);
    SS_CUDA_CHECK(cudaMemsetAsync(a, 1, half, stream_));
    cudaEvent_t e0, e1;
    SS_CUDA_CHECK(cudaEventCreate(&e0));
    SS_CUDA_CHECK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int i = 0; i < 12; ++i) {
      SS_CUDA_CHECK(cudaEventRecord(e0, stream_));
      SS_CUDA_CHECK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, half, cudaMemcpyDeviceToDevice, stream_));
      SS_CUDA_CHECK(cudaEventRecord(e1, stream_));
      SS_CUDA_CHECK(cudaEventSynchronize(e1));
      float t = 0;
      SS_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 2) ms.push_back(t);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    release(a);
    release(b);
    std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
    return 2.0 * double(half) / (double(ms[ms.size() / 2]) * 1e-3);
  }

 private:
  enum class StepMode { Eager, Capture, Check };
  enum class Op : uint8_t { Copy, Copy2d, Zero, Gemv, Embed, Rmsnorm, AddRmsnorm, Layernorm,
                            AddLayernorm, Rope, Activate, Clamp, Add, Gather, Attention };
  static constexpr uint64_t kSigSeed = 0xcbf29ce484222325ull;

  // In a bracketed step: adds an operation's launch parameters to the step's signature, and
  // says whether to skip launching it (Check mode). Only scalars and pointers go in, never
  // structs, whose padding bytes are undefined.
  template <typename... A>
  bool replaying(Op op, A... args) {
    if (mode_ == StepMode::Eager) return false;
    mix(op);
    (mix(args), ...);
    return mode_ == StepMode::Check;
  }
  template <typename T>
  void mix(T v) {
    static_assert(std::is_arithmetic_v<T> || std::is_pointer_v<T> || std::is_enum_v<T>);
    unsigned char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    for (unsigned char c : b) sig_ = (sig_ ^ c) * 0x100000001b3ull;  // FNV-1a
  }

  // For operations that cannot be part of a recorded step. A captured step launches what it has
  // so far and goes on eagerly; in Check mode nothing of the step has run yet, so such a call
  // would see stale data: the caller broke the bracket.
  void leave_step(const char* op) {
    if (mode_ == StepMode::Check)
      throw std::logic_error(std::string("CUDA backend: ") + op + " inside a bracketed step");
    flush_capture();
  }

  // Waits for the stream; every staged copy has then landed and the arena is free again.
  void drain() {
    flush_capture();
    SS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    stage_used_ = 0;
    staged_.clear();
  }

  cudaGraph_t end_capture() {
    mode_ = StepMode::Eager;
    cudaGraph_t g = nullptr;
    SS_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
    return g;
  }

  // Launches the operations captured so far, once, and leaves capture mode.
  void flush_capture() {
    if (mode_ != StepMode::Capture) return;
    cudaGraph_t g = end_capture();
    cudaGraphExec_t once = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&once, g, 0);
    cudaGraphDestroy(g);
    SS_CUDA_CHECK(e);
    const cudaError_t l = cudaGraphLaunch(once, stream_);
    cudaGraphExecDestroy(once);  // freed once the launch completes
    SS_CUDA_CHECK(l);
  }

  void discard_capture() {
    if (mode_ != StepMode::Capture) return;
    mode_ = StepMode::Eager;
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(stream_, &g) == cudaSuccess && g) cudaGraphDestroy(g);
    cudaGetLastError();
  }

  void use_device() {
    int cur = -1;
    SS_CUDA_CHECK(cudaGetDevice(&cur));
    if (cur != device_) SS_CUDA_CHECK(cudaSetDevice(device_));
  }

  // Copies n host values into device memory that stays valid for the operations queued next.
  // The pinned and device arenas are bump-allocated and recycled only after the stream has
  // drained, so a copy still in flight is never overwritten.
  //
  // A forward step passes the same positions, rows and spans to every layer: an array equal to
  // one staged since the last drain reuses that device copy instead of queueing another
  // host-to-device transfer (each costs a few microseconds of stream time).
  template <typename T>
  const T* stage(const T* host, size_t n) {
    const size_t bytes = n * sizeof(T);
    // Reusing an identical array would make a bracketed step's offsets depend on the data.
    if (mode_ == StepMode::Eager)
      for (const Staged& e : staged_)
        if (e.bytes == bytes && std::memcmp(stage_host_ + e.offset, host, bytes) == 0)
          return reinterpret_cast<const T*>(stage_dev_ + e.offset);
    const size_t need = staged_size(bytes);
    reserve_staging(need);
    const size_t off = stage_used_;
    stage_used_ += need;
    std::memcpy(stage_host_ + off, host, bytes);
    // In Check mode the graph's own copy node moves the array when the step is launched.
    if (mode_ != StepMode::Check)
      SS_CUDA_CHECK(cudaMemcpyAsync(stage_dev_ + off, stage_host_ + off, bytes,
                                    cudaMemcpyHostToDevice, stream_));
    if (staged_.size() == kStagedKept) staged_.erase(staged_.begin());
    staged_.push_back({off, bytes});
    return reinterpret_cast<const T*>(stage_dev_ + off);
  }

  static size_t staged_size(size_t bytes) { return (bytes + 255) / 256 * 256; }

  // Makes room for `bytes` of staged arrays (sizes rounded by staged_size) before an operation
  // stages the first of them: draining or growing the arena between two arrays of one operation
  // would recycle the memory the first one was staged to.
  void reserve_staging(size_t bytes) {
    if (stage_used_ + bytes <= stage_cap_) return;
    drain();
    if (bytes > stage_cap_) grow_staging(std::max(bytes, 2 * stage_cap_));
  }

  void grow_staging(size_t bytes) {
    // A recorded graph copies from the old pinned buffer: the next step must be captured anew.
    force_capture_ = true;
    flush_capture();
    SS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    SS_CUDA_CHECK(cudaFreeHost(stage_host_));
    SS_CUDA_CHECK(cudaFree(stage_dev_));
    stage_host_ = nullptr;
    stage_dev_ = nullptr;
    SS_CUDA_CHECK(cudaMallocHost(&stage_host_, bytes));
    SS_CUDA_CHECK(cudaMalloc(&stage_dev_, bytes));
    stage_cap_ = bytes;
    stage_used_ = 0;
    staged_.clear();
  }

  // Grow-only device buffers; growing waits for queued work that may still read the old one.
  void* grow(void*& buf, size_t& cap, size_t bytes) {
    if (bytes <= cap) return buf;
    flush_capture();
    SS_CUDA_CHECK(cudaStreamSynchronize(stream_));
    SS_CUDA_CHECK(cudaFree(buf));
    buf = nullptr;
    cap = 0;
    SS_CUDA_CHECK(cudaMalloc(&buf, bytes));
    cap = bytes;
    return buf;
  }
  void* scratch(size_t bytes) { return grow(scratch_, scratch_cap_, bytes); }
  float* partial_buffer(size_t bytes) {
    return static_cast<float*>(grow(partials_, partials_cap_, bytes));
  }

  int device_;
  std::string name_;
  int num_sms_ = 0;
  size_t smem_limit_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::unordered_set<void*> allocs_;
  // Per-pair inverse frequencies in double, for the last parameter set seen: every layer of
  // every step asks for the same ones.
  const std::vector<double>& rope_frequencies(int head_dim, const RopeParams& p) {
    if (head_dim != freq_dim_ || p.freq_base != freq_for_.freq_base ||
        p.freq_scale != freq_for_.freq_scale || p.n_rot != freq_for_.n_rot ||
        p.freq_factors != freq_for_.freq_factors) {
      inv_freq_.resize(size_t(p.rotated(head_dim) / 2));
      for (size_t i = 0; i < inv_freq_.size(); ++i)
        inv_freq_[i] = double(rope_inv_freq(p, head_dim, int(i)));
      freq_dim_ = head_dim;
      freq_for_ = p;
    }
    return inv_freq_;
  }
  std::vector<double> inv_freq_;
  int freq_dim_ = 0;
  RopeParams freq_for_;
  bool graphs_ = false, force_capture_ = false;
  StepMode mode_ = StepMode::Eager;
  uint64_t sig_ = kSigSeed, exec_sig_ = 0;  // of this step's operations, of step_exec_'s
  cudaGraphExec_t step_exec_ = nullptr;
  int64_t graph_launches_ = 0, graph_replays_ = 0;
  void* scratch_ = nullptr;
  size_t scratch_cap_ = 0;
  void* partials_ = nullptr;
  size_t partials_cap_ = 0;
  char* stage_host_ = nullptr;
  char* stage_dev_ = nullptr;
  size_t stage_cap_ = 0;
  size_t stage_used_ = 0;
  struct Staged {
    size_t offset, bytes;
  };
  static constexpr size_t kStagedKept = 8;  // the distinct arrays of one forward step
  std::vector<Staged> staged_;
};

}  // namespace

namespace cuda {
bool pdl_enabled() {
  static const bool env_off = [] {
    const char* v = std::getenv("SINKSERVE_CUDA_PDL");
    return v && std::string(v) == "0";
  }();
  // Per device: 0 unknown, 1 supported, -1 not.
  static std::atomic<int8_t> known[64] = {};
  int dev = 0;
  if (env_off || cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  int8_t k = known[dev].load(std::memory_order_relaxed);
  if (k == 0) {
    int major = 0;
    SS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    k = major >= 9 ? 1 : -1;
    known[dev].store(k, std::memory_order_relaxed);
  }
  return k > 0;
}
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int n = cuda_device_count();
  if (n == 0) throw std::runtime_error("CUDA backend: no CUDA device is available");
  if (device < 0 || device >= n)
    throw std::runtime_error("CUDA backend: device " + std::to_string(device) +
                             " does not exist (" + std::to_string(n) + " visible)");
  return std::make_unique<CudaBackend>(device);
}

CudaGraphStats cuda_graph_stats(const Backend& backend) {
  const auto* cb = dynamic_cast<const CudaBackend*>(&backend);
  if (!cb) throw std::invalid_argument("cuda_graph_stats: " + backend.name() + " is not a CUDA backend");
  return cb->graph_stats();
}

bool cuda_compiled_in() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return n;
}
}  // namespace sinkserve
