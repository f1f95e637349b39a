#include "parallel/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

#include "parallel/mpi_environment.h"

namespace sinkserve {
namespace {

void cuda_check(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(rc));
}

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(void* stream)
      : stream_(stream ? static_cast<cudaStream_t>(stream) : cudaStreamLegacy) {
    if (mpi::launched_by_mpirun()) mpi::dup_world(&mpi_comm_, &rank_, &size_);
    std::string hint = bind_device();
    ncclUniqueId id;
    if (rank_ == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (size_ > 1)
      mpi::check(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi_comm_), "MPI_Bcast(ncclUniqueId)");
    try {
      nccl_check(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(e.what() + hint);
    }
  }

  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
    if (mpi_comm_ != MPI_COMM_NULL && mpi::initialized()) MPI_Comm_free(&mpi_comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }

  void all_reduce_sum(float* buf, size_t n) override {
    if (n == 0) return;
    nccl_check(ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce");
  }

  void all_gather(const float* send, float* recv, size_t n) override {
    if (n == 0) return;
    nccl_check(ncclAllGather(send, recv, n, ncclFloat32, comm_, stream_), "ncclAllGather");
  }

  void broadcast(void* host_buf, size_t bytes, int root) override {
    mpi::check_root(root, size_);
    if (size_ == 1) return;
    mpi::broadcast_bytes(host_buf, bytes, root, mpi_comm_);
  }

  void all_reduce_sum_u64(uint64_t* host_buf, size_t n) override {
    if (size_ == 1) return;
    mpi::all_reduce_sum_u64(host_buf, n, mpi_comm_);
  }

  // Device work first: a barrier promises every rank's enqueued collectives have completed.
  void barrier() override {
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    if (size_ > 1) mpi::check(MPI_Barrier(mpi_comm_), "MPI_Barrier");
  }

  [[noreturn]] void abort(const std::string& message) override { mpi::abort_job(rank_, message); }

 private:
  // Returns a hint for the likely cause should NCCL initialization fail.
  std::string bind_device() {
    int devices = 0;
    cuda_check(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    mpi::NodePlacement node = mpi::node_placement();
    int device = node.local_rank % devices;
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    // Ranks may each see a different single GPU (per-rank CUDA_VISIBLE_DEVICES), so sharing is
    // only a guess until NCCL, which refuses two ranks on one GPU, has looked.
    if (node.local_size <= devices) return {};
    return "; " + std::to_string(node.local_size) + " ranks on this node see " +
           std::to_string(devices) + " GPU(s), and NCCL needs one GPU per rank";
  }

  void nccl_check(ncclResult_t rc, const char* what) const {
    if (rc == ncclSuccess) return;
    std::string msg = std::string(what) + ": " + ncclGetErrorString(rc);
    if (const char* last = ncclGetLastError(comm_); last && *last) msg += std::string(" (") + last + ")";
    throw std::runtime_error(msg);
  }

  cudaStream_t stream_;
  MPI_Comm mpi_comm_ = MPI_COMM_NULL;
  ncclComm_t comm_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(void* cuda_stream) {
  return std::make_unique<NcclCommunicator>(cuda_stream);
}

}  // namespace sinkserve
