#include "parallel/lockstep.h"

#include <algorithm>
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

std::string joined(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) {
    if (!s.empty()) s += ',';
    s += std::to_string(r);
  }
  return s;
}

std::string rank_list(const std::vector<int>& ranks) {
  return (ranks.size() == 1 ? "rank " : "ranks ") + joined(ranks);
}

std::string have(const std::vector<int>& ranks, uint64_t hash) {
  return rank_list(ranks) + (ranks.size() == 1 ? " has " : " have ") + hex(hash);
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
  std::vector<int> diverged;
  std::string detail;
  for (const auto& [h, ranks] : groups) {
    if (h == reference) continue;
    diverged.insert(diverged.end(), ranks.begin(), ranks.end());
    if (!detail.empty()) detail += ", ";
    detail += have(ranks, h);
  }
  std::sort(diverged.begin(), diverged.end());
  throw std::runtime_error(std::string("ranks out of lockstep in ") + what + ": diverged " +
                           rank_list(diverged) + " (" + detail + ", " +
                           have(groups[reference], reference) + ")");
}

}  // namespace sinkserve
