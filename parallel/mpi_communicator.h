// Collectives over MPI on host buffers: the communicator of CPU-backend tensor parallelism.
#pragma once
#include <memory>

#include "parallel/communicator.h"

namespace sinkserve {

// Initializes MPI if needed and spans MPI_COMM_WORLD (on a private duplicate, so sinkserve's
// traffic never matches messages of other MPI users in the process). MPI errors become exceptions.
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace sinkserve
