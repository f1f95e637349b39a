// Backend::rope_and_store, Backend::add_rmsnorm and Backend::copy_2d against references written
// here, for every backend (the CPU unit tests and the GPU tests run them). The rotation angle of
// the reference is the caller's: the CPU backend reduces pos * freq in extended precision, the
// CUDA backend forms it in double.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "tests/backend_io.h"

namespace sinkserve::test {

// The angle of rotation pair i of a head of head_dim at position pos, as the backend forms it
// from freq_scale * base^(-2i/head_dim): at position 2^40 one ulp of the frequency moves it by
// ~1e-4 rad, so the reference must round the frequency exactly as the backend does.
using RopeAngle = std::function<long double(int64_t pos, int i, int head_dim, const RopeParams&)>;

inline void check_rope_and_store(Backend& be, const RopeAngle& angle, double tol) {
  struct Shape {
    int n_heads, n_kv, head_dim;
  };
  const std::vector<int64_t> pos = {0, 1, 17, 4099, (int64_t(1) << 24) + 3, (int64_t(1) << 33) + 5,
                                    (int64_t(1) << 40) - 1, int64_t(1) << 40};
  const int64_t n_tok = int64_t(pos.size()), n_rows = 23;
  std::vector<int64_t> sink_pos, rows;
  for (int64_t t = 0; t < n_tok; ++t) {
    sink_pos.push_back(std::min<int64_t>(pos[size_t(t)], 9));
    rows.push_back((7 * t + 3) % n_rows);  // distinct, out of order
  }
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto random = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = u(rng);
    return v;
  };
  for (const Shape& sh : {Shape{4, 2, 10}, Shape{3, 3, 2}, Shape{8, 1, 128}})
    for (bool neox : {false, true})
      for (float freq_scale : {1.0f, 0.25f}) {
        const RopeParams p{10000.0f, freq_scale, neox};
        const int64_t hd = sh.head_dim, q_w = sh.n_heads * hd, kv_w = sh.n_kv * hd;
        const int64_t stride = q_w + 2 * kv_w + 3;  // padded rows
        const std::vector<float> qkv = random(size_t(n_tok * stride));
        const std::vector<float> k0 = random(size_t(n_rows * kv_w)), v0 = random(size_t(n_rows * kv_w));
        float *d_qkv = to_backend(be, qkv), *d_k = to_backend(be, k0), *d_v = to_backend(be, v0);
        float *d_qw = to_backend(be, std::vector<float>(size_t(n_tok * q_w), -9.0f));
        float *d_qs = to_backend(be, std::vector<float>(size_t(n_tok * q_w), -9.0f));
        for (bool with_sink : {true, false}) {
          be.rope_and_store(d_qkv, stride, n_tok, sh.n_heads, sh.n_kv, int(hd), pos.data(),
                            with_sink ? sink_pos.data() : nullptr, p, d_qw, d_qs, d_k, d_v, rows.data());
          const std::vector<float> qw = from_backend(be, d_qw, size_t(n_tok * q_w)),
                                   qs = from_backend(be, d_qs, size_t(n_tok * q_w)),
                                   k = from_backend(be, d_k, k0.size()), v = from_backend(be, d_v, v0.size());
          const std::string what = "heads " + std::to_string(sh.n_heads) + "/" + std::to_string(sh.n_kv) +
                                   " hd " + std::to_string(hd) + (neox ? " neox" : "") + " scale " +
                                   std::to_string(freq_scale) + (with_sink ? " with sinks" : "");
          // Rotated heads of src (at `position`) against dst.
          auto expect_rotated = [&](const float* src, const float* dst, int heads, int64_t position,
                                    const std::string& which) {
            for (int h = 0; h < heads; ++h)
              for (int i = 0; i < hd / 2; ++i) {
                const long double th = angle(position, i, int(hd), p), c = std::cos(th), s = std::sin(th);
                const int64_t a = h * hd + (neox ? i : 2 * i), b = a + (neox ? hd / 2 : 1);
                const long double x0 = src[a], x1 = src[b];
                ASSERT_NEAR(dst[a], double(x0 * c - x1 * s), tol) << which << ", " << what << ", pos " << position;
                ASSERT_NEAR(dst[b], double(x0 * s + x1 * c), tol) << which << ", " << what << ", pos " << position;
              }
          };
          std::vector<bool> stored(static_cast<size_t>(n_rows), false);
          for (int64_t t = 0; t < n_tok; ++t) {
            const float* row = qkv.data() + t * stride;
            const int64_t r = rows[size_t(t)];
            stored[size_t(r)] = true;
            expect_rotated(row, qw.data() + t * q_w, sh.n_heads, pos[size_t(t)], "q_win");
            if (with_sink) expect_rotated(row, qs.data() + t * q_w, sh.n_heads, sink_pos[size_t(t)], "q_sink");
            expect_rotated(row + q_w, k.data() + r * kv_w, sh.n_kv, pos[size_t(t)], "k");
            for (int64_t j = 0; j < kv_w; ++j) ASSERT_EQ(v[size_t(r * kv_w + j)], row[q_w + kv_w + j]) << what;
          }
          for (int64_t r = 0; r < n_rows; ++r)
            if (!stored[size_t(r)])
              for (int64_t j = 0; j < kv_w; ++j) {
                ASSERT_EQ(k[size_t(r * kv_w + j)], k0[size_t(r * kv_w + j)]) << "row " << r << " touched, " << what;
                ASSERT_EQ(v[size_t(r * kv_w + j)], v0[size_t(r * kv_w + j)]) << "row " << r << " touched, " << what;
              }
          // Without sinks q_sink keeps what the first run wrote.
          if (!with_sink) {
            be.rope_and_store(d_qkv, stride, n_tok, sh.n_heads, sh.n_kv, int(hd), pos.data(),
                              sink_pos.data(), p, d_qw, d_qs, d_k, d_v, rows.data());
            EXPECT_EQ(from_backend(be, d_qs, qs.size()), qs) << what;
          }
        }
        for (float* b : {d_qkv, d_k, d_v, d_qw, d_qs}) be.release(b);
      }
  float* odd = to_backend(be, std::vector<float>(9, 0.0f));
  const int64_t p0 = 0, r0 = 0;
  EXPECT_THROW(be.rope_and_store(odd, 9, 1, 1, 1, 3, &p0, nullptr, RopeParams{}, odd, odd, odd, odd, &r0),
               std::invalid_argument);
  EXPECT_THROW(be.rope_and_store(odd, 5, 1, 1, 1, 2, &p0, nullptr, RopeParams{}, odd, odd, odd, odd, &r0),
               std::invalid_argument);
  be.release(odd);
}

inline void check_add_rmsnorm(Backend& be) {
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int64_t n_tok : {1, 5, 70})
    for (int64_t dim : {1, 7, 515, 4096}) {
      std::vector<float> x(static_cast<size_t>(n_tok * dim)), y(x.size()), w(static_cast<size_t>(dim));
      for (float& v : x) v = u(rng);
      for (float& v : y) v = u(rng);
      for (float& v : w) v = u(rng);
      float *dx = to_backend(be, x), *dy = to_backend(be, y), *dw = to_backend(be, w);
      float* dout = to_backend(be, std::vector<float>(x.size(), -9.0f));
      be.add_rmsnorm(dx, dy, dout, dw, n_tok, dim, 1e-5f);
      const std::vector<float> sum = from_backend(be, dx, x.size()), out = from_backend(be, dout, x.size());
      for (int64_t t = 0; t < n_tok; ++t) {
        double ss = 0;
        for (int64_t i = 0; i < dim; ++i) {
          const size_t at = size_t(t * dim + i);
          ASSERT_EQ(sum[at], x[at] + y[at]) << n_tok << "x" << dim;
          ss += double(sum[at]) * sum[at];
        }
        const double inv = 1.0 / std::sqrt(ss / double(dim) + 1e-5);
        for (int64_t i = 0; i < dim; ++i) {
          const size_t at = size_t(t * dim + i);
          const double ref = sum[at] * inv * w[size_t(i)];
          ASSERT_NEAR(out[at], ref, 2e-6 * std::fabs(ref) + 1e-6) << n_tok << "x" << dim << " at " << at;
        }
      }
      for (float* b : {dx, dy, dw, dout}) be.release(b);
    }
}

// copy_2d moves a block of columns between row-major matrices of different widths, leaving the
// rest of the destination as it was.
inline void check_copy_2d(Backend& be) {
  const int64_t rows = 29, src_w = 131, dst_w = 57, col0 = 70, n = 50;
  auto random = [](size_t size, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(size);
    for (float& x : v) x = u(rng);
    return v;
  };
  const std::vector<float> src = random(size_t(rows * src_w), 7), base = random(size_t(rows * dst_w), 8);
  float *dsrc = to_backend(be, src), *ddst = to_backend(be, base);
  be.copy_2d(ddst + 3, dst_w * sizeof(float), dsrc + col0, src_w * sizeof(float), n * sizeof(float),
             size_t(rows));
  std::vector<float> expect = base;
  for (int64_t r = 0; r < rows; ++r)
    std::copy_n(src.begin() + r * src_w + col0, n, expect.begin() + r * dst_w + 3);
  EXPECT_EQ(from_backend(be, ddst, base.size()), expect);
  for (float* p : {dsrc, ddst}) be.release(p);
}

}  // namespace sinkserve::test
