// The compute interface the forward pass is written against. A backend owns a memory space (host
// memory for the CPU, device memory for CUDA) and runs every operation of a Llama-family forward
// pass on buffers in that space. Shapes and raw buffers in, results out: nothing here knows about
// models, sessions or caches beyond the plain descriptors below.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/dtype.h"

namespace sinkserve {

// A weight matrix in backend memory: rows = output features, cols = input features, row-major
// (GGUF's ne0 is cols). bias (rows floats, backend memory) may be null.
struct Weight {
  DType type = DType::F32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* bias = nullptr;
};

// Which cached keys one query token attends to. A cache slot is `sink_rows` rows of attention
// sinks followed by a ring of `ring_size` rows; row r of the slot is row `row0 + r` of the layer
// buffer. The query sees the first `n_sink` sink rows, scored with its sink-rotated query, and
// `n_win` ring rows starting at ring index `win_begin` (wrapping), scored with its window-rotated
// query. docs/design.md derives why two rotations make this equal to re-rotating the cache.
struct AttnSpan {
  int64_t row0 = 0;
  int32_t sink_rows = 0;
  int32_t n_sink = 0;
  int32_t ring_size = 0;
  int32_t win_begin = 0;
  int32_t n_win = 0;
};

// Rotary embedding of the first `n_rot` dimensions of each head (d = n_rot, i < d/2):
//   angle_i = pos * freq_scale * base^(-2i/d) / freq_factors[i]
// NORM style rotates pairs (2i, 2i + 1), NEOX style pairs (i, i + d/2); dimensions from n_rot on
// pass through unrotated (partial rotary: Pythia, Phi-2, GPT-J, StableLM).
struct RopeParams {
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;  // linear scaling
  bool neox = false;
  int n_rot = -1;           // rotated dimensions per head: -1 = all, 0 = none (ALiBi models)
  std::vector<float> freq_factors;  // Llama-3's rope_freqs, one per pair; empty = all 1
  // Rotated dimensions of a head of head_dim values.
  int rotated(int head_dim) const { return n_rot < 0 ? head_dim : n_rot; }
};
// The inverse frequency of pair i as above, in extended precision: positions of endless streams
// grow without bound, and the angle is reduced modulo 2*pi from it.
long double rope_inv_freq(const RopeParams& p, int head_dim, int i);

// Activation functions of the feed-forward block. GeluTanh is the tanh approximation
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), GeluErf the exact 0.5 x (1 + erf(x / sqrt 2)).
enum class Activation : uint8_t { Silu, GeluTanh, GeluErf };
std::string_view activation_name(Activation a);

// How one row of logits becomes a token. In order: the logits of the `penalized` tokens are
// divided (positive) or multiplied (negative) by `penalty`; temperature 0 takes the argmax (lowest
// index on ties); otherwise the logits are divided by the temperature, only the top_k largest are
// kept (0 = all; ties at the boundary keep the lowest indices), then only tokens whose probability
// is at least min_p times the largest, then the nucleus: the most probable tokens whose mass
// first exceeds top_p (top_p 0 or 1 = all; ties at its boundary all stay). The draw walks the
// kept tokens in vocabulary order and returns the first whose cumulative probability exceeds
// `coin` (uniform in [0, 1)). NaN logits count as -inf; a row with no finite logit gives -1.
struct SampleSpec {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float penalty = 1.0f;
  const int32_t* penalized = nullptr;  // host array of n_penalized distinct token ids
  int32_t n_penalized = 0;
  float coin = 0.0f;
};

// The types a KV cache row may be stored in: F32, F16, BF16, or Q8_0 (blocks of 32 values along
// the row, one F16 scale each; the row width must be a multiple of 32).
bool kv_type_supported(DType t);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Memory in this backend's space. Buffers live until release() or the backend's destruction.
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) = 0;
  virtual void to_device(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* dst, size_t bytes) = 0;
  // Copies `rows` rows of `width` bytes: row i from src + i * src_pitch to dst + i * dst_pitch.
  virtual void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                       size_t width, size_t rows) = 0;

  // Bracket the operations of one forward step of n_tok tokens, a step that recurs with the same
  // shapes (decode), so that a backend may record them and launch them as one unit (CUDA
  // Graphs). Inside the bracket only compute operations and copies between backend buffers may
  // be called. end_step() returning false means that nothing of the step ran (the recorded unit
  // did not fit it): the caller runs the same operations again, bracketed. Other backends ignore
  // the brackets.
  virtual void begin_step(int64_t n_tok) { (void)n_tok; }
  virtual bool end_step() { return true; }

  // Makes a weight usable by matmul from host memory (e.g. an mmapped GGUF tensor). Backends copy
  // (and may repack) the data into their own memory -- CPU: huge pages, CUDA: the device -- so the
  // host memory may be released afterwards. bias may be null.
  virtual Weight prepare_weight(DType type, const void* host_data, int64_t rows, int64_t cols,
                                const float* host_bias) = 0;

  // y[t][r] = sum_c W[r][c] * x[t][c] (+ bias[r]) for t < n_tok. F32 accumulation.
  virtual void matmul(const Weight& w, const float* x, int64_t n_tok, float* y) = 0;
  // out[t] = row tokens[t] of the table, as F32. tokens is a host array.
  virtual void embed(const Weight& table, const int32_t* tokens, int64_t n_tok, float* out) = 0;
  // out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, rows of length dim.
  virtual void rmsnorm(float* out, const float* x, const float* w, int64_t n_tok, int64_t dim,
                       float eps) = 0;
  // x += y, then out = rmsnorm(x) as above: the residual add fused with the next norm.
  virtual void add_rmsnorm(float* x, const float* y, float* out, const float* w, int64_t n_tok,
                           int64_t dim, float eps) = 0;
  // out[t] = (x[t] - mean) / sqrt(var + eps) * w + b (biased variance), rows of length dim; b may
  // be null (no bias).
  virtual void layernorm(float* out, const float* x, const float* w, const float* b, int64_t n_tok,
                         int64_t dim, float eps) = 0;
  // x += y, then out = layernorm(x).
  virtual void add_layernorm(float* x, const float* y, float* out, const float* w, const float* b,
                             int64_t n_tok, int64_t dim, float eps) = 0;
  // The rotary embedding and cache write of a step's fresh projections. Row t of qkv (rows
  // `stride` floats apart) holds q (n_heads heads of head_dim), then k and v (n_kv_heads heads
  // each). q rotated to position pos_win[t] goes to row t of q_win and, unless pos_sink is null,
  // q rotated to pos_sink[t] to row t of q_sink; k rotated to pos_win[t] and v go to row rows[t]
  // of k_cache and v_cache (rows of n_kv_heads * head_dim values stored as kv_type, see
  // kv_type_supported). pos_win, pos_sink and rows are host arrays. Angles are computed in double
  // from the 64-bit position, and keys are rotated in F32 before they are stored. Only the first
  // p.rotated(head_dim) dimensions of each head rotate; the rest are copied.
  virtual void rope_and_store(const float* qkv, int64_t stride, int64_t n_tok, int n_heads,
                              int n_kv_heads, int head_dim, const int64_t* pos_win,
                              const int64_t* pos_sink, const RopeParams& p, float* q_win,
                              float* q_sink, DType kv_type, void* k_cache, void* v_cache,
                              const int64_t* rows) = 0;
  // out[t][i] = act(gate[t][i]) * up[t][i] for t < n_tok, i < width (SwiGLU, GeGLU), or
  // act(gate[t][i]) when up is null. out rows are `width` apart, gate and up rows `in_stride`
  // apart (so both can be halves of one fused gate|up row). out may be gate when up is null.
  virtual void activate(Activation act, float* out, const float* gate, const float* up,
                        int64_t n_tok, int64_t width, int64_t in_stride) = 0;
  // x = min(max(x, -limit), limit) over n values (MPT's clamp_kqv).
  virtual void clamp(float* x, int64_t n, float limit) = 0;
  // x += y over n values.
  virtual void add(float* x, const float* y, int64_t n) = 0;
  // dst row i = src row rows[i] (rows of `width` floats), for i < n. rows is a host array.
  virtual void gather_rows(float* dst, int64_t width, const int64_t* rows, const float* src,
                           int64_t n) = 0;
  // Causal softmax attention for n_tok query tokens. q_win/q_sink/out: [n_tok][n_heads*head_dim];
  // k/v: the layer's cache, rows of n_kv_heads*head_dim values stored as kv_type (read in place:
  // scores and the weighted sum accumulate in F32); query head h reads KV head
  // h / (n_heads / n_kv_heads). spans: host array of n_tok descriptors. Scale 1/sqrt(head_dim).
  // With ALiBi (alibi_slopes: host array of n_heads slopes, else null), head h adds
  // -slope[h] * (n - 1 - j) to the score of the token's key j of n (sinks first, then the window):
  // the distance inside the cache, since the token itself is its last key.
  virtual void attention(const float* q_win, const float* q_sink, int64_t n_tok, int n_heads,
                         int n_kv_heads, int head_dim, DType kv_type, const void* k,
                         const void* v, const AttnSpan* spans, const float* alibi_slopes,
                         float* out) = 0;

  // Draws one token per row of logits ([n_rows][width], may be modified in place) as `specs`
  // (host array, one per row) describe; writes the tokens to host array `out` and waits for them.
  virtual void sample(float* logits, int64_t n_rows, int64_t width, const SampleSpec* specs,
                      int32_t* out) = 0;

  // Sustained read bandwidth of this backend's memory in bytes/s, measured over a buffer of
  // `bytes`: the roofline a memory-bound decode step is compared against. 0 when unknown.
  virtual double measure_bandwidth(size_t bytes) { (void)bytes; return 0; }

  // Bytes alloc() could still hand out when this backend's memory is not the host's (CUDA: the
  // device's free memory); -1 for host memory, which the operating system accounts for.
  virtual int64_t memory_available() { return -1; }
};

// The CPU backend with `threads` worker threads (0 = one per core), pinned to distinct cores.
std::unique_ptr<Backend> make_cpu_backend(int threads);
// The CUDA backend on device `device`; throws std::runtime_error when CUDA is not compiled in or
// no usable device exists.
std::unique_ptr<Backend> make_cuda_backend(int device);
bool cuda_compiled_in();
int cuda_device_count();  // 0 when not compiled in or no driver

}  // namespace sinkserve
