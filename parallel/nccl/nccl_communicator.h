// Collectives over NCCL on device buffers: the communicator of CUDA-backend tensor parallelism.
// Compiled only in CUDA builds (SINKSERVE_HAVE_CUDA).
#pragma once
#include <memory>

#include "parallel/communicator.h"

namespace sinkserve {

// Binds this process to GPU (node-local rank) % (visible GPUs) and joins every rank of the job
// (just this process when not launched by mpirun) into one NCCL communicator; MPI carries the
// NCCL id, the host broadcasts and the host integer sums.
//
// The reductions are enqueued on `cuda_stream` (a cudaStream_t), by default the legacy default
// stream, which orders them after earlier work of every blocking stream of the device and before
// later work: a backend on a stream created with cudaStreamNonBlocking must pass its stream here.
// They return once enqueued; results are visible to later work on the device in stream order.
std::unique_ptr<Communicator> make_nccl_communicator(void* cuda_stream = nullptr);

}  // namespace sinkserve
