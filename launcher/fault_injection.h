// Test-only failure injection, so tests can prove that one failing rank ends the whole job with
// its message instead of hanging the others. The launcher arms it (run_engine_command): the
// engine itself knows nothing of it. Inert unless both variables are set:
//   SINKSERVE_FAIL_RANK=R    the rank that fails
//   SINKSERVE_FAIL_AT=P      P is a point name ("load") or a point and a step ("step:N")
#pragma once
#include <cstdint>

namespace sinkserve {

// Throws std::runtime_error("injected failure at P on rank R") when this rank and point (and step,
// if the spec names one) match the environment. Throws std::invalid_argument naming the variable
// when the variables are malformed, so a mistyped test setup fails instead of passing silently.
// Reads the environment on every call: callers use it once per load or decode step, where a
// getenv is noise.
void maybe_inject_failure(int rank, const char* point, int64_t step = -1);

}  // namespace sinkserve
