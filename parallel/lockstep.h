// Cross-rank consistency checks. Tensor-parallel ranks each hold a shard of every cache slot and
// must admit, evict and advance sessions identically; a rank that drifts would silently mix the
// wrong keys into the all-reduced activations. Comparing a hash of the cache metadata every few
// steps turns that silent corruption into a loud, attributed failure.
#pragma once
#include <cstdint>

#include "parallel/communicator.h"

namespace sinkserve {

// Collective: every rank calls it with its own hash. Returns when all hashes are equal; otherwise
// throws std::runtime_error on every rank, naming the ranks that diverged (those outside the
// largest group of equal hashes, rank 0's group when no group is larger) and their hashes. Under
// run_ranked that ends the job.
void verify_lockstep(Communicator& comm, uint64_t hash, const char* what);

}  // namespace sinkserve
