// Picks and builds the communicator of a run from the --comm option and how the process was
// launched.
#pragma once
#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace sinkserve {

// kind:
//   "single"  one rank; refused when the launcher started more than one process.
//   "mpi"     MPI over host buffers (CPU backend); initializes MPI, also outside mpirun.
//   "nccl"    NCCL over device buffers (CUDA backend), any number of ranks including one; the
//             process binds GPU (node-local rank) % (visible GPUs). Only in CUDA builds.
//   "auto"    "mpi" when launched by mpirun with more than one process, else "single". A caller
//             whose model runs on the CUDA backend asks for "nccl" instead.
// Throws std::invalid_argument for an unknown kind and std::runtime_error when the kind cannot
// run here. MPI is finalized when the process exits normally.
std::unique_ptr<Communicator> make_communicator(const std::string& kind);

// This process's index among the job's processes on its node (0 outside mpirun): the GPU a CUDA
// backend should use is node_local_rank() % device_count, the same one the NCCL communicator binds.
int node_local_rank();
// How many of the job's processes share this node (1 outside mpirun).
int node_local_size();

}  // namespace sinkserve
