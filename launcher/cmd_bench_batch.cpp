// `sinkserve bench-batch`: decode throughput with many sessions decoding together. Each step
// appends one token to every session, so the weights are read once per step for all of them:
// throughput grows with the batch until the matmuls turn compute bound.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "launcher/command.h"
#include "launcher/engine_options.h"
#include "launcher/measure.h"
#include "runtime/sampler.h"

namespace sinkserve {
namespace {

void bench(Engine& e, const std::vector<int64_t>& batches, int64_t prompt_n, int64_t steps,
           int64_t offset, bool full_window) {
  LlamaModel& m = *e.model;
  KVCache& kv = *e.cache;
  const int vocab = m.config().vocab;
  TokenSource src(vocab);
  const CacheConfig& cc = kv.config();
  std::printf("backend: %s, policy %s, window %d, sink %d, KV %s, prompt %lld, stream offset %lld%s\n",
              e.backend->name().c_str(), policy_name(cc.policy).c_str(), cc.window, cc.sink,
              std::string(dtype_name(cc.kv_type)).c_str(), (long long)prompt_n, (long long)offset,
              full_window ? ", windows full" : "");
  // What a decode step reads: every weight once for the whole batch, and each session's cached
  // rows for that session alone; past the point where they cross, attention dominates.
  const int64_t held = full_window ? int64_t(cc.sink) + cc.window : prompt_n + 3;
  std::printf("reads per step: weights %.1f MiB, plus per session %lld cached tokens x %lld bytes = %.1f MiB of KV\n",
              double(m.streamed_bytes()) / (1 << 20), (long long)held, (long long)kv.token_bytes(),
              double(held * kv.token_bytes()) / (1 << 20));
  std::printf("%8s %12s %14s %14s\n", "sessions", "ms/step", "tokens/s", "tok/s/session");
  for (int64_t B : batches) {
    std::vector<int> slots;
    for (int64_t i = 0; i < B; ++i) {
      slots.push_back(e.lockstep->acquire());
      if (offset) e.lockstep->reset(slots.back(), offset);
    }
    // Every step ends in a greedy draw per session, where the engine draws (--sampler).
    const bool on_backend = e.sample_on == SampleOn::Backend;
    std::vector<float> logits(on_backend ? 0 : static_cast<size_t>(B) * size_t(vocab));
    const std::vector<SampleSpec> greedy(static_cast<size_t>(B));
    std::vector<int32_t> drawn(static_cast<size_t>(B));
    Sampler host_greedy{SamplingParams{}};
    auto step = [&](std::span<const SeqStep> steps) {
      if (on_backend) return e.lockstep->step(steps, nullptr, greedy.data(), drawn.data());
      e.lockstep->step(steps, logits.data());
      for (size_t i = 0; i < steps.size(); ++i)
        drawn[i] = host_greedy.sample(logits.data() + i * size_t(vocab), vocab);
    };
    // Each session first holds a prompt, so that attention reads a realistic cache; or, with
    // --full-window, a window of zero rows taken as already streamed: the cost of a session deep
    // into its stream, without computing sink + window tokens of prompt for each.
    if (full_window) {
      const size_t layer_bytes = size_t(kv.pool_bytes() / (2 * kv.n_layers()));
      for (int l = 0; l < kv.n_layers(); ++l) {
        e.backend->zero(kv.k(l), layer_bytes);
        e.backend->zero(kv.v(l), layer_bytes);
      }
      for (int slot : slots) kv.commit(slot, cc.sink + cc.window);
    }
    for (int slot : full_window ? std::vector<int>{} : slots) {
      for (int64_t done = 0; done < prompt_n;) {
        const int n = int(std::min<int64_t>(prompt_n - done, e.cache->config().chunk));
        const std::vector<int32_t> toks = src.take(n);
        const SeqStep st{slot, toks.data(), n, false};
        step({&st, 1});
        done += n;
      }
    }
    std::vector<int32_t> toks(static_cast<size_t>(B));
    std::vector<SeqStep> batch(static_cast<size_t>(B));
    auto run_step = [&] {
      for (int64_t i = 0; i < B; ++i) {
        toks[size_t(i)] = src.next();
        batch[size_t(i)] = SeqStep{slots[size_t(i)], &toks[size_t(i)], 1, false};
      }
      step(batch);
    };
    for (int i = 0; i < 3; ++i) run_step();  // warm-up: allocations, cuBLAS heuristics
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) run_step();
    const double dt = seconds_since(t0) / double(steps);
    std::printf("%8lld %12.3f %14.1f %14.2f\n", (long long)B, 1e3 * dt, double(B) / dt, 1.0 / dt);
    for (int slot : slots) e.lockstep->release(slot);
  }
}

int run(int argc, char** argv) {
  EngineFlags ef;
  std::string sessions = "1,16,64";
  int64_t prompt_n = 64, steps = 32, offset = 0;
  bool full_window = false;
  ArgParser p("bench-batch",
              "Measures decode throughput with several sessions decoding one token each per step "
              "(every session first holds a prompt).");
  add_engine_options(p, ef);
  p.add("--sessions", "B1,B2,..", "session counts to measure (default 1,16,64)", &sessions);
  p.add("--prompt", "N", "prompt tokens per session before timing (default 64)", &prompt_n);
  p.add("--steps", "N", "timed decode steps per session count (default 32)", &steps);
  p.add("--offset", "P", "stream position of each session's first token (default 0): the cost "
        "of a step must not depend on it", &offset);
  p.add("--full-window", "", "start every session with a full window of (zero) cached rows instead "
        "of a prompt: attention at its largest (one rank, ring policies)", &full_window);
  if (!p.parse(argc, argv)) return 0;
  EngineOptions eo = finish_engine_options(ef);
  const std::vector<int64_t> batches = parse_positive_list(sessions, "--sessions");
  if (batches.empty()) throw UsageError("--sessions is empty");
  if (prompt_n < 1 || steps < 1) throw UsageError("--prompt and --steps must be >= 1");
  if (offset < 0) throw UsageError("--offset must be >= 0");
  eo.slots = int(*std::max_element(batches.begin(), batches.end()));
  if (full_window && eo.policy != Policy::Sink && eo.policy != Policy::Window)
    throw UsageError("--full-window needs the sink or window policy");

  return run_engine_command("bench-batch", eo, [&](Engine* e) -> int {
    // Filling the cache directly bypasses the lockstep, which other ranks would have to replay.
    if (full_window && e->comm->size() > 1) throw UsageError("--full-window runs on one rank");
    bench(*e, batches, prompt_n, steps, offset, full_window);
    return 0;
  });
}

RegisterCommand reg({"bench-batch", "measure decode throughput with many sessions per step", &run});

}  // namespace
}  // namespace sinkserve
