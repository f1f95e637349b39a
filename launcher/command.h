// Subcommands of the sinkserve executable register themselves here; main() dispatches by name.
#pragma once
#include <string>
#include <vector>

namespace sinkserve {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);  // argv[0] is the subcommand name
};

std::vector<Command>& commands();

struct RegisterCommand {
  explicit RegisterCommand(Command c) { commands().push_back(c); }
};

}  // namespace sinkserve
