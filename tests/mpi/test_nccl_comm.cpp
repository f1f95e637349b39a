// The NCCL communicator on device buffers, checked against values computed from the rank ids.
// Run alone (one rank) or under mpirun with one rank per visible GPU. Exit code 77 (skipped)
// where no GPU is visible.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "launcher/rank_guard.h"
#include "parallel/communicator_factory.h"

using namespace sinkserve;

namespace {

void cuda(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(rc));
}

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("check failed: " + what);
}

// Device copy of a host vector; cudaMemcpy orders itself after the collectives, which run on the
// legacy default stream.
struct DeviceBuffer {
  float* p = nullptr;
  explicit DeviceBuffer(size_t n) {
    cuda(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(float)), "cudaMalloc");
  }
  ~DeviceBuffer() { cudaFree(p); }
  void put(const std::vector<float>& h) {
    cuda(cudaMemcpy(p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice), "to device");
  }
  std::vector<float> get(size_t n) const {
    std::vector<float> h(n);
    cuda(cudaMemcpy(h.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost), "to host");
    return h;
  }
};

void all_reduce(Communicator& c, size_t n) {
  const int S = c.size(), r = c.rank();
  std::vector<float> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = float((r + 1) * int(i % 1021)) - float(r);
  DeviceBuffer d(n);
  d.put(h);
  c.all_reduce_sum(d.p, n);
  h = d.get(n);
  for (size_t i = 0; i < n; ++i) {
    float want = float(S * (S + 1) / 2) * float(i % 1021) - float(S * (S - 1) / 2);
    check(h[i] == want, "all_reduce_sum n=" + std::to_string(n) + " at " + std::to_string(i));
  }
}

void all_gather(Communicator& c, size_t n) {
  const int S = c.size(), r = c.rank();
  std::vector<float> own(n);
  for (size_t i = 0; i < n; ++i) own[i] = float(r * 100000 + int(i % 50000));
  DeviceBuffer send(n), recv(n * S);
  send.put(own);
  c.all_gather(send.p, recv.p, n);
  std::vector<float> h = recv.get(n * S);
  for (int src = 0; src < S; ++src)
    for (size_t i = 0; i < n; ++i)
      check(h[src * n + i] == float(src * 100000 + int(i % 50000)),
            "all_gather n=" + std::to_string(n) + " rank " + std::to_string(src));
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("test_nccl_comm: skipped, no CUDA device\n");
    return 77;
  }
  auto comm = make_communicator("nccl");
  return run_ranked("test_nccl_comm", *comm, [&]() -> int {
    Communicator& c = *comm;
    check(c.name() == "nccl", "name " + c.name());
    for (size_t n : {size_t{0}, size_t{1}, size_t{4097}, size_t{1} << 20}) all_reduce(c, n);
    for (size_t n : {size_t{1}, size_t{33}, size_t{1} << 18}) all_gather(c, n);
    uint64_t u[2] = {(uint64_t{1} << 60) + uint64_t(c.rank()), 1};
    c.all_reduce_sum_u64(u, 2);
    uint64_t S = c.size();
    check(u[0] == S * (uint64_t{1} << 60) + S * (S - 1) / 2 && u[1] == S, "all_reduce_sum_u64");
    int token = c.rank() == 0 ? 1234 : -1;
    c.broadcast(&token, sizeof token, 0);
    check(token == 1234, "broadcast");
    c.barrier();
    if (c.rank() == 0) std::printf("test_nccl_comm: nccl, %d rank(s): ok\n", c.size());
    return 0;
  });
}
