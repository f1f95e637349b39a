// Command-line options shared by every subcommand that runs a model.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "launcher/args.h"
#include "parallel/communicator.h"
#include "runtime/chat_template.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace sinkserve {

struct EngineFlags {
  EngineOptions engine;
  std::string policy = "sink";
  std::string kv_type = "f16";
  // --window as given; the sentinel tells "not given" (the model's default) from an explicit 0.
  static constexpr int64_t kUnset = INT64_MIN;
  int64_t window = kUnset;
};
void add_engine_options(ArgParser& p, EngineFlags& f, bool with_policy = true);
// Checks the values and resolves the policy name; throws UsageError naming the bad option.
EngineOptions finish_engine_options(const EngineFlags& f);

struct SamplingFlags {
  SamplingParams params;
  int64_t seed = -1;  // -1: from the clock
};
void add_sampling_options(ArgParser& p, SamplingFlags& f);
SamplingParams finish_sampling_options(const SamplingFlags& f);

// The chat template named by --template; throws UsageError("--template: ...") for an unknown name.
ChatTemplate parse_template_option(const std::string& name);

// The communicator for this launch: MPI ranks under mpirun (NCCL between GPUs), else one rank.
std::unique_ptr<Communicator> launch_communicator(const EngineOptions& o);

// Runs a command that drives a model on every rank of the launch: each rank opens the engine;
// rank 0 runs `leader` (whose exit status is the command's) while the other ranks replay its
// steps, and then releases them. A failure on any rank ends the whole job (run_ranked).
// `on_follower` runs on the other ranks before they start replaying.
using LeaderBody = std::function<int(Engine* e)>;
int run_engine_command(const char* name, const EngineOptions& o, Communicator& comm,
                       const LeaderBody& leader, const std::function<void()>& on_follower = {});
// The same on the launch's own communicator.
int run_engine_command(const char* name, const EngineOptions& o, const LeaderBody& leader,
                       const std::function<void()>& on_follower = {});

}  // namespace sinkserve
