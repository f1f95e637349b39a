#include "launcher/rank_guard.h"

#include <cstdio>
#include <exception>
#include <string>

namespace sinkserve {

int run_ranked(const char* cmd, Communicator& comm, const std::function<int()>& body) {
  if (comm.size() == 1) return body();
  std::string what;
  try {
    int status = body();
    if (status == 0) return 0;
    what = "exited with status " + std::to_string(status);
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "unknown exception";
  }
  std::fprintf(stderr, "sinkserve %s: rank %d: error: %s\n", cmd, comm.rank(), what.c_str());
  std::fflush(stderr);
  comm.abort("ending all " + std::to_string(comm.size()) + " ranks after the error above");
  // GCC does not carry [[noreturn]] through a virtual call.
  __builtin_unreachable();
}

}  // namespace sinkserve
