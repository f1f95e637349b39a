// Failure handling for multi-rank subcommands. Every rank of a tensor-parallel job meets the
// others in collectives many times per token, so a rank that stops (an exception, a bad file on one
// node, an injected test failure) would leave the rest blocked in their next collective forever.
// run_ranked turns any failure on any rank into the end of the whole job, with that rank's message.
#pragma once
#include <functional>

#include "parallel/communicator.h"

namespace sinkserve {

// Runs body() and returns its exit status. With more than one rank, an exception escaping body()
// on any rank prints "sinkserve <cmd>: rank R: error: <what>" and calls comm.abort(), which ends
// every rank (MPI_Abort: the launcher kills the others, including ones blocked in a collective or
// hung outside MPI) with a non-zero exit. A non-zero status returned by one rank ends the job the
// same way, since the other ranks may still be waiting for it. With one rank, exceptions propagate
// to main(), which reports them (exit 1, or 2 for usage errors).
//
// What this does not cover: a rank that hangs without failing while every other rank waits for
// it. Nothing fails, so nothing aborts; bound such runs with `mpirun --timeout SECONDS` (or the
// scheduler's limit). A rank that crashes outright (signal, std::terminate) is covered by mpirun,
// which kills the job when any rank exits abnormally.
int run_ranked(const char* cmd, Communicator& comm, const std::function<int()>& body);

}  // namespace sinkserve
