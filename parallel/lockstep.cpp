#include "parallel/lockstep.h"

#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace sinkserve {
namespace {

std::string hex(uint64_t v) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? "," : "") + std::to_string(ranks[i]);
  return s;
}

}  // namespace

void verify_lockstep(Communicator& comm, uint64_t hash, const char* what) {
  const int n = comm.size();
  if (n == 1) return;
  // A gather built from the sum collective: each rank fills only its own slot, so the sum is the
  // exact vector of hashes (no carries: all other addends are zero).
  std::vector<uint64_t> hashes(n, 0);
  hashes[comm.rank()] = hash;
  comm.all_reduce_sum_u64(hashes.data(), hashes.size());

  std::map<uint64_t, std::vector<int>> groups;
  for (int r = 0; r < n; ++r) groups[hashes[r]].push_back(r);
  if (groups.size() == 1) return;

  uint64_t reference = hashes[0];
  for (const auto& [h, ranks] : groups)
    if (ranks.size() > groups[reference].size()) reference = h;
  std::string diverged, detail;
  for (const auto& [h, ranks] : groups) {
    if (h == reference) continue;
    for (int r : ranks) diverged += (diverged.empty() ? "" : ",") + std::to_string(r);
    detail += (detail.empty() ? "" : ", ") + rank_list(ranks) + " has " + hex(h);
  }
  throw std::runtime_error(std::string("ranks out of lockstep in ") + what + ": diverged rank(s) " +
                           diverged + " (" + detail + "; " + rank_list(groups[reference]) +
                           " has " + hex(reference) + ")");
}

}  // namespace sinkserve
