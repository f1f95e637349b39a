// Every operation of the CUDA backend against a plain scalar reference written here, in double, on
// random inputs: odd sizes, every weight type, both matmul paths, and attention over wrapped rings
// with sinks and GQA. Without a CUDA device the binary reports itself skipped (exit code 77).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "cache/kv_cache.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "tests/backend_io.h"
#include "tests/cache_config.h"
#include "tests/fused_op_checks.h"
#include "tests/sample_op_checks.h"

namespace sinkserve {
namespace {

using Vec = std::vector<float>;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

Vec random_vec(std::mt19937& rng, size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  Vec v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// ||a - b|| / ||b||; NaN anywhere (an unwritten, poisoned output) makes it infinite.
double rel_err(const Vec& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override { be_ = make_cuda_backend(0); }

  float* upload(const Vec& v) { return test::to_backend(*be_, v); }
  // A device buffer of n floats, filled with NaN so that unwritten outputs fail the comparison.
  float* poisoned(size_t n) { return upload(Vec(n, kNaN)); }
  Vec download(const float* p, size_t n) { return test::from_backend(*be_, p, n); }

  std::unique_ptr<Backend> be_;
  std::mt19937 rng_{20240611};
};

// ---------------------------------------------------------------------------------------------
// matmul

struct HostWeight {
  std::vector<uint8_t> bytes;
  std::vector<double> deq;  // rows x cols, exactly what the stored weight means
};

HostWeight make_weight(std::mt19937& rng, DType t, int64_t rows, int64_t cols) {
  HostWeight w;
  const Vec f = random_vec(rng, size_t(rows * cols));
  w.bytes.resize(static_cast<size_t>(dtype_row_bytes(t, cols) * rows));
  Vec row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* dst = w.bytes.data() + r * dtype_row_bytes(t, cols);
    quantize_row(t, f.data() + r * cols, dst, cols);
    dequantize_row(t, dst, row.data(), cols);
    w.deq.insert(w.deq.end(), row.begin(), row.end());
  }
  return w;
}

TEST_F(CudaTest, MatmulMatchesReferenceForEveryTypeShapeAndBatch) {
  struct Shape { int64_t rows, cols; };
  // Widths: aligned for 16-byte loads, odd (scalar path), and large.
  const Shape shapes[] = {{1, 32}, {37, 64}, {129, 96}, {33, 100}, {5, 7}, {1000, 4096}, {4099, 288}};
  const int64_t batches[] = {1, 2, 3, 5, 8, 9, 16, 33, 300};
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0}) {
    for (const Shape& s : shapes) {
      if (s.cols % dtype_block_values(t)) continue;
      const HostWeight hw = make_weight(rng_, t, s.rows, s.cols);
      const Vec bias = random_vec(rng_, size_t(s.rows));
      for (bool with_bias : {false, true}) {
        const Weight w = be_->prepare_weight(t, hw.bytes.data(), s.rows, s.cols,
                                             with_bias ? bias.data() : nullptr);
        for (int64_t n : batches) {
          if (s.rows * s.cols > 1'000'000 && n > 33) continue;  // keep the reference quick
          const Vec x = random_vec(rng_, size_t(n * s.cols));
          float* dx = upload(x);
          float* dy = poisoned(static_cast<size_t>(n * s.rows));
          be_->matmul(w, dx, n, dy);
          const Vec y = download(dy, size_t(n * s.rows));
          std::vector<double> ref(static_cast<size_t>(n * s.rows));
          for (int64_t i = 0; i < n; ++i)
            for (int64_t r = 0; r < s.rows; ++r) {
              double acc = with_bias ? bias[size_t(r)] : 0.0;
              for (int64_t c = 0; c < s.cols; ++c)
                acc += hw.deq[size_t(r * s.cols + c)] * x[size_t(i * s.cols + c)];
              ref[size_t(i * s.rows + r)] = acc;
            }
          // Up to 2 tokens (Q8_0: 8) the GEMV kernel multiplies in F32 exactly; larger batches
          // go to cuBLAS with the activations rounded to the weight's type (Q8_0: F16 tiles).
          double tol = 2e-6;
          if (n > 2 && t == DType::F16) tol = 2e-3;
          if (n > 8 && t == DType::Q8_0) tol = 2e-3;
          if (n > 2 && t == DType::BF16) tol = 1.5e-2;
          EXPECT_LT(rel_err(y, ref), tol) << dtype_name(t) << " " << s.rows << "x" << s.cols
                                          << " n_tok " << n << (with_bias ? " +bias" : "");
          be_->release(dx);
          be_->release(dy);
        }
      }
    }
  }
}

TEST_F(CudaTest, PrepareWeightRejectsPartialQ8Blocks) {
  std::vector<uint8_t> junk(1024);
  EXPECT_THROW(be_->prepare_weight(DType::Q8_0, junk.data(), 2, 48, nullptr), std::invalid_argument);
  EXPECT_THROW(be_->prepare_weight(DType::F16, junk.data(), 0, 8, nullptr), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// embed, rmsnorm, add_rmsnorm, layernorms, rope_and_store, activations, add, rows

TEST_F(CudaTest, EmbedReturnsDequantizedRowsForEveryType) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0}) {
    const int64_t vocab = 77, dim = t == DType::Q8_0 ? 96 : 13;
    const HostWeight hw = make_weight(rng_, t, vocab, dim);
    const Weight w = be_->prepare_weight(t, hw.bytes.data(), vocab, dim, nullptr);
    const std::vector<int32_t> tokens = {0, 76, 5, 5, 40, 1, 76};
    float* out = poisoned(tokens.size() * size_t(dim));
    be_->embed(w, tokens.data(), int64_t(tokens.size()), out);
    const Vec got = download(out, tokens.size() * size_t(dim));
    for (size_t i = 0; i < tokens.size(); ++i)
      for (int64_t c = 0; c < dim; ++c)
        ASSERT_EQ(got[i * dim + c], float(hw.deq[size_t(tokens[i] * dim + c)]))
            << dtype_name(t) << " token " << tokens[i] << " col " << c;
    const int32_t bad = int32_t(vocab);
    EXPECT_THROW(be_->embed(w, &bad, 1, out), std::out_of_range);
  }
}

TEST_F(CudaTest, RmsnormMatchesReferenceInPlaceAndOutOfPlace) {
  for (int64_t dim : {1, 17, 64, 4096, 5000}) {
    for (int64_t n : {1, 7, 300}) {
      const Vec x = random_vec(rng_, size_t(n * dim), -3.f, 3.f), w = random_vec(rng_, size_t(dim));
      std::vector<double> ref(x.size());
      for (int64_t t = 0; t < n; ++t) {
        double ss = 0;
        for (int64_t i = 0; i < dim; ++i) ss += double(x[t * dim + i]) * x[t * dim + i];
        const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
        for (int64_t i = 0; i < dim; ++i) ref[t * dim + i] = x[t * dim + i] * inv * w[i];
      }
      float *dx = upload(x), *dw = upload(w), *dy = poisoned(x.size());
      be_->rmsnorm(dy, dx, dw, n, dim, 1e-5f);
      EXPECT_LT(rel_err(download(dy, x.size()), ref), 1e-6) << n << "x" << dim;
      be_->rmsnorm(dx, dx, dw, n, dim, 1e-5f);
      EXPECT_LT(rel_err(download(dx, x.size()), ref), 1e-6) << n << "x" << dim << " in place";
      for (float* p : {dx, dw, dy}) be_->release(p);
    }
  }
}

// The angle is formed in double from the 64-bit position (as the kernel does).
TEST_F(CudaTest, RopeAndStoreMatchDoubleReferenceAtHugePositions) {
  test::check_rope_and_store(*be_, [](int64_t pos, int i, int d, const RopeParams& p) {
    return (long double)(double(pos) * double(test::reference_inv_freq(i, d, p)));
  }, 2e-6);
}

TEST_F(CudaTest, LayernormsMatchReference) { test::check_layernorms(*be_); }
TEST_F(CudaTest, ActivationsAndClampMatchReference) { test::check_activations(*be_); }
TEST_F(CudaTest, KvCacheTypesStoreAndAttendExactly) { test::check_kv_storage(*be_); }

TEST_F(CudaTest, AddRmsnormMatchesReference) { test::check_add_rmsnorm(*be_); }

TEST_F(CudaTest, SwigluAndAddMatchReference) {
  for (int64_t n : {1, 31, 1000003}) {
    const Vec g = random_vec(rng_, size_t(n), -8.f, 8.f), u = random_vec(rng_, size_t(n));
    std::vector<double> sw(static_cast<size_t>(n)), sum(static_cast<size_t>(n));
    for (size_t i = 0; i < size_t(n); ++i) {
      sw[i] = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
      sum[i] = double(g[i]) + u[i];
    }
    float *dg = upload(g), *du = upload(u), *dy = poisoned(static_cast<size_t>(n));
    be_->activate(Activation::Silu, dy, dg, du, 1, n, n);
    EXPECT_LT(rel_err(download(dy, size_t(n)), sw), 1e-6) << n;
    be_->add(dg, du, n);
    EXPECT_LT(rel_err(download(dg, size_t(n)), sum), 1e-7) << n;
    for (float* p : {dg, du, dy}) be_->release(p);
  }
}

// Gate and up as the two halves of fused rows (the model's gate|up matmul output).
TEST_F(CudaTest, SwigluReadsFusedRows) {
  const int64_t n_tok = 37, width = 1001, stride = 2 * width;
  const Vec gu = random_vec(rng_, size_t(n_tok * stride), -8.f, 8.f);
  std::vector<double> ref(static_cast<size_t>(n_tok * width));
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t i = 0; i < width; ++i) {
      const double g = gu[size_t(t * stride + i)], u = gu[size_t(t * stride + width + i)];
      ref[size_t(t * width + i)] = g / (1.0 + std::exp(-g)) * u;
    }
  float *dgu = upload(gu), *dy = poisoned(ref.size());
  be_->activate(Activation::Silu, dy, dgu, dgu + width, n_tok, width, stride);
  EXPECT_LT(rel_err(download(dy, ref.size()), ref), 1e-6);
  for (float* p : {dgu, dy}) be_->release(p);
}

TEST_F(CudaTest, Copy2dMovesColumnBlocks) { test::check_copy_2d(*be_); }

TEST_F(CudaTest, GatherMovesExactRows) {
  const int64_t width = 67, n_src = 500, n = 123;
  std::vector<int64_t> rows(static_cast<size_t>(n_src));
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng_);
  rows.resize(static_cast<size_t>(n));
  const Vec src = random_vec(rng_, size_t(n_src * width));
  float *dsrc = upload(src), *dback = poisoned(static_cast<size_t>(n * width));
  be_->gather_rows(dback, width, rows.data(), dsrc, n);
  Vec expect(static_cast<size_t>(n * width));
  for (int64_t i = 0; i < n; ++i)
    std::copy_n(src.begin() + rows[size_t(i)] * width, width, expect.begin() + i * width);
  EXPECT_EQ(download(dback, expect.size()), expect);
  for (float* p : {dsrc, dback}) be_->release(p);
}

// Host arrays are staged: the caller may overwrite them as soon as the call returns, long before
// the device runs the operation, and more of them than the staging arena holds may be queued.
TEST_F(CudaTest, HostArraysAreCapturedAtCallTime) {
  const int64_t width = 4, n_rows = 300000;
  const Vec src = random_vec(rng_, size_t(n_rows * width));
  float *dsrc = upload(src), *ddst = poisoned(static_cast<size_t>(n_rows * width));
  std::vector<int64_t> rows(static_cast<size_t>(n_rows));
  std::vector<Vec> expect;
  for (int round = 0; round < 4; ++round) {  // 4 x 2.4 MB of indices, queued without a sync
    for (int64_t i = 0; i < n_rows; ++i) rows[size_t(i)] = (i * 7919 + round * 104729) % n_rows;
    be_->gather_rows(ddst, width, rows.data(), dsrc, n_rows);
    std::fill(rows.begin(), rows.end(), -1);  // would fault if the device read it
  }
  const Vec got = download(ddst, size_t(n_rows * width));
  for (int64_t i = 0; i < n_rows; i += 997) {
    const int64_t r = (i * 7919 + 3 * 104729) % n_rows;
    for (int64_t c = 0; c < width; ++c) ASSERT_EQ(got[i * width + c], src[r * width + c]) << i;
  }
  be_->release(dsrc);
  be_->release(ddst);
}

// ---------------------------------------------------------------------------------------------
// attention

struct AttnCase {
  int n_heads, n_kv, head_dim;
};

// Scores the keys of each span exactly as Backend::attention documents, in double; with ALiBi
// slopes, key j of n is penalised by slope * (n - 1 - j).
std::vector<double> attention_reference(const Vec& qw, const Vec& qs, const Vec& k, const Vec& v,
                                        const std::vector<AttnSpan>& spans, const AttnCase& c,
                                        const Vec& slopes) {
  const int64_t qd = int64_t(c.n_heads) * c.head_dim, kd = int64_t(c.n_kv) * c.head_dim;
  std::vector<double> out(spans.size() * size_t(qd));
  for (size_t t = 0; t < spans.size(); ++t) {
    const AttnSpan& s = spans[t];
    std::vector<int64_t> rows;
    std::vector<bool> sink;
    for (int j = 0; j < s.n_sink; ++j) { rows.push_back(s.row0 + j); sink.push_back(true); }
    for (int j = 0; j < s.n_win; ++j) {
      rows.push_back(s.row0 + s.sink_rows + (s.win_begin + j) % s.ring_size);
      sink.push_back(false);
    }
    for (int h = 0; h < c.n_heads; ++h) {
      const int kh = h / (c.n_heads / c.n_kv);
      std::vector<double> sc(rows.size());
      double m = -1e300;
      for (size_t j = 0; j < rows.size(); ++j) {
        const Vec& q = sink[j] ? qs : qw;
        double d = 0;
        for (int e = 0; e < c.head_dim; ++e)
          d += double(q[t * qd + h * c.head_dim + e]) * k[rows[j] * kd + kh * c.head_dim + e];
        sc[j] = d / std::sqrt(double(c.head_dim)) -
                (slopes.empty() ? 0.0 : slopes[size_t(h)] * double(rows.size() - 1 - j));
        m = std::max(m, sc[j]);
      }
      double l = 0;
      for (double& x : sc) l += (x = std::exp(x - m));
      for (int e = 0; e < c.head_dim; ++e) {
        double acc = 0;
        for (size_t j = 0; j < rows.size(); ++j) acc += sc[j] * v[rows[j] * kd + kh * c.head_dim + e];
        out[t * qd + h * c.head_dim + e] = acc / l;
      }
    }
  }
  return out;
}

TEST_F(CudaTest, AttentionMatchesReferenceOnRandomWrappedSpans) {
  const AttnCase cases[] = {{8, 4, 8}, {4, 4, 64}, {32, 8, 128}, {6, 2, 80}, {12, 1, 16},
                            {2, 1, 256}, {3, 3, 6}};
  for (const AttnCase& c : cases) {
    for (int64_t n_tok : {1, 5, 64, 300}) {
      // Up to 3 slots of sink_rows + ring rows; a few long windows force split-and-merge.
      std::uniform_int_distribution<int> sink_d(0, 4), ring_d(1, 5000);
      const int S = sink_d(rng_);
      const int R = n_tok <= 5 ? ring_d(rng_) : std::uniform_int_distribution<int>(1, 300)(rng_);
      const int64_t slot_rows = S + R, n_rows = 3 * slot_rows;
      std::vector<AttnSpan> spans(static_cast<size_t>(n_tok));
      for (AttnSpan& s : spans) {
        s.row0 = std::uniform_int_distribution<int64_t>(0, 2)(rng_) * slot_rows;
        s.sink_rows = S;
        s.n_sink = std::uniform_int_distribution<int>(0, S)(rng_);
        s.ring_size = R;
        s.win_begin = std::uniform_int_distribution<int>(0, R - 1)(rng_);
        s.n_win = std::uniform_int_distribution<int>(s.n_sink ? 0 : 1, R)(rng_);
      }
      const int64_t qd = int64_t(c.n_heads) * c.head_dim, kd = int64_t(c.n_kv) * c.head_dim;
      const Vec qw = random_vec(rng_, size_t(n_tok * qd), -2.f, 2.f);
      const Vec qs = random_vec(rng_, size_t(n_tok * qd), -2.f, 2.f);
      const Vec k = random_vec(rng_, size_t(n_rows * kd), -2.f, 2.f), v = random_vec(rng_, size_t(n_rows * kd));
      float *dqw = upload(qw), *dqs = upload(qs), *dk = upload(k), *dv = upload(v);
      float* dout = poisoned(static_cast<size_t>(n_tok * qd));
      // ALiBi models (MPT) on every other token count.
      const Vec slopes = n_tok % 2 ? random_vec(rng_, size_t(c.n_heads), 0.f, 0.5f) : Vec{};
      be_->attention(dqw, dqs, n_tok, c.n_heads, c.n_kv, c.head_dim, DType::F32, dk, dv, spans.data(),
                     slopes.empty() ? nullptr : slopes.data(), dout);
      const double err = rel_err(download(dout, size_t(n_tok * qd)),
                                 attention_reference(qw, qs, k, v, spans, c, slopes));
      EXPECT_LT(err, 2e-6) << c.n_heads << "/" << c.n_kv << " heads of " << c.head_dim
                           << ", n_tok " << n_tok << ", sink " << S << ", ring " << R
                           << (slopes.empty() ? "" : ", alibi");
      for (float* p : {dqw, dqs, dk, dv, dout}) be_->release(p);
    }
  }
}

TEST_F(CudaTest, AttentionRejectsBadShapes) {
  AttnSpan s;
  s.n_win = 1;
  s.ring_size = 1;
  float* d = poisoned(1024);
  EXPECT_THROW(be_->attention(d, d, 1, 6, 4, 8, DType::F32, d, d, &s, nullptr, d), std::invalid_argument);
  EXPECT_THROW(be_->attention(d, d, 1, 1, 1, 512, DType::F32, d, d, &s, nullptr, d), std::invalid_argument);
  s.n_win = 2;  // more window rows than the ring holds
  EXPECT_THROW(be_->attention(d, d, 1, 1, 1, 8, DType::F32, d, d, &s, nullptr, d), std::invalid_argument);
  be_->release(d);
}

// The spans of a real sink cache, streamed past many evictions in uneven chunks: the output must
// equal attention over {sinks} + {last W tokens}, computed from the stream itself.
TEST_F(CudaTest, AttentionOverStreamingSinkCacheMatchesStreamSemantics) {
  const AttnCase c{8, 2, 16};
  const int S = 4, W = 60, chunk = 16, n_slots = 3;
  const CacheConfig cfg = test::cache_config(Policy::Sink, S, W, chunk);
  const int kd = c.n_kv * c.head_dim, qd = c.n_heads * c.head_dim;
  KVCache cache(*be_, 1, kd, cfg, n_slots);
  // The third slot of the pool, so that its rows start past other slots' rows.
  ASSERT_EQ(cache.acquire(), 0);
  ASSERT_EQ(cache.acquire(), 1);
  const int slot2 = cache.acquire();
  ASSERT_EQ(slot2, 2);
  std::vector<Vec> keys, vals;  // by stream position, for slot2
  std::uniform_int_distribution<int> step(1, chunk);
  int64_t p = 0;
  while (p < 400) {
    const int n = step(rng_);
    std::vector<TokenPlan> plan(static_cast<size_t>(n));
    cache.plan(slot2, n, plan.data());
    std::vector<int64_t> rows;
    std::vector<AttnSpan> spans;
    for (const TokenPlan& tp : plan) { rows.push_back(tp.store_row); spans.push_back(tp.span); }
    const Vec k = random_vec(rng_, size_t(n * kd), -2.f, 2.f), v = random_vec(rng_, size_t(n * kd));
    for (int i = 0; i < n; ++i) {
      keys.emplace_back(k.begin() + i * kd, k.begin() + (i + 1) * kd);
      vals.emplace_back(v.begin() + i * kd, v.begin() + (i + 1) * kd);
    }
    float *dk = upload(k), *dv = upload(v);
    for (int i = 0; i < n; ++i) {
      be_->copy(cache.k(0) + rows[size_t(i)] * kd, dk + i * kd, size_t(kd) * sizeof(float));
      be_->copy(cache.v(0) + rows[size_t(i)] * kd, dv + i * kd, size_t(kd) * sizeof(float));
    }
    const Vec qw = random_vec(rng_, size_t(n * qd), -2.f, 2.f), qs = random_vec(rng_, size_t(n * qd), -2.f, 2.f);
    float *dqw = upload(qw), *dqs = upload(qs), *dout = poisoned(static_cast<size_t>(n * qd));
    be_->attention(dqw, dqs, n, c.n_heads, c.n_kv, c.head_dim, DType::F32, cache.k(0), cache.v(0),
                   spans.data(), nullptr, dout);
    const Vec got = download(dout, size_t(n * qd));
    cache.commit(slot2, n);
    // Reference straight from the stream: sinks j < S with qs, window max(S, q-W+1)..q with qw.
    std::vector<double> ref(static_cast<size_t>(n * qd));
    for (int i = 0; i < n; ++i) {
      const int64_t q = p + i;
      std::vector<int64_t> js;
      for (int64_t j = 0; j < std::min<int64_t>(S, q + 1); ++j) js.push_back(j);
      for (int64_t j = std::max<int64_t>(S, q - W + 1); j <= q; ++j) js.push_back(j);
      for (int h = 0; h < c.n_heads; ++h) {
        const int kh = h / (c.n_heads / c.n_kv);
        std::vector<double> sc;
        double m = -1e300;
        for (int64_t j : js) {
          const Vec& qv = j < S ? qs : qw;
          double d = 0;
          for (int e = 0; e < c.head_dim; ++e)
            d += double(qv[i * qd + h * c.head_dim + e]) * keys[size_t(j)][kh * c.head_dim + e];
          sc.push_back(d / std::sqrt(double(c.head_dim)));
          m = std::max(m, sc.back());
        }
        double l = 0;
        for (double& x : sc) l += (x = std::exp(x - m));
        for (int e = 0; e < c.head_dim; ++e) {
          double acc = 0;
          for (size_t jj = 0; jj < js.size(); ++jj) acc += sc[jj] * vals[size_t(js[jj])][kh * c.head_dim + e];
          ref[size_t(i * qd + h * c.head_dim + e)] = acc / l;
        }
      }
    }
    ASSERT_LT(rel_err(got, ref), 2e-6) << "step at stream position " << p << " (+" << n << ")";
    for (float* q : {dk, dv, dqw, dqs, dout}) be_->release(q);
    p += n;
  }
}

// ---------------------------------------------------------------------------------------------
// sample

TEST_F(CudaTest, SampleFollowsTheReferenceDistribution) { test::check_stratified_draws_follow_reference(*be_); }
TEST_F(CudaTest, SampleWalksVocabularyOrder) { test::check_draw_walks_vocabulary_order(*be_); }
TEST_F(CudaTest, SampleGreedyTiesAndNonFiniteRows) { test::check_greedy_ties_and_non_finite_rows(*be_); }
TEST_F(CudaTest, SampleRefusesBadSpecs) { test::check_bad_specs_are_refused(*be_); }

// Full-size rows with random specs, token for token against the CPU backend. The kernels sum in
// different orders, so a coin within rounding of a boundary may pick the neighbour; greedy rows
// must always agree.
TEST_F(CudaTest, SampleAgreesWithCpuBackendOnLargeRows) {
  const int64_t width = 32003, rows = 600;
  std::vector<float> logits;
  std::vector<SampleSpec> specs(static_cast<size_t>(rows));
  std::vector<int32_t> pen;
  for (int i = 0; i < 40; ++i) pen.push_back(int32_t(rng_() % uint32_t(width)));
  std::sort(pen.begin(), pen.end());
  pen.erase(std::unique(pen.begin(), pen.end()), pen.end());
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const Vec row = random_vec(rng_, size_t(width), -10.f, 10.f);
    logits.insert(logits.end(), row.begin(), row.end());
    SampleSpec& s = specs[size_t(r)];
    s.temperature = r % 5 == 0 ? 0.0f : 0.3f + 1.5f * u(rng_);
    s.top_k = r % 3 == 0 ? 0 : int32_t(1 + rng_() % 200);
    s.top_p = r % 4 == 0 ? 1.0f : 0.5f + 0.49f * u(rng_);
    s.min_p = r % 2 == 0 ? 0.0f : 0.1f * u(rng_);
    if (r % 7 == 0) {
      s.penalty = 1.3f;
      s.penalized = pen.data();
      s.n_penalized = int32_t(pen.size());
    }
    s.coin = std::min(u(rng_), std::nextafter(1.0f, 0.0f));
  }
  std::vector<int32_t> want(static_cast<size_t>(rows)), got(static_cast<size_t>(rows), -7);
  Vec host = logits;
  make_cpu_backend(1)->sample(host.data(), rows, width, specs.data(), want.data());
  float* d = upload(logits);
  be_->sample(d, rows, width, specs.data(), got.data());
  be_->release(d);
  int differ = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (specs[size_t(r)].temperature == 0.0f) {
      EXPECT_EQ(got[size_t(r)], want[size_t(r)]) << "greedy row " << r;
    }
    differ += got[size_t(r)] != want[size_t(r)];
  }
  EXPECT_LE(differ, rows / 200) << differ << " of " << rows << " draws differ";
}

TEST(CudaBackendFactory, RejectsDevicesThatDoNotExist) {
  EXPECT_THROW(make_cuda_backend(-1), std::runtime_error);
  EXPECT_THROW(make_cuda_backend(cuda_device_count()), std::runtime_error);
}

TEST_F(CudaTest, ReleaseRejectsForeignPointers) {
  int x = 0;
  EXPECT_THROW(be_->release(&x), std::invalid_argument);
  EXPECT_EQ(be_->alloc(0), nullptr);
  be_->release(nullptr);
}

}  // namespace
}  // namespace sinkserve
