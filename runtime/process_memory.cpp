#include "runtime/process_memory.h"

#include <unistd.h>

#include <cstdio>

namespace sinkserve {

int64_t resident_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long long size = 0, resident = 0;
  const int got = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  return got == 2 ? int64_t(resident) * sysconf(_SC_PAGESIZE) : 0;
}

}  // namespace sinkserve
