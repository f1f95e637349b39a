// Backend::rope_and_store, Backend::add_rmsnorm, the LayerNorms, activations, clamp and
// Backend::copy_2d against references written
// here, for every backend (the CPU unit tests and the GPU tests run them). The rotation angle of
// the reference is the caller's: the CPU backend reduces pos * freq in extended precision, the
// CUDA backend forms it in double.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "tests/backend_io.h"

namespace sinkserve::test {

// The angle of rotation pair i at position pos when d dimensions of a head rotate, as the backend
// forms it from freq_scale * base^(-2i/d) / freq_factors[i]: at position 2^40 one ulp of the
// frequency moves it by ~1e-4 rad, so the reference must round the frequency exactly as the
// backend does.
using RopeAngle = std::function<long double(int64_t pos, int i, int d, const RopeParams&)>;

// The frequency of pair i as both backends form it, in extended precision, for the callers'
// angle functions.
inline long double reference_inv_freq(int i, int d, const RopeParams& p) {
  long double f = (long double)p.freq_scale * std::pow((long double)p.freq_base, -2.0L * i / d);
  if (!p.freq_factors.empty()) f /= p.freq_factors[size_t(i)];
  return f;
}

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
  // Rotated dimensions: all (-1), a part (partial rotary), none (ALiBi models).
  for (const Shape& sh : {Shape{4, 2, 10}, Shape{3, 3, 2}, Shape{8, 1, 128}})
    for (int n_rot : {-1, sh.head_dim / 4 * 2, 0})
    for (bool neox : {false, true})
      for (float freq_scale : {1.0f, 0.25f}) {
        RopeParams p{10000.0f, freq_scale, neox, n_rot, {}};
        const int64_t hd = sh.head_dim, q_w = sh.n_heads * hd, kv_w = sh.n_kv * hd;
        const int d = p.rotated(int(hd));
        if (freq_scale == 1.0f && d > 0)  // Llama-3 style per-pair factors
          for (int i = 0; i < d / 2; ++i) p.freq_factors.push_back(1.0f + 0.75f * float(i % 3));
        const int64_t stride = q_w + 2 * kv_w + 3;  // padded rows
        const std::vector<float> qkv = random(size_t(n_tok * stride));
        const std::vector<float> k0 = random(size_t(n_rows * kv_w)), v0 = random(size_t(n_rows * kv_w));
        float *d_qkv = to_backend(be, qkv), *d_k = to_backend(be, k0), *d_v = to_backend(be, v0);
        float *d_qw = to_backend(be, std::vector<float>(size_t(n_tok * q_w), -9.0f));
        float *d_qs = to_backend(be, std::vector<float>(size_t(n_tok * q_w), -9.0f));
        for (bool with_sink : {true, false}) {
          be.rope_and_store(d_qkv, stride, n_tok, sh.n_heads, sh.n_kv, int(hd), pos.data(),
                            with_sink ? sink_pos.data() : nullptr, p, d_qw, d_qs, DType::F32, d_k, d_v,
                            rows.data());
          const std::vector<float> qw = from_backend(be, d_qw, size_t(n_tok * q_w)),
                                   qs = from_backend(be, d_qs, size_t(n_tok * q_w)),
                                   k = from_backend(be, d_k, k0.size()), v = from_backend(be, d_v, v0.size());
          const std::string what = "heads " + std::to_string(sh.n_heads) + "/" + std::to_string(sh.n_kv) +
                                   " hd " + std::to_string(hd) + " rotating " + std::to_string(d) +
                                   (neox ? " neox" : "") + " scale " + std::to_string(freq_scale) +
                                   (p.freq_factors.empty() ? "" : " factors") + (with_sink ? " with sinks" : "");
          // Rotated heads of src (at `position`) against dst; dimensions from d on pass through.
          auto expect_rotated = [&](const float* src, const float* dst, int heads, int64_t position,
                                    const std::string& which) {
            for (int h = 0; h < heads; ++h) {
              for (int i = 0; i < d / 2; ++i) {
                const long double th = angle(position, i, d, p), c = std::cos(th), s = std::sin(th);
                const int64_t a = h * hd + (neox ? i : 2 * i), b = a + (neox ? d / 2 : 1);
                const long double x0 = src[a], x1 = src[b];
                ASSERT_NEAR(dst[a], double(x0 * c - x1 * s), tol) << which << ", " << what << ", pos " << position;
                ASSERT_NEAR(dst[b], double(x0 * s + x1 * c), tol) << which << ", " << what << ", pos " << position;
              }
              for (int64_t j = d; j < hd; ++j)
                ASSERT_EQ(dst[h * hd + j], src[h * hd + j]) << which << " pass-through " << j << ", " << what;
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
                              sink_pos.data(), p, d_qw, d_qs, DType::F32, d_k, d_v, rows.data());
            EXPECT_EQ(from_backend(be, d_qs, qs.size()), qs) << what;
          }
        }
        for (float* b : {d_qkv, d_k, d_v, d_qw, d_qs}) be.release(b);
      }
  float* odd = to_backend(be, std::vector<float>(9, 0.0f));
  const int64_t p0 = 0, r0 = 0;
  EXPECT_THROW(be.rope_and_store(odd, 9, 1, 1, 1, 3, &p0, nullptr, RopeParams{}, odd, odd, DType::F32, odd, odd, &r0),
               std::invalid_argument);
  EXPECT_THROW(be.rope_and_store(odd, 5, 1, 1, 1, 2, &p0, nullptr, RopeParams{}, odd, odd, DType::F32, odd, odd, &r0),
               std::invalid_argument);
  const RopeParams odd_rot{10000.0f, 1.0f, false, 3, {}}, too_wide{10000.0f, 1.0f, false, 4, {}},
      few_factors{10000.0f, 1.0f, false, 2, {1.0f, 2.0f}};
  for (const RopeParams& bad : {odd_rot, too_wide, few_factors})
    EXPECT_THROW(be.rope_and_store(odd, 9, 1, 1, 1, 2, &p0, nullptr, bad, odd, odd, DType::F32, odd, odd, &r0),
                 std::invalid_argument) << bad.n_rot;
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

// layernorm and add_layernorm (with and without bias) against the textbook formula in double.
inline void check_layernorms(Backend& be) {
  std::mt19937 rng(29);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (int64_t n_tok : {1, 5, 70})
    for (int64_t dim : {1, 7, 515, 2048})
      for (bool with_bias : {true, false})
        for (bool fused_add : {false, true}) {
          std::vector<float> x(static_cast<size_t>(n_tok * dim)), y(x.size()), w(static_cast<size_t>(dim)),
              b(static_cast<size_t>(dim));
          for (auto* v : {&x, &y, &w, &b})
            for (float& e : *v) e = u(rng);
          for (float& e : x) e += 2.0f;  // a mean far from 0, which LayerNorm must remove
          float *dx = to_backend(be, x), *dy = to_backend(be, y), *dw = to_backend(be, w), *db = to_backend(be, b);
          float* dout = to_backend(be, std::vector<float>(x.size(), -9.0f));
          const float* bias = with_bias ? db : nullptr;
          if (fused_add) be.add_layernorm(dx, dy, dout, dw, bias, n_tok, dim, 1e-5f);
          else be.layernorm(dout, dx, dw, bias, n_tok, dim, 1e-5f);
          const std::vector<float> in = from_backend(be, dx, x.size()), out = from_backend(be, dout, x.size());
          for (int64_t t = 0; t < n_tok; ++t) {
            double mean = 0, var = 0;
            for (int64_t i = 0; i < dim; ++i) {
              const size_t at = size_t(t * dim + i);
              if (fused_add) ASSERT_EQ(in[at], x[at] + y[at]);
              mean += in[at];
            }
            mean /= double(dim);
            for (int64_t i = 0; i < dim; ++i) var += (in[size_t(t * dim + i)] - mean) * (in[size_t(t * dim + i)] - mean);
            const double inv = 1.0 / std::sqrt(var / double(dim) + 1e-5);
            for (int64_t i = 0; i < dim; ++i) {
              const size_t at = size_t(t * dim + i);
              const double ref = (in[at] - mean) * inv * w[size_t(i)] + (with_bias ? b[size_t(i)] : 0.0);
              ASSERT_NEAR(out[at], ref, 1e-5 * std::fabs(ref) + 1e-5)
                  << n_tok << "x" << dim << (with_bias ? " bias" : "") << (fused_add ? " add" : "") << " at " << at;
            }
          }
          for (float* p : {dx, dy, dw, db, dout}) be.release(p);
        }
}

// activate for every function, gated (rows gate|up of a fused matrix) and plain (in place), and
// clamp, against the formulas in double.
inline void check_activations(Backend& be) {
  auto reference = [](Activation a, double x) {
    switch (a) {
      case Activation::Silu: return x / (1.0 + std::exp(-x));
      case Activation::GeluTanh: return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
      case Activation::GeluErf: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    }
    return x;
  };
  std::mt19937 rng(31);
  std::uniform_real_distribution<float> u(-12.0f, 12.0f);
  const int64_t n_tok = 37, width = 1031, stride = 2 * width;
  std::vector<float> gu(static_cast<size_t>(n_tok * stride));
  for (float& v : gu) v = u(rng);
  for (Activation a : {Activation::Silu, Activation::GeluTanh, Activation::GeluErf}) {
    float* dgu = to_backend(be, gu);
    float* dout = to_backend(be, std::vector<float>(size_t(n_tok * width), -9.0f));
    be.activate(a, dout, dgu, dgu + width, n_tok, width, stride);
    const std::vector<float> gated = from_backend(be, dout, size_t(n_tok * width));
    be.activate(a, dgu, dgu, nullptr, n_tok, stride, stride);  // plain, in place over whole rows
    const std::vector<float> plain = from_backend(be, dgu, gu.size());
    for (int64_t t = 0; t < n_tok; ++t)
      for (int64_t i = 0; i < width; ++i) {
        const double g = gu[size_t(t * stride + i)], up = gu[size_t(t * stride + width + i)];
        const double ref = reference(a, g) * up;
        ASSERT_NEAR(gated[size_t(t * width + i)], ref, 2e-6 * std::fabs(ref) + 1e-6 * std::max(1.0, std::fabs(up)))
            << activation_name(a) << " gated, g=" << g;
        ASSERT_NEAR(plain[size_t(t * stride + i)], reference(a, g), 2e-6 * std::fabs(reference(a, g)) + 1e-6)
            << activation_name(a) << " plain, x=" << g;
      }
    for (float* p : {dgu, dout}) be.release(p);
  }
  float* dx = to_backend(be, gu);
  be.clamp(dx, int64_t(gu.size()), 6.0f);
  const std::vector<float> clamped = from_backend(be, dx, gu.size());
  for (size_t i = 0; i < gu.size(); ++i) ASSERT_EQ(clamped[i], std::min(6.0f, std::max(-6.0f, gu[i]))) << i;
  be.release(dx);
}

// The plain decoding of one stored KV value, written from the formats' definitions: F16 (1-5-10
// bits), BF16 (the top half of an F32), Q8_0 (blocks of 32: an F16 scale, then 32 int8).
inline double decode_kv(DType t, const uint8_t* row, int64_t e) {
  auto half = [](uint16_t h) {
    const int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
    const double m = exp ? 1.0 + mant / 1024.0 : mant / 1024.0;
    return (sign ? -1.0 : 1.0) * std::ldexp(m, exp ? exp - 15 : -14);
  };
  uint16_t h;
  switch (t) {
    case DType::F16:
      std::memcpy(&h, row + 2 * e, 2);
      return half(h);
    case DType::BF16: {
      std::memcpy(&h, row + 2 * e, 2);
      const uint32_t bits = uint32_t(h) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case DType::Q8_0: {
      const uint8_t* b = row + (e / 32) * 34;
      std::memcpy(&h, b, 2);
      return half(h) * double(int8_t(b[2 + e % 32]));
    }
    default: {
      float f;
      std::memcpy(&f, row + 4 * e, 4);
      return f;
    }
  }
}

// For each cache type: rope_and_store writes keys (rotated in F32) and values that decode to the
// originals within the type's precision, and attention over the stored rows (sinks, a wrapped
// ring, GQA, and ALiBi) equals attention in double over the decoded values.
inline void check_kv_storage(Backend& be) {
  const int n_heads = 4, n_kv = 2, hd = 32, kv_w = n_kv * hd, q_w = n_heads * hd;
  const int64_t stride = q_w + 2 * kv_w;
  const int sink_rows = 4, ring = 9, slot_rows = sink_rows + ring;
  std::mt19937 rng(41);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  // Stream 30 tokens into one slot (the ring wraps), then attend with the last 5 as queries.
  const int n_stream = 30;
  std::vector<float> qkv(size_t(n_stream * stride));
  for (float& x : qkv) x = u(rng);
  qkv[size_t(stride + q_w + 3)] = 0.0f;  // zeros and a large value in some block
  qkv[size_t(2 * stride + q_w + kv_w + 7)] = 40.0f;
  std::vector<int64_t> pos(n_stream), rows(n_stream);
  for (int t = 0; t < n_stream; ++t) {
    pos[size_t(t)] = 1000 + t;
    rows[size_t(t)] = t < sink_rows ? t : sink_rows + (t - sink_rows) % ring;
  }
  const RopeParams rope{10000.0f, 1.0f, true, 16, {}};
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0}) {
    const size_t row_bytes = size_t(dtype_row_bytes(t, kv_w));
    float* d_qkv = to_backend(be, qkv);
    float* d_q = to_backend(be, std::vector<float>(size_t(n_stream * q_w), 0.0f));
    auto* d_k = static_cast<uint8_t*>(be.alloc(slot_rows * row_bytes));
    auto* d_v = static_cast<uint8_t*>(be.alloc(slot_rows * row_bytes));
    // Reference K rows from an F32 store of the same step.
    float* d_k32 = to_backend(be, std::vector<float>(size_t(slot_rows * kv_w), 0.0f));
    float* d_v32 = to_backend(be, std::vector<float>(size_t(slot_rows * kv_w), 0.0f));
    be.rope_and_store(d_qkv, stride, n_stream, n_heads, n_kv, hd, pos.data(), nullptr, rope, d_q, d_q, t, d_k, d_v,
                      rows.data());
    be.rope_and_store(d_qkv, stride, n_stream, n_heads, n_kv, hd, pos.data(), nullptr, rope, d_q, d_q, DType::F32,
                      d_k32, d_v32, rows.data());
    std::vector<uint8_t> k(slot_rows * row_bytes), v(k.size());
    be.to_host(k.data(), d_k, k.size());
    be.to_host(v.data(), d_v, v.size());
    const std::vector<float> k32 = from_backend(be, d_k32, size_t(slot_rows * kv_w)),
                             v32 = from_backend(be, d_v32, size_t(slot_rows * kv_w)),
                             q = from_backend(be, d_q, size_t(n_stream * q_w));
    // Storage: within half a unit of the type's last place; Q8_0 within half its block's scale d
    // plus 127 times the F16 rounding of d itself.
    for (int r = 0; r < slot_rows; ++r)
      for (int e = 0; e < kv_w; ++e)
        for (bool is_k : {true, false}) {
          const double want = (is_k ? k32 : v32)[size_t(r * kv_w + e)];
          const double got = decode_kv(t, (is_k ? k : v).data() + r * row_bytes, e);
          double tol = 0;
          if (t == DType::F16) tol = std::fabs(want) * 0x1p-11 + 0x1p-25;
          if (t == DType::BF16) tol = std::fabs(want) * 0x1p-8;
          if (t == DType::Q8_0) {
            double amax = 0;
            for (int j = e / 32 * 32; j < e / 32 * 32 + 32; ++j)
              amax = std::max(amax, double(std::fabs((is_k ? k32 : v32)[size_t(r * kv_w + j)])));
            tol = amax / 127 * (0.5 + 127 * 0x1p-11) + 1e-6;
          }
          ASSERT_NEAR(got, want, tol) << dtype_name(t) << (is_k ? " key" : " value") << " row " << r << " at " << e;
        }
    // Attention of the last 5 tokens: token p sees sinks 0..3 and the window of the ring.
    const int n_tok = 5;
    std::vector<AttnSpan> spans;
    for (int i = 0; i < n_tok; ++i) {
      const int p = n_stream - n_tok + i, W = 6, first = std::max(sink_rows, p - W + 1);
      spans.push_back({0, sink_rows, sink_rows, ring, int32_t((first - sink_rows) % ring), int32_t(p - first + 1)});
    }
    const std::vector<float> slopes = {0.3f, 0.1f, 0.05f, 0.2f};
    for (const float* alibi : {static_cast<const float*>(nullptr), slopes.data()}) {
      float* d_out = to_backend(be, std::vector<float>(size_t(n_tok * q_w), -9.0f));
      const float* q_last = d_q + (n_stream - n_tok) * q_w;
      be.attention(q_last, q_last, n_tok, n_heads, n_kv, hd, t, d_k, d_v, spans.data(), alibi, d_out);
      const std::vector<float> out = from_backend(be, d_out, size_t(n_tok * q_w));
      for (int i = 0; i < n_tok; ++i)
        for (int h = 0; h < n_heads; ++h) {
          const AttnSpan& s = spans[size_t(i)];
          std::vector<int> keys;
          for (int j = 0; j < s.n_sink; ++j) keys.push_back(j);
          for (int j = 0; j < s.n_win; ++j) keys.push_back(sink_rows + (s.win_begin + j) % ring);
          const int kh = h / (n_heads / n_kv), nk = int(keys.size());
          std::vector<double> sc(keys.size());
          double mx = -1e300, z = 0;
          for (int j = 0; j < nk; ++j) {
            double d = 0;
            for (int e = 0; e < hd; ++e)
              d += double(q[size_t((n_stream - n_tok + i) * q_w + h * hd + e)]) *
                   decode_kv(t, k.data() + keys[size_t(j)] * row_bytes, kh * hd + e);
            sc[size_t(j)] = d / std::sqrt(double(hd)) - (alibi ? alibi[h] * (nk - 1 - j) : 0.0);
            mx = std::max(mx, sc[size_t(j)]);
          }
          for (double& x : sc) z += (x = std::exp(x - mx));
          for (int e = 0; e < hd; ++e) {
            double ref = 0;
            for (int j = 0; j < nk; ++j)
              ref += sc[size_t(j)] / z * decode_kv(t, v.data() + keys[size_t(j)] * row_bytes, kh * hd + e);
            ASSERT_NEAR(out[size_t(i * q_w + h * hd + e)], ref, 2e-5 * (1 + std::fabs(ref)))
                << dtype_name(t) << (alibi ? " alibi" : "") << " token " << i << " head " << h << " dim " << e;
          }
        }
      be.release(d_out);
    }
    for (void* b : {static_cast<void*>(d_qkv), static_cast<void*>(d_q), static_cast<void*>(d_k),
                    static_cast<void*>(d_v), static_cast<void*>(d_k32), static_cast<void*>(d_v32)})
      be.release(b);
  }
  // A row width that Q8_0 blocks do not divide, and a type rows are never stored in.
  float* buf = to_backend(be, std::vector<float>(64, 0.0f));
  const int64_t p0 = 0, r0 = 0;
  const AttnSpan one{0, 1, 1, 1, 0, 0};
  EXPECT_THROW(be.rope_and_store(buf, 12, 1, 1, 1, 4, &p0, nullptr, RopeParams{}, buf, buf, DType::Q8_0, buf, buf, &r0),
               std::invalid_argument);
  EXPECT_THROW(be.attention(buf, buf, 1, 1, 1, 4, DType::Q8_0, buf, buf, &one, nullptr, buf), std::invalid_argument);
  be.release(buf);
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
