// `sinkserve bench`: prompt and decode speed against the memory-bandwidth roofline, per-token
// latency at growing stream lengths, and the sink cache against the recompute baseline.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "launcher/command.h"
#include "launcher/engine_options.h"
#include "launcher/measure.h"
#include "parallel/timed_communicator.h"
#include "runtime/process_memory.h"
#include "runtime/stream.h"

namespace sinkserve {
namespace {

using Clock = std::chrono::steady_clock;

void bench_speed(Engine& e, TimedCommunicator& comm, int64_t prompt_n, int64_t decode_n,
                 int64_t bw_mib) {
  LlamaModel& m = *e.model;
  const double streamed = double(m.streamed_bytes());
  TokenSource src(m.config().vocab);
  Sampler greedy{SamplingParams{}};  // every step ends in a draw, where the engine draws (--sampler)
  std::printf("model: %s (%s), dim %d, %d layers, %d heads / %d KV heads, ffn %d, vocab %d\n",
              m.config().name.c_str(), m.config().arch.c_str(), m.config().dim, m.config().n_layers,
              m.config().n_heads, m.config().n_kv_heads, m.config().ffn, m.config().vocab);
  std::printf("backend: %s, ranks: %d (%s)\n", e.backend->name().c_str(), comm.size(), comm.name().c_str());
  std::printf("weights held by this rank: %.1f MiB; read per token: %.1f MiB\n",
              double(m.weight_bytes()) / (1 << 20), streamed / (1 << 20));
  const KVCache& kv = *e.cache;
  std::printf("KV cache: %s, %lld bytes per cached token, %.2f MiB per slot of %lld rows (per rank)\n",
              std::string(dtype_name(kv.kv_type())).c_str(), (long long)kv.token_bytes(),
              double(kv.slot_rows() * kv.token_bytes()) / (1 << 20), (long long)kv.slot_rows());
  const double bw = bw_mib > 0 ? e.backend->measure_bandwidth(size_t(bw_mib) << 20) : 0;
  if (bw > 0) std::printf("memory read bandwidth (%lld MiB buffer): %.2f GB/s\n", (long long)bw_mib, bw / 1e9);
  {
    Stream warm(*e.lockstep, e.sample_on);
    const std::vector<int32_t> w = src.take(8);
    warm.feed_and_sample(w, greedy);
  }
  Stream s(*e.lockstep, e.sample_on);
  const std::vector<int32_t> prompt = src.take(prompt_n);
  comm.clear();
  auto t0 = Clock::now();
  s.feed_and_sample(prompt, greedy);
  const double t_prompt = seconds_since(t0);
  std::printf("prompt: %lld tokens in %.3f s = %.1f tok/s\n", (long long)prompt_n, t_prompt,
              double(prompt_n) / t_prompt);
  comm.clear();
  t0 = Clock::now();
  for (int64_t i = 0; i < decode_n; ++i) {
    const int32_t t = src.next();
    s.feed_and_sample({&t, 1}, greedy);
  }
  const double t_dec = seconds_since(t0), tps = double(decode_n) / t_dec;
  std::printf("decode: %lld tokens in %.3f s = %.2f tok/s (%.2f ms/token)\n", (long long)decode_n,
              t_dec, tps, 1e3 / tps);
  if (bw > 0)
    std::printf("decode roofline: %.1f MiB x %.2f tok/s = %.2f GB/s = %.1f%% of %.2f GB/s\n",
                streamed / (1 << 20), tps, streamed * tps / 1e9, 100.0 * streamed * tps / bw, bw / 1e9);
  if (comm.size() > 1)
    std::printf("collectives during decode: %.1f%% of the time, %.1f KiB per token in %.1f calls\n",
                100.0 * comm.seconds() / t_dec, double(comm.bytes()) / double(decode_n) / 1024,
                double(comm.calls()) / double(decode_n));
}

// Decode latency at several stream lengths, measured side by side: one session per length is
// streamed to `samples` tokens short of it, then the sessions decode in turn, token by token, so
// that whatever else the machine does affects every length alike.
void bench_latency(Engine& e, const std::vector<int64_t>& at, int64_t samples) {
  Sampler greedy{SamplingParams{}};  // every step ends in a draw, where the engine draws (--sampler)
  TokenSource src(e.model->config().vocab);
  std::vector<std::unique_ptr<Stream>> streams;
  for (int64_t len : at) {
    auto& s = streams.emplace_back(std::make_unique<Stream>(*e.lockstep, e.sample_on));
    for (int64_t n = 0; n < std::max<int64_t>(0, len - samples); ++n) {
      const int32_t t = src.next();
      s->feed_and_sample({&t, 1}, greedy);
    }
  }
  std::vector<double> total(at.size(), 0.0);
  for (int64_t i = 0; i < samples; ++i)
    for (size_t k = 0; k < streams.size(); ++k) {
      const int32_t t = src.next();
      const auto t0 = Clock::now();
      streams[k]->feed_and_sample({&t, 1}, greedy);
      total[k] += seconds_since(t0);
    }
  std::printf("per-token decode latency of the %s policy, %lld tokens per length, interleaved\n",
              policy_name(e.cache->config().policy).c_str(), (long long)samples);
  for (size_t k = 0; k < streams.size(); ++k) {
    const int slot = streams[k]->slot();
    std::printf("  stream of %10lld tokens: %.4f ms/token (%.3fx the first), cache %lld tokens, KV %lld bytes\n",
                (long long)streams[k]->tokens(), 1e3 * total[k] / double(samples), total[k] / total[0],
                (long long)e.cache->cached_tokens(slot), (long long)e.cache->live_bytes(slot));
  }
  std::printf("  RSS %.1f MiB, KV pool %lld bytes\n", double(resident_bytes()) / (1 << 20),
              (long long)e.cache->pool_bytes());
}

// Sink decode latency with a full window of W against the recompute baseline at the same W.
void bench_recompute(Engine& e, const std::vector<int64_t>& windows, int64_t samples, int chunk, int sink) {
  LlamaModel& m = *e.model;
  Sampler greedy{SamplingParams{}};  // every step ends in a draw, where the engine draws (--sampler)
  TokenSource src(m.config().vocab);
  std::printf("sink (S=%d) vs recompute: per-token latency with a full window\n", sink);
  for (int64_t W : windows) {
    double per_token[2];
    for (Policy p : {Policy::Sink, Policy::Recompute}) {
      CacheConfig cc;
      cc.policy = p;
      cc.sink = p == Policy::Sink ? sink : 0;
      cc.window = int(W);
      cc.chunk = chunk;
      KVCache cache(*e.backend, m.config().n_layers, m.local_kv_dim(), cc, 1);
      Lockstep ls(m, cache);
      Stream s(ls, e.sample_on);
      const std::vector<int32_t> fill = src.take(W + cc.sink);
      s.feed_and_sample(fill, greedy);
      const int64_t n = p == Policy::Sink ? samples : std::max<int64_t>(2, samples / 16);
      const auto t0 = Clock::now();
      for (int64_t i = 0; i < n; ++i) {
        const int32_t t = src.next();
        s.feed_and_sample({&t, 1}, greedy);
      }
      per_token[p == Policy::Sink ? 0 : 1] = seconds_since(t0) / double(n);
    }
    std::printf("  W = %5lld: sink %.2f ms/token, recompute %.1f ms/token, speedup %.1fx\n",
                (long long)W, 1e3 * per_token[0], 1e3 * per_token[1], per_token[1] / per_token[0]);
  }
}

int run(int argc, char** argv) {
  EngineFlags ef;
  int64_t prompt_n = 512, decode_n = 64, bw_mib = 2048, samples = 64;
  std::string latency_at, recompute_windows;
  ArgParser p("bench",
              "Measures prompt processing and decode speed, and decode as a fraction of the memory "
              "read bandwidth (weight bytes per token x tokens/s / measured bandwidth). With "
              "--latency-at, per-token latency at growing stream lengths; with --recompute, the "
              "sink cache against re-computing the window for every token.");
  add_engine_options(p, ef, false);
  p.add("--prompt", "N", "prompt tokens processed in one batch (default 512)", &prompt_n);
  p.add("--decode", "N", "tokens decoded one by one (default 64)", &decode_n);
  p.add("--bandwidth-mib", "MiB", "buffer for the bandwidth probe, 0 = skip (default 2048)", &bw_mib);
  p.add("--latency-at", "L1,L2,..", "stream lengths at which to report decode latency", &latency_at);
  p.add("--recompute", "W1,W2,..", "windows at which to compare sink and recompute", &recompute_windows);
  p.add("--samples", "K", "tokens timed per measurement (default 64)", &samples);
  if (!p.parse(argc, argv)) return 0;
  EngineOptions eo = finish_engine_options(ef);
  if (prompt_n < 1 || decode_n < 1 || samples < 1 || bw_mib < 0)
    throw UsageError("--prompt, --decode and --samples must be >= 1, --bandwidth-mib >= 0");
  const std::vector<int64_t> at = parse_positive_list(latency_at, "--latency-at");
  const std::vector<int64_t> wins = parse_positive_list(recompute_windows, "--recompute");
  eo.chunk = int(std::max<int64_t>(eo.chunk, prompt_n));

  if (!at.empty() || !wins.empty()) eo.slots = std::max<int>(1, int(at.size()));
  auto timed = std::make_unique<TimedCommunicator>(launch_communicator(eo));
  if (timed->size() > 1 && (!at.empty() || !wins.empty()))
    throw UsageError("--latency-at and --recompute run on one rank only");
  return run_engine_command("bench", eo, *timed, [&](Engine* e) -> int {
    if (at.empty() && wins.empty()) bench_speed(*e, *timed, prompt_n, decode_n, bw_mib);
    if (!at.empty()) bench_latency(*e, at, samples);
    if (!wins.empty()) bench_recompute(*e, wins, samples, eo.chunk, eo.sink);
    return 0;
  });
}

RegisterCommand reg({"bench", "measure speed, roofline, latency over long streams, recompute speedup", &run});

}  // namespace
}  // namespace sinkserve
