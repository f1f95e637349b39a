// The CUDA entry points of a build without the CUDA backend.
#include <stdexcept>

#include "kernels/backend.h"

namespace sinkserve {

std::unique_ptr<Backend> make_cuda_backend(int) {
  throw std::runtime_error("this sinkserve was built without CUDA (configure with -DSINKSERVE_CUDA=ON)");
}
bool cuda_compiled_in() { return false; }
int cuda_device_count() { return 0; }

}  // namespace sinkserve
