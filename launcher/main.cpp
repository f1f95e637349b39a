// The sinkserve executable: `sinkserve <command> [options]`. Under `mpirun -np N` every rank runs
// the same command; the model is sharded over the N ranks.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "launcher/args.h"
#include "launcher/command.h"

namespace sinkserve {
std::vector<Command>& commands() {
  static std::vector<Command> c;
  return c;
}
}  // namespace sinkserve

using namespace sinkserve;

static void usage(FILE* out) {
  std::fprintf(out, "usage: sinkserve <command> [options]   (sinkserve <command> --help for its options)\n\ncommands:\n");
  for (const Command& c : commands()) std::fprintf(out, "  %-12s %s\n", c.name, c.summary);
  std::fprintf(out,
               "\nTensor parallelism: mpirun -np N sinkserve <command> ... shards the model over N "
               "ranks\n(as root or on a small machine add: --allow-run-as-root --oversubscribe).\n");
}

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const Command& c : commands()) {
    if (c.name != std::string(argv[1])) continue;
    try {
      return c.run(argc - 1, argv + 1);
    } catch (const UsageError& e) {
      std::fprintf(stderr, "sinkserve %s: %s\n", c.name, e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sinkserve %s: error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "sinkserve: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
