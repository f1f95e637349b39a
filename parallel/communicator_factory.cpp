#include "parallel/communicator_factory.h"

#include <stdexcept>

#include "parallel/mpi_communicator.h"
#include "parallel/mpi_environment.h"
#ifdef SINKSERVE_HAVE_CUDA
#include "parallel/nccl/nccl_communicator.h"
#endif

namespace sinkserve {

std::unique_ptr<Communicator> make_communicator(const std::string& kind) {
  if (kind == "single") {
    int n = mpi::launcher_world_size();
    if (n > 1)
      throw std::runtime_error("communicator 'single' was requested but mpirun started " +
                               std::to_string(n) + " ranks; use 'auto' or 'mpi'");
    return make_single_communicator();
  }
  if (kind == "mpi") return make_mpi_communicator();
  if (kind == "nccl") {
#ifdef SINKSERVE_HAVE_CUDA
    return make_nccl_communicator();
#else
    throw std::runtime_error("communicator 'nccl' needs a CUDA build of sinkserve");
#endif
  }
  if (kind == "auto") {
    if (!mpi::launched_by_mpirun()) return make_single_communicator();
    int n = mpi::launcher_world_size();
    if (n == 1) return make_single_communicator();
    // A PMIx launcher that does not advertise the size: ask MPI itself.
    auto comm = make_mpi_communicator();
    if (comm->size() == 1) return make_single_communicator();
    return comm;
  }
  throw std::invalid_argument("unknown communicator '" + kind +
                              "' (expected auto, mpi, nccl or single)");
}

int node_local_rank() { return mpi::node_placement().local_rank; }
int node_local_size() { return mpi::node_placement().local_size; }

}  // namespace sinkserve
