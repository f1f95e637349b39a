// The one-rank communicator: every collective over a group of one is the identity.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "parallel/communicator.h"

namespace sinkserve {
namespace {

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single"; }
  void all_reduce_sum(float*, size_t) override {}
  // Host memory only: a single-rank CUDA run uses the NCCL communicator (which also works with one
  // rank), so the model's device buffers never reach this memmove.
  void all_gather(const float* send, float* recv, size_t n) override {
    if (send != recv && n) std::memmove(recv, send, n * sizeof(float));
  }
  void broadcast(void*, size_t, int root) override { check_root(root); }
  void all_reduce_sum_u64(uint64_t*, size_t) override {}
  void barrier() override {}
  [[noreturn]] void abort(const std::string& message) override {
    std::fprintf(stderr, "sinkserve: rank 0: %s\n", message.c_str());
    std::fflush(stderr);
    std::_Exit(1);
  }

 private:
  static void check_root(int root) {
    if (root != 0)
      throw std::invalid_argument("broadcast root " + std::to_string(root) +
                                  " is not a rank of a single-rank group");
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_communicator() {
  return std::make_unique<SingleCommunicator>();
}

}  // namespace sinkserve
