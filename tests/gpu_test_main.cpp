// main() of the GPU tests: without a usable CUDA device they report themselves skipped (exit 77,
// which ctest counts as skipped) instead of passing silently.
#include <cstdio>

#include <gtest/gtest.h>

#include "kernels/backend.h"

int main(int argc, char** argv) {
  if (sinkserve::cuda_device_count() == 0) {
    std::printf("SKIPPED: no CUDA device (%s)\n",
                sinkserve::cuda_compiled_in() ? "none visible" : "built without CUDA");
    return 77;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
