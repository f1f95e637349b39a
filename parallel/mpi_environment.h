// Process-wide MPI state shared by the MPI and NCCL communicators: one MPI_Init_thread per process,
// one MPI_Finalize at exit, what the launcher tells us before MPI is even initialized, and the
// host-side MPI calls both communicators make.
#pragma once
#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace sinkserve::mpi {

// Whether this process was started by an MPI launcher (mpirun/mpiexec, or srun with PMI/PMIx).
bool launched_by_mpirun();
// The job size the launcher advertises in the environment, or -1 when it does not say.
int launcher_world_size();

// Initializes MPI once (thread level at least MPI_THREAD_FUNNELED: only the thread that creates the
// communicator may call into it) and registers MPI_Finalize for normal process exit.
void ensure_initialized();
bool initialized();  // initialized and not yet finalized

// This process's index among the job's processes on the same node, and how many there are: from
// MPI_COMM_TYPE_SHARED when MPI is up, else from the launcher's environment, else (0, 1). With MPI
// up, the first call is collective over the whole job; later calls answer from memory, so that a
// rank may build a single-rank engine of its own (tests) without waiting for the others.
struct NodePlacement {
  int local_rank = 0;
  int local_size = 1;
};
NodePlacement node_placement();

// Throws std::runtime_error("<what>: <MPI's error string>") when rc is not MPI_SUCCESS. MPI errors
// become exceptions (the communicators set MPI_ERRORS_RETURN), so run_ranked can report them.
void check(int rc, const char* what);

// MPI counts are ints; larger buffers go in pieces of this many elements.
constexpr size_t kMaxCount = size_t{1} << 30;

// Initializes MPI if needed and sets *comm to a private duplicate of MPI_COMM_WORLD that returns
// errors (MPI_ERRORS_RETURN), with this process's rank and the job size in it.
void dup_world(MPI_Comm* comm, int* rank, int* size);

// Throws std::invalid_argument unless root is a rank of a job of `size`.
void check_root(int root, int size);
// MPI_Bcast of host bytes from root, and an in-place MPI_Allreduce sum of host u64 integers, over
// comm; buffers beyond MPI's int counts go in pieces.
void broadcast_bytes(void* buf, size_t bytes, int root, MPI_Comm comm);
void all_reduce_sum_u64(uint64_t* buf, size_t n, MPI_Comm comm);

// Prints "sinkserve: rank R: <message>" and ends the whole job (MPI_Abort when MPI is up).
[[noreturn]] void abort_job(int rank, const std::string& message);

}  // namespace sinkserve::mpi
