#include "kernels/cpu/cpu_backend.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/membw.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/sample_spec.h"

namespace sinkserve::cpu {
namespace {

// Elementwise work smaller than this runs on the calling thread: waking the pool costs more.
constexpr int64_t kParallelElements = 1 << 15;

[[noreturn]] void bad_arg(const std::string& what) { throw std::invalid_argument("cpu backend: " + what); }

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, Isa isa, bool bf16_gemm)
      : kern_(kernels_for(isa)), pool_(threads), bf16_gemm_(bf16_gemm) {}

  ~CpuBackend() override {
    for (void* p : buffers_) std::free(p);
    for (const auto& [p, bytes] : weight_maps_) munmap(p, bytes);
  }

  double measure_bandwidth(size_t bytes) override { return measure_read_bandwidth(pool_, bytes); }

  std::string name() const override {
    return "cpu(" + std::string(isa_name(kern_.isa)) + ", " + std::to_string(pool_.size()) + " threads)";
  }

  // Not touched here: large allocations come straight from mmap, so pages nobody writes (an
  // oversized KV pool, say) never become resident.
  void* alloc(size_t bytes) override {
    const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, rounded);
    if (!p) throw std::bad_alloc();
    std::lock_guard lock(mu_);
    buffers_.insert(p);
    return p;
  }

  void release(void* p) override {
    if (!p) return;
    {
      std::lock_guard lock(mu_);
      if (buffers_.erase(p) == 0) bad_arg("release of a pointer this backend did not allocate");
    }
    std::free(p);
  }

  void to_device(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
  void zero(void* dst, size_t bytes) override { std::memset(dst, 0, bytes); }
  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
               size_t rows) override {
    for (size_t i = 0; i < rows; ++i)
      std::memmove(static_cast<uint8_t*>(dst) + i * dst_pitch,
                   static_cast<const uint8_t*>(src) + i * src_pitch, width);
  }

  Weight prepare_weight(DType type, const void* host_data, int64_t rows, int64_t cols,
                        const float* host_bias) override {
    if (!host_data) bad_arg("prepare_weight: null data");
    if (rows <= 0 || cols <= 0)
      bad_arg("prepare_weight: bad shape " + std::to_string(rows) + "x" + std::to_string(cols));
    if (cols % dtype_block_values(type) != 0)
      bad_arg("prepare_weight: " + std::string(dtype_name(type)) + " needs columns in multiples of " +
              std::to_string(dtype_block_values(type)) + ", got " + std::to_string(cols));
    // Decode streams every weight once per token. Read through the 4 KiB pages of a file mapping,
    // page walks cost a good part of the memory bandwidth; a copy in transparent huge pages does
    // not pay them, and holds only the rows and columns this rank was given.
    const size_t bytes = size_t(rows) * size_t(dtype_row_bytes(type, cols));
    const size_t bias_at = (bytes + 63) / 64 * 64;  // the bias follows the matrix, aligned
    const size_t total = bias_at + (host_bias ? size_t(rows) * sizeof(float) : 0);
    void* mem;
    if (total < kHugePage) {  // small weights would waste most of a huge page
      mem = alloc(total);
    } else {
      const size_t mapped = (total + kHugePage - 1) / kHugePage * kHugePage;
      mem = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (mem == MAP_FAILED) throw std::bad_alloc();
      madvise(mem, mapped, MADV_HUGEPAGE);
      std::lock_guard lock(mu_);
      weight_maps_.emplace_back(mem, mapped);
    }
    auto* dst = static_cast<uint8_t*>(mem);
    const auto* src = static_cast<const uint8_t*>(host_data);
    constexpr size_t kPiece = size_t(1) << 20;
    pool_.parallel_for(int64_t((bytes + kPiece - 1) / kPiece), [&](int64_t b, int64_t e) {
      const size_t lo = size_t(b) * kPiece, hi = std::min(bytes, size_t(e) * kPiece);
      std::memcpy(dst + lo, src + lo, hi - lo);
    });
    float* bias = nullptr;
    if (host_bias) {
      bias = reinterpret_cast<float*>(dst + bias_at);
      std::memcpy(bias, host_bias, size_t(rows) * sizeof(float));
    }
    return Weight{type, dst, rows, cols, bias};
  }

  void matmul(const Weight& w, const float* x, int64_t n_tok, float* y) override {
    if (n_tok < 0) bad_arg("matmul: negative token count");
    if (!w.data) bad_arg("matmul: weight has no data");
    cpu::matmul(kern_, pool_, w, x, n_tok, y, scratch_, bf16_gemm_);
  }

  void embed(const Weight& table, const int32_t* tokens, int64_t n_tok, float* out) override {
    for (int64_t t = 0; t < n_tok; ++t)
      if (tokens[t] < 0 || tokens[t] >= table.rows)
        throw std::out_of_range("cpu backend: embed: token id " + std::to_string(tokens[t]) +
                                " outside the vocabulary of " + std::to_string(table.rows));
    const size_t row_bytes = size_t(dtype_row_bytes(table.type, table.cols));
    for (int64_t t = 0; t < n_tok; ++t)
      kern_.decode_row(table.type, static_cast<const char*>(table.data) + size_t(tokens[t]) * row_bytes, 0,
                       table.cols, out + t * table.cols);
  }

  void rmsnorm(float* out, const float* x, const float* w, int64_t n_tok, int64_t dim, float eps) override {
    if (dim <= 0) bad_arg("rmsnorm: dimension must be positive");
    for_rows(n_tok, dim, [&](int64_t t) { kern_.rmsnorm_row(out + t * dim, x + t * dim, w, dim, eps); });
  }

  void add_rmsnorm(float* x, const float* y, float* out, const float* w, int64_t n_tok, int64_t dim,
                   float eps) override {
    if (dim <= 0) bad_arg("add_rmsnorm: dimension must be positive");
    for_rows(n_tok, dim, [&](int64_t t) {
      kern_.add(x + t * dim, y + t * dim, dim);
      kern_.rmsnorm_row(out + t * dim, x + t * dim, w, dim, eps);
    });
  }

  void layernorm(float* out, const float* x, const float* w, const float* b, int64_t n_tok, int64_t dim,
                 float eps) override {
    if (dim <= 0) bad_arg("layernorm: dimension must be positive");
    for_rows(n_tok, dim, [&](int64_t t) { kern_.layernorm_row(out + t * dim, x + t * dim, w, b, dim, eps); });
  }

  void add_layernorm(float* x, const float* y, float* out, const float* w, const float* b, int64_t n_tok,
                     int64_t dim, float eps) override {
    if (dim <= 0) bad_arg("add_layernorm: dimension must be positive");
    for_rows(n_tok, dim, [&](int64_t t) {
      kern_.add(x + t * dim, y + t * dim, dim);
      kern_.layernorm_row(out + t * dim, x + t * dim, w, b, dim, eps);
    });
  }

  // Angles from the exact 64-bit position, reduced modulo 2*pi in extended precision before the
  // double sin/cos: a float angle loses all precision past position 2^24, and even a double
  // product pos * freq is off by ~1e-4 rad at position 2^40, enough to move logits. Streams here
  // run forever, and their positions must not matter.
  void rope_and_store(const float* qkv, int64_t stride, int64_t n_tok, int n_heads, int n_kv_heads,
                      int head_dim, const int64_t* pos_win, const int64_t* pos_sink,
                      const RopeParams& p, float* q_win, float* q_sink, DType kv_type, void* k_cache,
                      void* v_cache, const int64_t* rows) override {
    check_kv_type(kv_type, int64_t(n_kv_heads) * head_dim);
    if (head_dim <= 0 || head_dim % 2) bad_arg("rope: head_dim must be even, got " + std::to_string(head_dim));
    const int n_rot = p.rotated(head_dim);
    if (n_rot < 0 || n_rot > head_dim || n_rot % 2)
      bad_arg("rope: " + std::to_string(n_rot) + " rotated dimensions in heads of " + std::to_string(head_dim));
    if (!p.freq_factors.empty() && p.freq_factors.size() != size_t(n_rot / 2))
      bad_arg("rope: " + std::to_string(p.freq_factors.size()) + " frequency factors for " +
              std::to_string(n_rot / 2) + " rotated pairs");
    const int64_t q_w = int64_t(n_heads) * head_dim, kv_w = int64_t(n_kv_heads) * head_dim;
    if (stride < q_w + 2 * kv_w) bad_arg("rope_and_store: rows of " + std::to_string(stride) + " floats hold no q|k|v");
    const int half = n_rot / 2;
    const std::vector<long double>& inv_freq = rope_frequencies(head_dim, p);
    const long double two_pi = 6.283185307179586476925286766559L;
    const int64_t pair_stride = p.neox ? 1 : 2, offset = p.neox ? half : 1;
    const size_t row_bytes = size_t(dtype_row_bytes(kv_type, kv_w));
    auto* k_rows = static_cast<uint8_t*>(k_cache);
    auto* v_rows = static_cast<uint8_t*>(v_cache);
    for_row_ranges(n_tok, stride, [&](int64_t first, int64_t end) {
      std::vector<double> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
      std::vector<float> k_row(static_cast<size_t>(kv_w));
      auto angles = [&](int64_t pos) {
        for (int i = 0; i < half; ++i) {
          const double theta = double(std::fmod((long double)pos * inv_freq[size_t(i)], two_pi));
          c[size_t(i)] = std::cos(theta);
          s[size_t(i)] = std::sin(theta);
        }
      };
      // The pass-through dimensions [n_rot, head_dim) are copied first, then the pairs rotated.
      auto rotate = [&](const float* src, float* dst, int heads) {
        for (int h = 0; h < heads; ++h) {
          const int64_t base = int64_t(h) * head_dim;
          std::memcpy(dst + base + n_rot, src + base + n_rot, size_t(head_dim - n_rot) * sizeof(float));
          for (int i = 0; i < half; ++i) {
            const int64_t a = base + i * pair_stride, b = a + offset;
            const double x0 = src[a], x1 = src[b];
            dst[a] = float(x0 * c[size_t(i)] - x1 * s[size_t(i)]);
            dst[b] = float(x0 * s[size_t(i)] + x1 * c[size_t(i)]);
          }
        }
      };
      for (int64_t t = first; t < end; ++t) {
        const float* row = qkv + t * stride;
        angles(pos_win[t]);
        rotate(row, q_win + t * q_w, n_heads);
        // Keys rotate in F32 and are then stored; values are stored as they are.
        rotate(row + q_w, k_row.data(), n_kv_heads);
        quantize_row(kv_type, k_row.data(), k_rows + size_t(rows[t]) * row_bytes, kv_w);
        quantize_row(kv_type, row + q_w + kv_w, v_rows + size_t(rows[t]) * row_bytes, kv_w);
        if (pos_sink) {
          angles(pos_sink[t]);
          rotate(row, q_sink + t * q_w, n_heads);
        }
      }
    });
  }

  // Per-pair frequencies, computed once per parameter set: powl is slow on a hot path.
  const std::vector<long double>& rope_frequencies(int head_dim, const RopeParams& p) {
    if (head_dim != freq_dim_ || p.freq_base != freq_for_.freq_base || p.freq_scale != freq_for_.freq_scale ||
        p.n_rot != freq_for_.n_rot || p.freq_factors != freq_for_.freq_factors) {
      freq_.resize(size_t(p.rotated(head_dim) / 2));
      for (size_t i = 0; i < freq_.size(); ++i) freq_[i] = rope_inv_freq(p, head_dim, int(i));
      freq_dim_ = head_dim;
      freq_for_ = p;
    }
    return freq_;
  }
  std::vector<long double> freq_;
  int freq_dim_ = 0;
  RopeParams freq_for_;

  void activate(Activation act, float* out, const float* gate, const float* up, int64_t n_tok, int64_t width,
                int64_t in_stride) override {
    // Ranges over the flat output, split where they cross a row.
    for_range(n_tok * width, [&](int64_t b, int64_t e) {
      while (b < e) {
        const int64_t t = b / width, i = b % width, n = std::min(e - b, width - i);
        kern_.activate(act, out + b, gate + t * in_stride + i, up ? up + t * in_stride + i : nullptr, n);
        b += n;
      }
    });
  }

  void clamp(float* x, int64_t n, float limit) override {
    for_range(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) x[i] = std::min(std::max(x[i], -limit), limit);
    });
  }

  void add(float* x, const float* y, int64_t n) override {
    for_range(n, [&](int64_t b, int64_t e) { kern_.add(x + b, y + b, e - b); });
  }

  void sample(float* logits, int64_t n_rows, int64_t width, const SampleSpec* specs,
              int32_t* out) override {
    check_sample_specs(specs, n_rows, width);
    for (int64_t r = 0; r < n_rows; ++r) out[r] = sample_row(logits + r * width, width, specs[r]);
  }

  void gather_rows(float* dst, int64_t width, const int64_t* rows, const float* src, int64_t n) override {
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(dst + i * width, src + rows[i] * width, size_t(width) * sizeof(float));
  }

  // Two passes per (token, KV head): scores of its query heads for every visible key, then a
  // max-subtracted softmax per head and the weighted sums of values, both over tiles of
  // kAttnTile keys. Each K and V row is read and converted to F32 once for all the query heads
  // sharing it (8 under Llama-style GQA), not once per head: at long windows the rows are most
  // of what a step reads; and a tile's scores come out of one vector per head, not one dot
  // product (and its horizontal sum) per key.
  void attention(const float* q_win, const float* q_sink, int64_t n_tok, int n_heads, int n_kv_heads,
                 int head_dim, DType kv_type, const void* k, const void* v, const AttnSpan* spans,
                 const float* alibi_slopes, float* out) override {
    check_kv_type(kv_type, int64_t(n_kv_heads) * head_dim);
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads)
      bad_arg("attention: " + std::to_string(n_heads) + " query heads do not group evenly over " +
              std::to_string(n_kv_heads) + " KV heads");
    int64_t max_keys = 0;
    for (int64_t t = 0; t < n_tok; ++t) {
      const AttnSpan& s = spans[t];
      if (s.n_sink < 0 || s.n_sink > s.sink_rows || s.n_win < 0 || s.n_win > s.ring_size ||
          (s.n_win > 0 && (s.win_begin < 0 || s.win_begin >= s.ring_size)) || s.row0 < 0)
        bad_arg("attention: inconsistent span for token " + std::to_string(t) + " (sink " +
                std::to_string(s.n_sink) + "/" + std::to_string(s.sink_rows) + ", window " +
                std::to_string(s.n_win) + " from " + std::to_string(s.win_begin) + " in a ring of " +
                std::to_string(s.ring_size) + ")");
      max_keys = std::max<int64_t>(max_keys, int64_t(s.n_sink) + s.n_win);
    }
    const int group = n_heads / n_kv_heads;
    const int64_t q_row = int64_t(n_heads) * head_dim;
    const size_t row_bytes = size_t(dtype_row_bytes(kv_type, int64_t(n_kv_heads) * head_dim));
    const auto* k_rows = static_cast<const uint8_t*>(k);
    const auto* v_rows = static_cast<const uint8_t*>(v);
    const float scale = 1.0f / std::sqrt(float(head_dim));
    // A group is split into runs of query heads only when whole groups would leave threads idle
    // (one decoding token over few KV heads, e.g. MQA).
    int run = group;
    while (run % 2 == 0 && n_tok * n_kv_heads * (group / run) < 2 * int64_t(pool_.size())) run /= 2;
    const int runs = group / run;
    const bool f32 = kv_type == DType::F32;
    pool_.parallel_for(n_tok * n_kv_heads * runs, [&](int64_t b, int64_t e) {
      // Grow-only per thread: scores[g * max_keys + j] of the run's heads, their maxima and sums,
      // a tile of keys (dimension-major) and of values (key-major) as F32, and one converted row.
      thread_local std::vector<float> scores, stats, buf;
      if (scores.size() < size_t(run * max_keys)) scores.resize(size_t(run * max_keys));
      if (stats.size() < size_t(2 * run)) stats.resize(size_t(2 * run));
      if (buf.size() < size_t((2 * kAttnTile + 1) * head_dim)) buf.resize(size_t((2 * kAttnTile + 1) * head_dim));
      float* mx = stats.data();
      float* sum = stats.data() + run;
      float* kt = buf.data();
      float* vt = kt + kAttnTile * head_dim;
      float* row = vt + kAttnTile * head_dim;
      for (int64_t idx = b; idx < e; ++idx) {
        const int64_t t = idx / (int64_t(n_kv_heads) * runs);
        const int kvh = int(idx / runs % n_kv_heads);
        const int h0 = kvh * group + int(idx % runs) * run;
        const AttnSpan& s = spans[t];
        const int64_t kv_off = int64_t(kvh) * head_dim;
        const float* qs = q_sink + t * q_row + int64_t(h0) * head_dim;
        const float* qw = q_win + t * q_row + int64_t(h0) * head_dim;
        float* o = out + t * q_row + int64_t(h0) * head_dim;
        const int64_t n = int64_t(s.n_sink) + s.n_win;
        auto key_row = [&](int64_t j) {
          return j < s.n_sink ? s.row0 + j : s.row0 + s.sink_rows + (s.win_begin + (j - s.n_sink)) % s.ring_size;
        };
        auto values = [&](const uint8_t* rows, int64_t j, float* dst) -> const float* {
          const uint8_t* r = rows + size_t(key_row(j)) * row_bytes;
          if (f32) return reinterpret_cast<const float*>(r) + kv_off;
          kern_.kv_row(kv_type, r, kv_off, head_dim, dst);
          return dst;
        };
        std::fill(mx, mx + run, -INFINITY);
        for (int64_t j0 = 0; j0 < n; j0 += kAttnTile) {
          const int nk = int(std::min<int64_t>(kAttnTile, n - j0));
          for (int jj = 0; jj < kAttnTile; ++jj) {
            const float* kf = jj < nk ? values(k_rows, j0 + jj, row) : nullptr;
            for (int64_t d = 0; d < head_dim; ++d) kt[d * kAttnTile + jj] = kf ? kf[d] : 0.0f;
          }
          // Sink keys are scored with the query rotated for the sinks' positions, window keys
          // with the window's: a tile across the boundary takes each lane from its own.
          const bool sinks = j0 < s.n_sink, window = j0 + nk > s.n_sink;
          alignas(64) float part_sink[kAttnTile], part_win[kAttnTile];
          for (int g = 0; g < run; ++g) {
            if (sinks) kern_.attn_scores(qs + int64_t(g) * head_dim, kt, head_dim, part_sink);
            if (window) kern_.attn_scores(qw + int64_t(g) * head_dim, kt, head_dim, part_win);
            const float slope = alibi_slopes ? alibi_slopes[h0 + g] : 0.0f;
            for (int jj = 0; jj < nk; ++jj) {
              const int64_t j = j0 + jj;
              const float v = (j < s.n_sink ? part_sink[jj] : part_win[jj]) * scale - slope * float(n - 1 - j);
              scores[size_t(g * max_keys + j)] = v;
              mx[g] = std::max(mx[g], v);
            }
          }
        }
        std::memset(o, 0, size_t(run) * size_t(head_dim) * sizeof(float));
        if (n == 0) continue;
        for (int g = 0; g < run; ++g) sum[g] = kern_.exp_sum(scores.data() + size_t(g * max_keys), n, mx[g]);
        for (int64_t j0 = 0; j0 < n; j0 += kAttnTile) {
          const int nk = int(std::min<int64_t>(kAttnTile, n - j0));
          for (int jj = 0; jj < nk; ++jj) {
            const float* vf = values(v_rows, j0 + jj, vt + jj * head_dim);
            if (vf != vt + jj * head_dim) std::memcpy(vt + jj * head_dim, vf, size_t(head_dim) * sizeof(float));
          }
          for (int g = 0; g < run; ++g)
            kern_.attn_values(scores.data() + size_t(g * max_keys + j0), vt, nk, head_dim, o + int64_t(g) * head_dim);
        }
        for (int g = 0; g < run; ++g) kern_.scale(o + int64_t(g) * head_dim, 1.0f / sum[g], head_dim);
      }
    });
  }

 private:
  static void check_kv_type(DType t, int64_t width) {
    if (!kv_type_supported(t)) bad_arg("KV cache rows cannot be stored as " + std::string(dtype_name(t)));
    if (width % dtype_block_values(t))
      bad_arg("KV rows of " + std::to_string(width) + " values do not divide into " + std::string(dtype_name(t)) +
              " blocks of " + std::to_string(dtype_block_values(t)));
  }

  // fn(b, e) over ranges of rows, on the pool when the rows hold enough work.
  template <class F>
  void for_row_ranges(int64_t n_rows, int64_t row_len, F&& fn) {
    if (n_rows * row_len < kParallelElements) {
      if (n_rows > 0) fn(int64_t(0), n_rows);
    } else {
      pool_.parallel_for(n_rows, fn);
    }
  }
  template <class F>
  void for_rows(int64_t n_rows, int64_t row_len, F&& fn) {
    for_row_ranges(n_rows, row_len, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) fn(t);
    });
  }

  // Splits [0, n) into cache-line aligned pieces so neighbouring threads never share a line.
  template <class F>
  void for_range(int64_t n, F&& fn) {
    if (n < kParallelElements) {
      if (n > 0) fn(0, n);
      return;
    }
    constexpr int64_t kPiece = 4096;
    pool_.parallel_for((n + kPiece - 1) / kPiece,
                       [&](int64_t b, int64_t e) { fn(b * kPiece, std::min(n, e * kPiece)); });
  }

  const Kernels& kern_;
  static constexpr size_t kHugePage = size_t(2) << 20;
  std::vector<std::pair<void*, size_t>> weight_maps_;  // prepared weights, unmapped at destruction
  ThreadPool pool_;
  bool bf16_gemm_;
  Scratch scratch_;
  std::mutex mu_;
  std::unordered_set<void*> buffers_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, Isa isa, bool bf16_gemm) {
  return std::make_unique<CpuBackend>(threads, isa, bf16_gemm);
}

}  // namespace sinkserve::cpu

namespace sinkserve {

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return cpu::make_cpu_backend(threads, cpu::best_isa());
}

}  // namespace sinkserve
