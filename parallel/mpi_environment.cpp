#include "parallel/mpi_environment.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace sinkserve::mpi {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

// Finalizes MPI during static destruction, after main() has returned and every communicator built
// in it is gone. A function-local static, so it is constructed (and thus destroyed) only in
// processes that actually initialized MPI.
struct Finalizer {
  ~Finalizer() {
    if (initialized()) MPI_Finalize();
  }
};

}  // namespace

bool launched_by_mpirun() {
  return env("OMPI_COMM_WORLD_SIZE") || env("PMIX_RANK") || env("PMI_RANK") || env("PMI_SIZE");
}

int launcher_world_size() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* v = env(name)) {
      char* end = nullptr;
      long n = std::strtol(v, &end, 10);
      if (*end == '\0' && n > 0) return static_cast<int>(n);
    }
  }
  return -1;
}

void ensure_initialized() {
  if (initialized()) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) throw std::logic_error("MPI was already finalized in this process");
  // SERIALIZED is asked for so that a caller moving its compute loop to another thread keeps
  // working where the library allows it; FUNNELED is all sinkserve needs (rank 0's HTTP thread
  // never calls MPI), so it is the floor.
  int provided = 0;
  int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
  if (rc != MPI_SUCCESS) throw std::runtime_error("MPI_Init_thread failed");
  static Finalizer finalizer;
  if (provided < MPI_THREAD_FUNNELED)
    throw std::runtime_error("the MPI library provides no multithreading support "
                             "(MPI_THREAD_FUNNELED is required)");
}

bool initialized() {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  return inited && !finalized;
}

NodePlacement node_placement() {
  NodePlacement p;
  if (initialized()) {
    static const NodePlacement shared = [] {
      NodePlacement s;
      MPI_Comm node;
      check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
      MPI_Comm_rank(node, &s.local_rank);
      MPI_Comm_size(node, &s.local_size);
      MPI_Comm_free(&node);
      return s;
    }();
    return shared;
  }
  const char* rank = env("OMPI_COMM_WORLD_LOCAL_RANK");
  const char* size = env("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (rank && size) {
    p.local_rank = std::atoi(rank);
    p.local_size = std::max(1, std::atoi(size));
  }
  return p;
}

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
  throw std::runtime_error(std::string(what) + ": " +
                           (len ? std::string(msg, len) : "MPI error " + std::to_string(rc)));
}

void dup_world(MPI_Comm* comm, int* rank, int* size) {
  ensure_initialized();
  check(MPI_Comm_dup(MPI_COMM_WORLD, comm), "MPI_Comm_dup");
  check(MPI_Comm_set_errhandler(*comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check(MPI_Comm_rank(*comm, rank), "MPI_Comm_rank");
  check(MPI_Comm_size(*comm, size), "MPI_Comm_size");
}

void check_root(int root, int size) {
  if (root < 0 || root >= size)
    throw std::invalid_argument("broadcast root " + std::to_string(root) + " is not a rank of " +
                                std::to_string(size));
}

void broadcast_bytes(void* buf, size_t bytes, int root, MPI_Comm comm) {
  auto* p = static_cast<char*>(buf);
  for (size_t off = 0; off < bytes; off += kMaxCount) {
    int count = static_cast<int>(std::min(kMaxCount, bytes - off));
    check(MPI_Bcast(p + off, count, MPI_BYTE, root, comm), "MPI_Bcast");
  }
}

void all_reduce_sum_u64(uint64_t* buf, size_t n, MPI_Comm comm) {
  for (size_t off = 0; off < n; off += kMaxCount) {
    int count = static_cast<int>(std::min(kMaxCount, n - off));
    check(MPI_Allreduce(MPI_IN_PLACE, buf + off, count, MPI_UINT64_T, MPI_SUM, comm),
          "MPI_Allreduce(u64)");
  }
}

void abort_job(int rank, const std::string& message) {
  std::fprintf(stderr, "sinkserve: rank %d: %s\n", rank, message.c_str());
  std::fflush(stderr);
  // MPI_Abort makes the launcher kill every rank, including ones blocked in a collective or hung
  // outside MPI, so a failure on one rank can never leave the job waiting forever.
  if (initialized()) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

}  // namespace sinkserve::mpi
