// The CUDA backend's block-quantized weights, every type against a double-precision product of
// the CPU reference dequantization: the dequantizing GEMV kernels (up to 8 tokens per pass) and
// the F16-tile cuBLAS path of larger batches, with and without bias, on odd row counts; and the
// embedding lookup. Without a CUDA device the binary reports itself skipped (exit code 77).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/type_traits.h"
#include "tests/backend_io.h"

namespace sinkserve {
namespace {

using Vec = std::vector<float>;

class CudaQuantTest : public ::testing::Test {
 protected:
  void SetUp() override { be_ = make_cuda_backend(0); }
  Vec random(size_t n, float scale = 1.0f) {
    std::normal_distribution<float> g(0.0f, scale);
    Vec v(n);
    for (float& x : v) x = g(rng_);
    return v;
  }
  std::unique_ptr<Backend> be_;
  std::mt19937 rng_{7};
};

std::vector<DType> block_types() {
  std::vector<DType> out;
  for (const TypeTraits& t : all_type_traits())
    if (dtype_is_quantized(t.type)) out.push_back(t.type);
  return out;
}

// ||a - b|| / ||b||; a non-finite value (an unwritten, poisoned output) makes it infinite.
double rel_err(const Vec& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST_F(CudaQuantTest, MatmulOfEveryBlockTypeOnBothPaths) {
  const int64_t batches[] = {1, 3, 8, 9, 64};
  for (DType t : block_types()) {
    for (int64_t rows : {37, 301}) {
      const int64_t cols = 768;
      const Vec src = random(size_t(rows * cols));
      std::vector<uint8_t> bytes(size_t(rows * dtype_row_bytes(t, cols)));
      std::vector<double> deq;
      Vec row(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        uint8_t* dst = bytes.data() + r * dtype_row_bytes(t, cols);
        quantize_row(t, src.data() + r * cols, dst, cols);
        dequantize_row(t, dst, row.data(), cols);
        deq.insert(deq.end(), row.begin(), row.end());
      }
      const Vec bias = random(size_t(rows));
      for (bool with_bias : {false, true}) {
        const Weight w = be_->prepare_weight(t, bytes.data(), rows, cols, with_bias ? bias.data() : nullptr);
        for (int64_t n : batches) {
          const Vec x = random(size_t(n * cols));
          float* dx = test::to_backend(*be_, x);
          float* dy = test::to_backend(*be_, Vec(size_t(n * rows), std::numeric_limits<float>::quiet_NaN()));
          be_->matmul(w, dx, n, dy);
          const Vec y = test::from_backend(*be_, dy, size_t(n * rows));
          std::vector<double> ref(size_t(n * rows));
          for (int64_t i = 0; i < n; ++i)
            for (int64_t r = 0; r < rows; ++r) {
              double acc = with_bias ? bias[size_t(r)] : 0.0;
              for (int64_t c = 0; c < cols; ++c) acc += deq[size_t(r * cols + c)] * x[size_t(i * cols + c)];
              ref[size_t(i * rows + r)] = acc;
            }
          // The GEMV kernels multiply the decoded weights in F32; beyond 8 tokens weights and
          // activations are rounded to F16 for cuBLAS.
          const double tol = n <= 8 ? 2e-6 : 2e-3;
          EXPECT_LT(rel_err(y, ref), tol) << dtype_name(t) << " " << rows << "x" << cols << " n_tok " << n
                                          << (with_bias ? " +bias" : "");
          be_->release(dx);
          be_->release(dy);
        }
      }
    }
  }
}

TEST_F(CudaQuantTest, EmbedDecodesEveryBlockType) {
  for (DType t : block_types()) {
    const int64_t vocab = 41, dim = 512;
    const Vec src = random(size_t(vocab * dim));
    std::vector<uint8_t> bytes(size_t(vocab * dtype_row_bytes(t, dim)));
    for (int64_t r = 0; r < vocab; ++r)
      quantize_row(t, src.data() + r * dim, bytes.data() + r * dtype_row_bytes(t, dim), dim);
    const Weight w = be_->prepare_weight(t, bytes.data(), vocab, dim, nullptr);
    const std::vector<int32_t> tokens = {0, 40, 7, 7, 19};
    float* out = test::to_backend(*be_, Vec(tokens.size() * size_t(dim), std::numeric_limits<float>::quiet_NaN()));
    be_->embed(w, tokens.data(), int64_t(tokens.size()), out);
    const Vec got = test::from_backend(*be_, out, tokens.size() * size_t(dim));
    Vec ref(static_cast<size_t>(dim));
    for (size_t k = 0; k < tokens.size(); ++k) {
      dequantize_row(t, bytes.data() + tokens[k] * dtype_row_bytes(t, dim), ref.data(), dim);
      // One FMA where the reference rounds twice.
      for (int64_t c = 0; c < dim; ++c)
        ASSERT_NEAR(got[k * size_t(dim) + size_t(c)], ref[size_t(c)], 1e-6 * std::fabs(ref[size_t(c)]) + 1e-30)
            << dtype_name(t) << " token " << tokens[k] << " column " << c;
    }
    be_->release(out);
  }
}

TEST_F(CudaQuantTest, PrepareWeightRejectsPartialSuperBlocks) {
  std::vector<uint8_t> junk(4096);
  EXPECT_THROW(be_->prepare_weight(DType::Q4_K, junk.data(), 2, 128, nullptr), std::invalid_argument);
  EXPECT_THROW(be_->prepare_weight(DType::Q6_K, junk.data(), 1, 288, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace sinkserve
