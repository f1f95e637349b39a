#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <stdexcept>

#include "parallel/mpi_environment.h"

namespace sinkserve {
namespace {

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() { mpi::dup_world(&comm_, &rank_, &size_); }
  ~MpiCommunicator() override {
    if (mpi::initialized()) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  void all_reduce_sum(float* buf, size_t n) override {
    for (size_t off = 0; off < n; off += mpi::kMaxCount) {
      int count = static_cast<int>(std::min(mpi::kMaxCount, n - off));
      mpi::check(MPI_Allreduce(MPI_IN_PLACE, buf + off, count, MPI_FLOAT, MPI_SUM, comm_),
                 "MPI_Allreduce");
    }
  }

  void all_gather(const float* send, float* recv, size_t n) override {
    // Splitting a gather would interleave the ranks' pieces; 2^31 floats per rank (8 GiB) is far
    // beyond any activation or logits slice, so refuse rather than chunk.
    if (n > static_cast<size_t>(INT_MAX))
      throw std::length_error("all_gather of " + std::to_string(n) +
                              " floats per rank exceeds MPI's int count limit");
    const void* src = send == recv + static_cast<size_t>(rank_) * n ? MPI_IN_PLACE : send;
    mpi::check(MPI_Allgather(src, static_cast<int>(n), MPI_FLOAT, recv, static_cast<int>(n),
                             MPI_FLOAT, comm_),
               "MPI_Allgather");
  }

  void broadcast(void* host_buf, size_t bytes, int root) override {
    mpi::check_root(root, size_);
    mpi::broadcast_bytes(host_buf, bytes, root, comm_);
  }

  void all_reduce_sum_u64(uint64_t* host_buf, size_t n) override {
    mpi::all_reduce_sum_u64(host_buf, n, comm_);
  }

  void barrier() override { mpi::check(MPI_Barrier(comm_), "MPI_Barrier"); }

  [[noreturn]] void abort(const std::string& message) override { mpi::abort_job(rank_, message); }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() {
  return std::make_unique<MpiCommunicator>();
}

}  // namespace sinkserve
