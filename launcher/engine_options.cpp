#include "launcher/engine_options.h"

#include <chrono>
#include <stdexcept>

#include "launcher/fault_injection.h"
#include "launcher/rank_guard.h"
#include "parallel/communicator_factory.h"

namespace sinkserve {

void add_engine_options(ArgParser& p, EngineFlags& f, bool with_policy) {
  EngineOptions& e = f.engine;
  p.add("-m,--model", "PATH", "GGUF model file, or Hugging Face checkpoint directory", &e.model, true);
  p.add("--device", "cpu|cuda", "where to compute (default cpu)", &e.device);
  p.add("-t,--threads", "N", "CPU threads per rank (default: one per core; one for models under 16 MB)", &e.threads);
  p.add("--bf16-prefill", "", "CPU: prompt matrix products in BF16 (faster, ~3 significant digits)",
        &e.bf16_prefill);
  p.add("--sampler", "WHERE", "draw tokens on the 'backend' or the 'host' (default auto: backend on cuda)",
        &e.sampler);
  if (with_policy)
    p.add("--policy", "NAME", "KV cache policy: sink (default), window, dense, recompute", &f.policy);
  p.add("--sink", "S", "attention-sink tokens kept (default 4)", &e.sink);
  p.add("--window", "W", "recent tokens attended (default: training context - sinks)", &f.window);
  p.add("--chunk", "C", "prompt tokens per prefill step (default 64)", &e.chunk);
  p.add("--ctx", "N", "capacity of the dense policy (default: training context)", &e.ctx);
  p.add("--kv-type", "T", "KV cache storage: f32, f16 (default), bf16 or q8_0", &f.kv_type);
  p.add("--allow-unknown-pretokenizer", "",
        "split words of a vocabulary with an unknown tokenizer.ggml.pre by the 'default' rules",
        &e.allow_unknown_pretokenizer);
}

EngineOptions finish_engine_options(const EngineFlags& f) {
  EngineOptions e = f.engine;
  try {
    e.policy = parse_policy(f.policy);
  } catch (const std::invalid_argument& ex) {
    throw UsageError(std::string("--policy: ") + ex.what());
  }
  try {
    e.kv_type = parse_kv_type(f.kv_type);
  } catch (const std::invalid_argument& ex) {
    throw UsageError(std::string("--kv-type: ") + ex.what());
  }
  if (e.threads < 0 || e.threads > 1024) throw UsageError("--threads must be in 0..1024");
  if (e.sink > 1'000'000 || f.window > 100'000'000 || e.ctx > 100'000'000)
    throw UsageError("--sink, --window and --ctx are limited to 1e6, 1e8 and 1e8 tokens");
  if (e.sink < 0) throw UsageError("--sink must be >= 0");
  if (f.window != EngineFlags::kUnset) {
    if (f.window < 1) throw UsageError("--window must be >= 1");
    e.window = int(f.window);
  }
  if (e.chunk < 1 || e.chunk > 65536) throw UsageError("--chunk must be in 1..65536");
  if (e.ctx < 0) throw UsageError("--ctx must be >= 1");
  if (e.device != "cpu" && e.device != "cuda") throw UsageError("--device must be cpu or cuda");
  if (e.sampler != "auto" && e.sampler != "host" && e.sampler != "backend")
    throw UsageError("--sampler must be auto, host or backend");
  return e;
}

void add_sampling_options(ArgParser& p, SamplingFlags& f) {
  SamplingParams& s = f.params;
  p.add("--temp", "T", "temperature, 0 = greedy (default 0)", &s.temperature);
  p.add("--top-k", "K", "keep the K most likely tokens, 0 = off", &s.top_k);
  p.add("--top-p", "P", "nucleus sampling threshold, 1 = off", &s.top_p);
  p.add("--min-p", "P", "drop tokens below P x the best probability, 0 = off", &s.min_p);
  p.add("--repeat-penalty", "R", "penalty for recently seen tokens, 1 = off", &s.repeat_penalty);
  p.add("--repeat-last-n", "N", "how many recent tokens the penalty looks at (default 64)",
        &s.repeat_last_n);
  p.add("--seed", "S", "random seed (default: from the clock)", &f.seed);
}

SamplingParams finish_sampling_options(const SamplingFlags& f) {
  SamplingParams s = f.params;
  if (!(s.temperature >= 0)) throw UsageError("--temp must be >= 0");
  if (s.top_k < 0) throw UsageError("--top-k must be >= 0");
  if (!(s.top_p > 0 && s.top_p <= 1)) throw UsageError("--top-p must be in (0, 1]");
  if (!(s.min_p >= 0 && s.min_p <= 1)) throw UsageError("--min-p must be in [0, 1]");
  if (!(s.repeat_penalty > 0)) throw UsageError("--repeat-penalty must be > 0");
  if (s.repeat_last_n < 0) throw UsageError("--repeat-last-n must be >= 0");
  s.seed = f.seed >= 0 ? uint64_t(f.seed)
                       : uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  return s;
}

ChatTemplate parse_template_option(const std::string& name) {
  try {
    return parse_chat_template_name(name);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--template: ") + e.what());
  }
}

std::unique_ptr<Communicator> launch_communicator(const EngineOptions& o) {
  return make_communicator(o.device == "cuda" ? "nccl" : "auto");
}

namespace {

// SINKSERVE_FAIL_RANK / SINKSERVE_FAIL_AT: this rank fails once loaded, or before a given step.
void arm_failure_injection(Engine& e) {
  const int rank = e.comm->rank();
  maybe_inject_failure(rank, "load");
  e.lockstep->before_step([rank](int64_t step) { maybe_inject_failure(rank, "step", step); });
}

}  // namespace

int run_engine_command(const char* name, const EngineOptions& o, Communicator& comm,
                       const LeaderBody& leader, const std::function<void()>& on_follower) {
  return run_ranked(name, comm, [&]() -> int {
    auto e = open_engine(o, comm);
    arm_failure_injection(*e);
    if (!e->leader()) {
      if (on_follower) on_follower();
      e->lockstep->follow();
      return 0;
    }
    const int status = leader(e.get());
    e->lockstep->finish();
    return status;
  });
}

int run_engine_command(const char* name, const EngineOptions& o, const LeaderBody& leader,
                       const std::function<void()>& on_follower) {
  auto comm = launch_communicator(o);
  return run_engine_command(name, o, *comm, leader, on_follower);
}

}  // namespace sinkserve
