// CPU backend: every instruction-set variant against plain references written here, the thread
// pool's coverage guarantees, and the backend's argument checking.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/membw.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/dtype.h"
#include "tests/fused_op_checks.h"

namespace sinkserve::cpu {
namespace {

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}

// A weight matrix in storage format plus the exact F32 values it decodes to (independently of
// the kernels: scalar element-by-element decoding of the GGUF layouts).
struct TestMatrix {
  DType type;
  int64_t rows, cols;
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};

TestMatrix make_matrix(DType type, int64_t rows, int64_t cols, uint32_t seed) {
  TestMatrix m{type, rows, cols, {}, {}};
  const std::vector<float> src = random_floats(size_t(rows * cols), seed);
  const int64_t rb = dtype_row_bytes(type, cols);
  m.bytes.resize(size_t(rows * rb));
  m.values.resize(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    quantize_row(type, src.data() + r * cols, m.bytes.data() + r * rb, cols);
    const uint8_t* row = m.bytes.data() + r * rb;
    for (int64_t c = 0; c < cols; ++c) {
      float v = 0;
      switch (type) {
        case DType::F32: std::memcpy(&v, row + 4 * c, 4); break;
        case DType::F16: { uint16_t h; std::memcpy(&h, row + 2 * c, 2); v = f16_to_f32(h); break; }
        case DType::BF16: { uint16_t h; std::memcpy(&h, row + 2 * c, 2); v = bf16_to_f32(h); break; }
        case DType::Q8_0: {
          const uint8_t* blk = row + (c / 32) * 34;
          uint16_t d; std::memcpy(&d, blk, 2);
          v = f16_to_f32(d) * float(int8_t(blk[2 + c % 32]));
          break;
        }
        default: ADD_FAILURE() << "test_quant_types.cpp checks " << dtype_name(type);
      }
      m.values[size_t(r * cols + c)] = v;
    }
  }
  return m;
}

// y = W x in double, plus the bound sum |w x| that scales the tolerance of an F32 accumulation.
void reference_matmul(const TestMatrix& m, const float* x, int64_t n_tok, const float* bias,
                      std::vector<double>& y, std::vector<double>& mag) {
  y.assign(size_t(n_tok * m.rows), 0.0);
  mag.assign(size_t(n_tok * m.rows), 0.0);
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t r = 0; r < m.rows; ++r) {
      double s = bias ? bias[r] : 0.0, a = bias ? std::fabs(bias[r]) : 0.0;
      for (int64_t c = 0; c < m.cols; ++c) {
        const double p = double(m.values[size_t(r * m.cols + c)]) * x[t * m.cols + c];
        s += p;
        a += std::fabs(p);
      }
      y[size_t(t * m.rows + r)] = s;
      mag[size_t(t * m.rows + r)] = a;
    }
}

// F32 accumulation over a few thousand terms: relative error against sum|w x| well under 1e-5.
constexpr double kMatmulRelTol = 2e-6;

const DType kTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0};
// The types with F32 activations; the products of block-quantized types (on 8-bit activations)
// are checked by test_quant_types.cpp.
const DType kFloatTypes[] = {DType::F32, DType::F16, DType::BF16};

TEST(CpuKernels, ScalarIsAlwaysAvailableAndUnsupportedIsaIsRejectedByName) {
  EXPECT_TRUE(isa_supported(Isa::Scalar));
  EXPECT_EQ(kernels_for(Isa::Scalar).isa, Isa::Scalar);
  EXPECT_EQ(kernels_for(best_isa()).isa, best_isa());
  for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
    if (isa_supported(isa)) continue;
    try {
      kernels_for(isa);
      ADD_FAILURE() << "expected a throw";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(isa_name(isa)), std::string::npos);
    }
  }
}

TEST(CpuKernels, GemvMatchesReferenceForEveryTypeAndTokenCount) {
  for (Isa isa : supported_isas()) {
    const Kernels& k = kernels_for(isa);
    for (DType type : kFloatTypes) {
      // Columns deliberately not a multiple of the vector width.
      const int64_t rows = 23, cols = 77;
      const TestMatrix m = make_matrix(type, rows, cols, 11);
      const std::vector<float> x = random_floats(size_t(kGemvMaxTokens * cols), 12);
      std::vector<double> ref, mag;
      reference_matmul(m, x.data(), kGemvMaxTokens, nullptr, ref, mag);
      for (int nt = 1; nt <= kGemvMaxTokens; ++nt) {
        std::vector<float> y(size_t(nt * rows), -7.0f);
        // A sub-range of rows: rows outside [3, 20) must stay untouched.
        k.gemv(type, m.bytes.data(), size_t(dtype_row_bytes(type, cols)), cols, 3, 20, x.data(), nt, y.data(), rows);
        for (int t = 0; t < nt; ++t)
          for (int64_t r = 0; r < rows; ++r) {
            const float got = y[size_t(t * rows + r)];
            if (r < 3 || r >= 20) {
              EXPECT_EQ(got, -7.0f);
              continue;
            }
            EXPECT_NEAR(got, ref[size_t(t * rows + r)], kMatmulRelTol * mag[size_t(t * rows + r)] + 1e-7)
                << isa_name(isa) << " " << dtype_name(type) << " nt=" << nt << " t=" << t << " r=" << r;
          }
      }
    }
  }
}

TEST(CpuKernels, DecodeRowMatchesStorageFormat) {
  for (Isa isa : supported_isas()) {
    for (DType type : kTypes) {
      const int64_t cols = type == DType::Q8_0 ? 192 : 83;
      const TestMatrix m = make_matrix(type, 1, cols, 5);
      const int64_t k0 = type == DType::Q8_0 ? 64 : 5, n = cols - k0 - (type == DType::Q8_0 ? 32 : 3);
      std::vector<float> out(size_t(n) + 1, 42.0f);
      kernels_for(isa).decode_row(type, m.bytes.data(), k0, n, out.data());
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(out[size_t(i)], m.values[size_t(k0 + i)]) << isa_name(isa) << " " << i;
      EXPECT_EQ(out[size_t(n)], 42.0f) << "wrote past the end";
    }
  }
}

TEST(CpuKernels, PackedPanelTimesPackedTokensMatchesReference) {
  for (Isa isa : supported_isas()) {
    const Kernels& k = kernels_for(isa);
    for (DType type : kTypes) {
      const int mr = k.gemm_mr, nr = k.gemm_nr;
      const int64_t rows = mr + 3, k0 = 32, kc = type == DType::Q8_0 ? 96 : 93, cols = k0 + kc + 32;
      const TestMatrix m = make_matrix(type, rows, cols, 21);
      const int m_valid = mr > 8 ? mr - 5 : mr - 1;  // a partial panel starting at row 2
      // The kernels use aligned vector loads and stores on the panel.
      std::unique_ptr<float, decltype(&std::free)> wp_mem(
          static_cast<float*>(std::aligned_alloc(64, size_t(kc * mr) * sizeof(float))), &std::free);
      float* wp = wp_mem.get();
      std::fill(wp, wp + kc * mr, NAN);
      k.pack_panel(type, m.bytes.data(), size_t(dtype_row_bytes(type, cols)), 2, m_valid, k0, kc, wp);
      for (int64_t kk = 0; kk < kc; ++kk)
        for (int i = 0; i < mr; ++i)
          ASSERT_EQ(wp[size_t(kk * mr + i)], i < m_valid ? m.values[size_t((2 + i) * cols + k0 + kk)] : 0.0f)
              << isa_name(isa) << " " << dtype_name(type) << " k=" << kk << " i=" << i;

      const std::vector<float> xp = random_floats(size_t(kc * nr), 22);
      const int n_valid = nr - 1;
      const int64_t ldy = mr + 7;
      for (bool accumulate : {false, true}) {
        std::vector<float> y(size_t(nr * ldy), 0.5f);
        k.gemm_tile(kc, wp, xp.data(), y.data(), ldy, m_valid, n_valid, accumulate);
        for (int j = 0; j < nr; ++j)
          for (int64_t i = 0; i < ldy; ++i) {
            const float got = y[size_t(j * ldy + i)];
            if (j >= n_valid || i >= m_valid) {
              ASSERT_EQ(got, 0.5f) << "wrote outside the valid tile: j=" << j << " i=" << i;
              continue;
            }
            double ref = accumulate ? 0.5 : 0.0, mag = 0.5;
            for (int64_t kk = 0; kk < kc; ++kk) {
              const double p = double(wp[size_t(kk * mr + i)]) * xp[size_t(kk * nr + j)];
              ref += p;
              mag += std::fabs(p);
            }
            ASSERT_NEAR(got, ref, kMatmulRelTol * mag) << isa_name(isa) << " j=" << j << " i=" << i;
          }
      }
    }
  }
}

// The BF16 GEMM must equal an F32-accumulated product of the BF16-rounded operands (dtype.h's
// round-to-nearest-even), so its only error is the documented operand rounding.
TEST(CpuKernels, Bf16GemmEqualsProductOfRoundedOperands) {
  if (!isa_supported(Isa::Avx512) || !kernels_for(Isa::Avx512).gemm_tile_bf16)
    GTEST_SKIP() << "no AVX512_BF16 on this CPU";
  const Kernels& k = kernels_for(Isa::Avx512);
  ThreadPool pool(2);
  Scratch scratch;
  const auto be = make_cpu_backend(2, Isa::Avx512, /*bf16_gemm=*/true);
  auto round_bf16 = [](float v) { return bf16_to_f32(f32_to_bf16(v)); };
  for (DType type : kTypes) {
    for (int64_t cols : {int64_t(type == DType::Q8_0 ? 64 : 61), int64_t(type == DType::Q8_0 ? 320 : 301)}) {
      const int64_t rows = 45;
      TestMatrix m = make_matrix(type, rows, cols, uint32_t(cols) + 1);
      TestMatrix rounded = m;
      for (float& v : rounded.values) v = round_bf16(v);
      const std::vector<float> bias = random_floats(size_t(rows), 5);
      for (int64_t n_tok : {kGemmMinTokens, int64_t(33), int64_t(130)}) {
        const std::vector<float> x = random_floats(size_t(n_tok * cols), uint32_t(n_tok) + 3);
        std::vector<float> xr = x;
        for (float& v : xr) v = round_bf16(v);
        const Weight w{type, m.bytes.data(), rows, cols, bias.data()};
        std::vector<float> y(size_t(n_tok * rows), NAN), y_backend(y.size(), NAN);
        matmul(k, pool, w, x.data(), n_tok, y.data(), scratch, /*bf16_gemm=*/true);
        be->matmul(w, x.data(), n_tok, y_backend.data());
        std::vector<double> ref, mag;
        reference_matmul(rounded, xr.data(), n_tok, bias.data(), ref, mag);
        for (size_t i = 0; i < y.size(); ++i) {
          ASSERT_NEAR(y[i], ref[i], kMatmulRelTol * mag[i] + 1e-7)
              << dtype_name(type) << " cols=" << cols << " n_tok=" << n_tok << " t=" << i / rows << " r=" << i % rows;
          ASSERT_EQ(y_backend[i], y[i]) << "the backend's bf16_gemm option must select the same path";
        }
      }
    }
  }
}

TEST(CpuKernels, ElementwiseKernelsMatchReference) {
  for (Isa isa : supported_isas()) {
    const Kernels& k = kernels_for(isa);
    for (int64_t n : {1, 7, 16, 33, 100, 1000}) {
      const std::vector<float> a = random_floats(size_t(n), 1), b = random_floats(size_t(n), 2, -8.0f, 8.0f);
      double d = 0, dmag = 0;
      for (int64_t i = 0; i < n; ++i) { d += double(a[i]) * b[i]; dmag += std::fabs(double(a[i]) * b[i]); }
      EXPECT_NEAR(k.dot(a.data(), b.data(), n), d, 1e-6 * dmag + 1e-7);

      std::vector<float> y = a;
      k.axpy(0.5f, b.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[i], a[i] + 0.5 * b[i], 1e-6 * (1 + std::fabs(b[i])));
      y = b;
      k.scale(y.data(), -3.0f, n);
      for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], -3.0f * b[i]);
      y = a;
      k.add(y.data(), b.data(), n);
      for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], a[i] + b[i]);

      std::vector<float> out(static_cast<size_t>(n));
      k.activate(Activation::Silu, out.data(), b.data(), a.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double g = b[i], ref = g / (1.0 + std::exp(-g)) * a[i];
        EXPECT_NEAR(out[i], ref, 2e-6 * (std::fabs(ref) + 1e-3)) << isa_name(isa) << " g=" << g;
      }
      k.activate(Activation::GeluTanh, out.data(), b.data(), nullptr, n);
      for (int64_t i = 0; i < n; ++i) {
        const double g = b[i], ref = 0.5 * g * (1.0 + std::tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
        EXPECT_NEAR(out[i], ref, 2e-6 * (std::fabs(ref) + 1e-3)) << isa_name(isa) << " gelu-tanh x=" << g;
      }
      k.activate(Activation::GeluErf, out.data(), b.data(), a.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double g = b[i], ref = 0.5 * g * (1.0 + std::erf(g / std::sqrt(2.0))) * a[i];
        EXPECT_NEAR(out[i], ref, 2e-6 * (std::fabs(ref) + 1e-3)) << isa_name(isa) << " gelu-erf x=" << g;
      }

      const std::vector<float> w = random_floats(size_t(n), 3, 0.5f, 1.5f);
      k.rmsnorm_row(out.data(), b.data(), w.data(), n, 1e-5f);
      double ss = 0;
      for (int64_t i = 0; i < n; ++i) ss += double(b[i]) * b[i];
      const double r = 1.0 / std::sqrt(ss / double(n) + 1e-5);
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(out[i], b[i] * r * w[i], 2e-6 * std::fabs(b[i] * r * w[i]) + 1e-7);

      const std::vector<float> bias = random_floats(size_t(n), 4);
      k.layernorm_row(out.data(), a.data(), w.data(), bias.data(), n, 1e-5f);
      double mean = 0, var = 0;
      for (int64_t i = 0; i < n; ++i) mean += a[i];
      mean /= double(n);
      for (int64_t i = 0; i < n; ++i) var += (a[i] - mean) * (a[i] - mean);
      const double inv = 1.0 / std::sqrt(var / double(n) + 1e-5);
      for (int64_t i = 0; i < n; ++i) {
        const double ref = (a[i] - mean) * inv * w[i] + bias[i];
        EXPECT_NEAR(out[i], ref, 4e-6 * std::fabs(ref) + 1e-6) << isa_name(isa) << " layernorm " << i;
      }
    }
  }
}

TEST(CpuKernels, ExpSumIsAccurateOverTheSoftmaxRange) {
  for (Isa isa : supported_isas()) {
    for (int64_t n : {1, 5, 16, 37, 300}) {
      std::vector<float> s = random_floats(size_t(n), 9, -120.0f, 0.0f);
      s[0] = 0.0f;
      const std::vector<float> orig = s;
      const float sum = kernels_for(isa).exp_sum(s.data(), n, 0.0f);
      double ref_sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double e = std::exp(double(orig[i]));
        ref_sum += e;
        // Relative accuracy while normal; results below FLT_MIN may flush towards zero.
        EXPECT_NEAR(s[i], e, 4e-7 * e + 1.2e-38) << isa_name(isa) << " x=" << orig[i];
      }
      EXPECT_NEAR(sum, ref_sum, 1e-6 * ref_sum);
    }
  }
}

// ---- Backend-level tests, run once per instruction set ------------------------------------------

class CpuBackendTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!isa_supported(GetParam())) GTEST_SKIP() << isa_name(GetParam()) << " not supported here";
    be = make_cpu_backend(2, GetParam());
  }
  std::unique_ptr<Backend> be;
};

TEST_P(CpuBackendTest, MatmulMatchesReferenceAcrossDecodeAndGemmPaths) {
  for (DType type : kFloatTypes) {
    // 300 columns exceed one GEMM depth block; 45 rows leave partial row panels.
    for (int64_t cols : {61, 300}) {
      const int64_t rows = 45;
      const TestMatrix m = make_matrix(type, rows, cols, uint32_t(cols));
      const std::vector<float> bias = random_floats(size_t(rows), 77);
      for (int64_t n_tok : {1, 2, 3, 7, 31, 33, 130}) {
        const std::vector<float> x = random_floats(size_t(n_tok * cols), uint32_t(n_tok));
        for (bool with_bias : {false, true}) {
          const Weight w = be->prepare_weight(type, m.bytes.data(), rows, cols, with_bias ? bias.data() : nullptr);
          std::vector<float> y(size_t(n_tok * rows), NAN);
          be->matmul(w, x.data(), n_tok, y.data());
          std::vector<double> ref, mag;
          reference_matmul(m, x.data(), n_tok, with_bias ? bias.data() : nullptr, ref, mag);
          for (size_t i = 0; i < y.size(); ++i)
            ASSERT_NEAR(y[i], ref[i], kMatmulRelTol * mag[i] + 1e-7)
                << dtype_name(type) << " cols=" << cols << " n_tok=" << n_tok << " bias=" << with_bias
                << " t=" << i / rows << " r=" << i % rows;
        }
      }
    }
  }
}

TEST_P(CpuBackendTest, EmbedDecodesRowsAndRejectsOutOfRangeTokens) {
  for (DType type : kTypes) {
    const int64_t rows = 10, cols = type == DType::Q8_0 ? 96 : 37;
    const TestMatrix m = make_matrix(type, rows, cols, 3);
    const Weight table = be->prepare_weight(type, m.bytes.data(), rows, cols, nullptr);
    const int32_t tokens[] = {9, 0, 4, 4};
    std::vector<float> out(4 * size_t(cols));
    be->embed(table, tokens, 4, out.data());
    for (int t = 0; t < 4; ++t)
      for (int64_t c = 0; c < cols; ++c) EXPECT_EQ(out[size_t(t * cols + c)], m.values[size_t(tokens[t] * cols + c)]);
    const int32_t bad[] = {1, 10};
    EXPECT_THROW(be->embed(table, bad, 2, out.data()), std::out_of_range);
    const int32_t negative[] = {-1};
    EXPECT_THROW(be->embed(table, negative, 1, out.data()), std::out_of_range);
  }
}

TEST_P(CpuBackendTest, RmsnormSwigluAddOverManyRows) {
  const int64_t n_tok = 70, dim = 515;  // large enough to take the multi-threaded path
  const std::vector<float> x = random_floats(size_t(n_tok * dim), 1, -4.0f, 4.0f), w = random_floats(size_t(dim), 2);
  std::vector<float> out(x.size());
  be->rmsnorm(out.data(), x.data(), w.data(), n_tok, dim, 1e-6f);
  for (int64_t t = 0; t < n_tok; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[t * dim + i]) * x[t * dim + i];
    const double r = 1.0 / std::sqrt(ss / double(dim) + 1e-6);
    for (int64_t i = 0; i < dim; ++i) {
      const double ref = x[t * dim + i] * r * w[i];
      ASSERT_NEAR(out[t * dim + i], ref, 2e-6 * std::fabs(ref) + 1e-7) << "t=" << t << " i=" << i;
    }
  }
  const std::vector<float> g = random_floats(x.size(), 4, -20.0f, 20.0f);
  be->activate(Activation::Silu, out.data(), g.data(), x.data(), n_tok, dim, dim);
  for (size_t i = 0; i < x.size(); ++i) {
    const double ref = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * x[i];
    ASSERT_NEAR(out[i], ref, 2e-6 * std::fabs(ref) + 1e-7) << i;
  }
  // Fused rows: gate in the first `half` values of each row of x, up in the next `half`.
  const int64_t half = 251;
  std::vector<float> fused_out(size_t(n_tok * half), -1.0f);
  be->activate(Activation::Silu, fused_out.data(), x.data(), x.data() + half, n_tok, half, dim);
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double gv = x[size_t(t * dim + i)], uv = x[size_t(t * dim + half + i)];
      const double ref = gv / (1.0 + std::exp(-gv)) * uv;
      ASSERT_NEAR(fused_out[size_t(t * half + i)], ref, 2e-6 * std::fabs(ref) + 1e-7) << t << " " << i;
    }
  std::vector<float> acc = x;
  be->add(acc.data(), g.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(acc[i], x[i] + g[i]) << i;
}

TEST_P(CpuBackendTest, Copy2dMovesColumnBlocks) { test::check_copy_2d(*be); }

// RoPE against long double, at positions far beyond where a float angle would be useless. The
// backend reduces the angle in extended precision, so the error stays at float rounding even at
// 2^40 (a plain double angle would be off by ~1e-4 there and fail).
TEST_P(CpuBackendTest, RopeAndStoreMatchLongDoubleReferenceAtHugePositions) {
  test::check_rope_and_store(*be, [](int64_t pos, int i, int d, const RopeParams& p) {
    return (long double)pos * test::reference_inv_freq(i, d, p);
  }, 2e-6);
}

TEST_P(CpuBackendTest, AddRmsnormMatchesReference) { test::check_add_rmsnorm(*be); }
TEST_P(CpuBackendTest, LayernormsMatchReference) { test::check_layernorms(*be); }
TEST_P(CpuBackendTest, ActivationsAndClampMatchReference) { test::check_activations(*be); }
TEST_P(CpuBackendTest, KvCacheTypesStoreAndAttendExactly) { test::check_kv_storage(*be); }

TEST_P(CpuBackendTest, GatherRows) {
  const int64_t width = 5;
  const std::vector<float> table = random_floats(8 * width, 1);
  std::vector<float> back(3 * width);
  const int64_t order[] = {3, 6, 1};
  be->gather_rows(back.data(), width, order, table.data(), 3);
  for (int i = 0; i < 3; ++i)
    for (int64_t c = 0; c < width; ++c) EXPECT_EQ(back[size_t(i * width + c)], table[size_t(order[i] * width + c)]);
}

// Naive attention: every visible key listed explicitly, softmax in double.
// With ALiBi slopes, key j of n (sinks first) is penalised by slope * (n - 1 - j).
void reference_attention(const float* q_win, const float* q_sink, int64_t n_tok, int n_heads, int n_kv,
                         int hd, const float* k, const float* v, const AttnSpan* spans, const float* slopes,
                         std::vector<double>& out) {
  out.assign(size_t(n_tok * n_heads * hd), 0.0);
  for (int64_t t = 0; t < n_tok; ++t)
    for (int h = 0; h < n_heads; ++h) {
      const AttnSpan& s = spans[t];
      const int kvh = h / (n_heads / n_kv);
      std::vector<int64_t> rows;
      std::vector<const float*> qs;
      for (int j = 0; j < s.n_sink; ++j) { rows.push_back(s.row0 + j); qs.push_back(q_sink); }
      for (int i = 0; i < s.n_win; ++i) {
        rows.push_back(s.row0 + s.sink_rows + (s.win_begin + i) % s.ring_size);
        qs.push_back(q_win);
      }
      std::vector<double> sc(rows.size());
      double mx = -INFINITY;
      for (size_t j = 0; j < rows.size(); ++j) {
        double d = 0;
        for (int c = 0; c < hd; ++c)
          d += double(qs[j][(t * n_heads + h) * hd + c]) * k[(rows[j] * n_kv + kvh) * hd + c];
        sc[j] = d / std::sqrt(double(hd)) - (slopes ? slopes[h] * double(rows.size() - 1 - j) : 0.0);
        mx = std::max(mx, sc[j]);
      }
      double sum = 0;
      for (double& x : sc) sum += (x = std::exp(x - mx));
      for (size_t j = 0; j < rows.size(); ++j)
        for (int c = 0; c < hd; ++c)
          out[size_t((t * n_heads + h) * hd + c)] += sc[j] / sum * v[(rows[j] * n_kv + kvh) * hd + c];
    }
}

TEST_P(CpuBackendTest, AttentionMatchesNaiveReferenceWithSinksWrappedRingsAndGqa) {
  // 6 heads over 2 KV heads, 5 tokens; and one decoding token of 8 heads sharing one KV head (MQA),
  // where the backend splits the group across threads.
  struct Shape { int n_heads, n_kv, n_tok; };
  for (const Shape sh : {Shape{6, 2, 5}, Shape{8, 1, 1}})
  for (int hd : {40, 64}) {
    const int n_heads = sh.n_heads, n_kv = sh.n_kv;
    const int sink_rows = 4, ring = 10, slot_rows = sink_rows + ring, n_slots = 2;
    const std::vector<float> k = random_floats(size_t(n_slots * slot_rows * n_kv * hd), 1, -2.0f, 2.0f);
    const std::vector<float> v = random_floats(k.size(), 2);
    const std::vector<AttnSpan> spans = {
        {slot_rows, sink_rows, 4, ring, 3, ring},     // full ring starting mid-way
        {0, sink_rows, 1, ring, 0, 1},                // first token of a stream
        {slot_rows, sink_rows, 2, ring, 7, 6},        // n_sink < sink_rows, ring wraps 7..9,0..2
        {0, sink_rows, 0, ring, 9, 3},                // window only, wrapping from the last row
        {slot_rows, sink_rows, 4, ring, 0, 0},        // sinks only
    };
    const int64_t n_tok = sh.n_tok;
    const std::vector<float> qw = random_floats(size_t(n_tok * n_heads * hd), 3, -2.0f, 2.0f);
    const std::vector<float> qs = random_floats(qw.size(), 4, -2.0f, 2.0f);
    const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.7f, 0.35f, 0.03f, 0.9f, 0.01f};
    for (const float* alibi : {static_cast<const float*>(nullptr), slopes.data()}) {
      std::vector<float> out(qw.size(), NAN);
      be->attention(qw.data(), qs.data(), n_tok, n_heads, n_kv, hd, DType::F32, k.data(), v.data(), spans.data(),
                    alibi, out.data());
      std::vector<double> ref;
      reference_attention(qw.data(), qs.data(), n_tok, n_heads, n_kv, hd, k.data(), v.data(), spans.data(), alibi,
                          ref);
      for (size_t i = 0; i < out.size(); ++i)
        ASSERT_NEAR(out[i], ref[i], 3e-6) << "hd=" << hd << (alibi ? " alibi" : "") << " t=" << i / (n_heads * hd)
                                          << " h=" << (i / hd) % n_heads;
    }
  }
}

TEST_P(CpuBackendTest, AttentionRejectsBadHeadGroupingAndSpans) {
  float buf[64] = {};
  const AttnSpan ok{0, 2, 1, 4, 0, 1};
  EXPECT_THROW(be->attention(buf, buf, 1, 3, 2, 4, DType::F32, buf, buf, &ok, nullptr, buf), std::invalid_argument);
  const AttnSpan too_many_sinks{0, 2, 3, 4, 0, 1};
  EXPECT_THROW(be->attention(buf, buf, 1, 2, 1, 4, DType::F32, buf, buf, &too_many_sinks, nullptr, buf), std::invalid_argument);
  const AttnSpan begin_outside_ring{0, 2, 1, 4, 4, 1};
  EXPECT_THROW(be->attention(buf, buf, 1, 2, 1, 4, DType::F32, buf, buf, &begin_outside_ring, nullptr, buf), std::invalid_argument);
}

TEST_P(CpuBackendTest, AllocIsAlignedAndReleaseChecksOwnership) {
  void* a = be->alloc(1);
  void* b = be->alloc(size_t(1) << 26);  // not touched at allocation
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 64, 0u);
  be->zero(b, 4096);
  EXPECT_EQ(static_cast<char*>(b)[4095], 0);
  be->release(a);
  EXPECT_THROW(be->release(a), std::invalid_argument);
  int local = 0;
  EXPECT_THROW(be->release(&local), std::invalid_argument);
  // b is left for the destructor to free.
}

TEST_P(CpuBackendTest, PrepareWeightRejectsBadShapes) {
  float data[64] = {};
  EXPECT_THROW(be->prepare_weight(DType::Q8_0, data, 1, 48, nullptr), std::invalid_argument);
  EXPECT_THROW(be->prepare_weight(DType::F32, data, 0, 4, nullptr), std::invalid_argument);
  EXPECT_THROW(be->prepare_weight(DType::F32, nullptr, 1, 4, nullptr), std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(AllIsas, CpuBackendTest, ::testing::Values(Isa::Scalar, Isa::Avx2, Isa::Avx512),
                         [](const auto& info) { return std::string(isa_name(info.param)); });

TEST(CpuBackend, NameReportsIsaAndThreads) {
  const auto be = sinkserve::make_cpu_backend(2);
  EXPECT_NE(be->name().find(isa_name(best_isa())), std::string::npos) << be->name();
  EXPECT_NE(be->name().find("2 threads"), std::string::npos) << be->name();
}

// ---- Thread pool -----------------------------------------------------------------------------

TEST(ThreadPool, EveryIndexVisitedExactlyOnceOverManySizesAndRepeats) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 2, 3, 5, 7, 64, 1001, 100000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (int rep = 0; rep < 50; ++rep) {
        pool.parallel_for(n, [&](int64_t b, int64_t e) {
          ASSERT_LE(0, b);
          ASSERT_LT(b, e);
          ASSERT_LE(e, n);
          for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1, std::memory_order_relaxed);
        });
      }
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 50) << "n=" << n << " i=" << i;
    }
  }
}

TEST(ThreadPool, UsesMoreThanOneThreadAndSurvivesIdleSleep) {
  ThreadPool pool(2);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // workers are asleep on the futex now
  std::vector<std::thread::id> ids(64);
  pool.parallel_for(64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      ids[size_t(i)] = std::this_thread::get_id();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  bool other = false;
  for (auto id : ids) other |= id != std::this_thread::get_id();
  EXPECT_TRUE(other) << "the worker never took a piece";
}

TEST(ThreadPool, RethrowsTheFirstExceptionAndStaysUsable) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(100, [](int64_t b, int64_t) {
    if (b >= 0) throw std::runtime_error("boom");
  }), std::runtime_error);
  std::atomic<int64_t> sum{0};
  pool.parallel_for(1000, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 999 * 1000 / 2);
}

TEST(ThreadPool, NestedCallsRunInline) {
  ThreadPool pool(2);
  std::atomic<int64_t> count{0};
  pool.parallel_for(8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      pool.parallel_for(10, [&](int64_t bb, int64_t ee) { count += ee - bb; });
  });
  EXPECT_EQ(count.load(), 80);
}

TEST(ThreadPool, RejectsNegativeThreadCount) { EXPECT_THROW(ThreadPool(-1), std::invalid_argument); }

TEST(MemoryBandwidth, ProbeReportsAPlausibleRate) {
  ThreadPool pool(2);
  const double bw = measure_read_bandwidth(pool, size_t(64) << 20);
  EXPECT_GT(bw, 1e8);   // any machine streams more than 100 MB/s
  EXPECT_LT(bw, 1e13);  // and less than 10 TB/s: a faster result means the loads were skipped
}

}  // namespace
}  // namespace sinkserve::cpu
