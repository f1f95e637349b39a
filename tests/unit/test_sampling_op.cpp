// Backend::sample on the CPU backend: the draws against the reference distribution and the
// edge cases every backend must meet (tests/sample_op_checks.h).
#include <gtest/gtest.h>

#include "tests/sample_op_checks.h"

namespace sinkserve::test {
namespace {

class CpuSampleTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be_ = make_cpu_backend(1);
};

TEST_F(CpuSampleTest, StratifiedDrawsFollowTheReferenceDistribution) {
  check_stratified_draws_follow_reference(*be_);
}
TEST_F(CpuSampleTest, DrawWalksVocabularyOrder) { check_draw_walks_vocabulary_order(*be_); }
TEST_F(CpuSampleTest, GreedyTiesAndNonFiniteRows) { check_greedy_ties_and_non_finite_rows(*be_); }
TEST_F(CpuSampleTest, BadSpecsAreRefused) { check_bad_specs_are_refused(*be_); }

}  // namespace
}  // namespace sinkserve::test
