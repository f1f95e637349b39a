// Collective communication between the ranks of one tensor-parallel group. Buffers passed to the
// reductions live in the memory space of the model's backend (host for MPI, device for NCCL);
// broadcast() always takes host memory, since it carries step plans, not activations.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace sinkserve {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;
  // In-place elementwise sum over all ranks.
  virtual void all_reduce_sum(float* buf, size_t n) = 0;
  // recv = the ranks' send buffers (n floats each) concatenated in rank order.
  virtual void all_gather(const float* send, float* recv, size_t n) = 0;
  // Host bytes from root to every rank.
  virtual void broadcast(void* host_buf, size_t bytes, int root) = 0;
  // In-place sum of host integers over all ranks.
  virtual void all_reduce_sum_u64(uint64_t* host_buf, size_t n) = 0;
  virtual void barrier() = 0;
  // Ends every rank of the job with this message and exit code 1. Never returns.
  [[noreturn]] virtual void abort(const std::string& message) = 0;
};

// One rank, nothing to communicate.
std::unique_ptr<Communicator> make_single_communicator();

}  // namespace sinkserve
