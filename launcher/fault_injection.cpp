#include "launcher/fault_injection.h"

#include <charconv>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

namespace sinkserve {
namespace {

template <typename T>
bool parse_int(std::string_view s, T& out) {
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && end == s.data() + s.size() && out >= 0;
}

}  // namespace

void maybe_inject_failure(int rank, const char* point, int64_t step) {
  const char* rank_env = std::getenv("SINKSERVE_FAIL_RANK");
  const char* at_env = std::getenv("SINKSERVE_FAIL_AT");
  if (!rank_env && !at_env) return;
  if (!rank_env || !at_env)
    throw std::invalid_argument(std::string(rank_env ? "SINKSERVE_FAIL_RANK" : "SINKSERVE_FAIL_AT") +
                                " is set without " +
                                (rank_env ? "SINKSERVE_FAIL_AT" : "SINKSERVE_FAIL_RANK"));
  int fail_rank = -1;
  if (!parse_int(std::string_view(rank_env), fail_rank))
    throw std::invalid_argument(std::string("SINKSERVE_FAIL_RANK='") + rank_env +
                                "' is not a rank number");
  std::string_view at(at_env);
  std::string_view name = at.substr(0, at.find(':'));
  int64_t fail_step = -1;
  if (name.empty() ||
      (name.size() < at.size() && !parse_int(at.substr(name.size() + 1), fail_step)))
    throw std::invalid_argument(std::string("SINKSERVE_FAIL_AT='") + at_env +
                                "' is not of the form POINT or POINT:STEP (e.g. load, step:3)");
  if (rank != fail_rank || name != point) return;
  if (fail_step >= 0 && step != fail_step) return;
  throw std::runtime_error("injected failure at " + std::string(at) + " on rank " +
                           std::to_string(rank));
}

}  // namespace sinkserve
