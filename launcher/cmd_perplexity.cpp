// `sinkserve perplexity`: the StreamingLLM evaluation protocol. One session streams a text token
// by token (feed token t, score token t+1) under a cache policy, logging per-token loss, cache
// size, memory and latency.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>

#include "launcher/command.h"
#include "launcher/engine_options.h"
#include "runtime/process_memory.h"
#include "runtime/stream.h"

namespace sinkserve {
namespace {

// Mean loss per range [0,512), [512,1K), [1K,2K), [2K,4K), ...: the paper's view of where a
// policy breaks.
void print_summary(const std::vector<double>& nll, double mean_latency_ms, const Policy policy) {
  std::fprintf(stderr, "\npolicy %s: perplexity by token range\n", policy_name(policy).c_str());
  int64_t begin = 0, end = 512;
  while (begin < int64_t(nll.size())) {
    const int64_t e = std::min<int64_t>(end, int64_t(nll.size()));
    double sum = 0;
    for (int64_t i = begin; i < e; ++i) sum += nll[size_t(i)];
    std::fprintf(stderr, "  [%8lld, %8lld)  ppl %10.3f\n", (long long)begin, (long long)e,
                 std::exp(sum / double(e - begin)));
    begin = end;
    end *= 2;
  }
  double total = 0;
  for (double x : nll) total += x;
  std::fprintf(stderr, "  all %zu tokens    ppl %10.3f   mean latency %.3f ms/token\n", nll.size(),
               nll.empty() ? 0.0 : std::exp(total / double(nll.size())), mean_latency_ms);
}

int run(int argc, char** argv) {
  EngineFlags ef;
  std::string text_path, csv_path;
  int64_t max_tokens = 0, every = 1;
  ArgParser p("perplexity",
              "Streams a text through one session token by token (feed token t, score token t+1) "
              "and reports perplexity per token range, KV cache size, memory and latency. When "
              "--tokens exceeds the text, the text repeats.");
  add_engine_options(p, ef);
  p.add("--text", "FILE", "text to stream", &text_path, true);
  p.add("--tokens", "N", "tokens to score (default: the whole text)", &max_tokens);
  p.add("--csv", "FILE", "per-token CSV: index,nll,ppl,cache_tokens,kv_bytes,rss_bytes,latency_ms", &csv_path);
  p.add("--every", "K", "write every K-th token to the CSV (default 1)", &every);
  if (!p.parse(argc, argv)) return 0;
  const EngineOptions eo = finish_engine_options(ef);
  if (max_tokens < 0 || (p.given("--tokens") && max_tokens < 1)) throw UsageError("--tokens must be >= 1");
  if (every < 1) throw UsageError("--every must be >= 1");
  const std::string text = read_option_file("--text", text_path);

  return run_engine_command("perplexity", eo, [&](Engine* e) -> int {
    std::vector<int32_t> ids = e->tokenizer->encode(text, true);
    const size_t text_len = ids.size();
    if (text_len < 2) throw std::runtime_error("the text has fewer than 2 tokens");
    const int64_t n = max_tokens > 0 ? max_tokens : int64_t(text_len) - 1;
    // Repeating skips the BOS so the stream reads as one continuous text.
    const size_t first = ids[0] == e->tokenizer->bos() ? 1 : 0;
    for (size_t i = 0; int64_t(ids.size()) < n + 1; ++i) ids.push_back(ids[first + i % (text_len - first)]);
    if (int64_t(text_len) < n + 1)
      std::fprintf(stderr, "text has %zu tokens; repeating it to %lld\n", text_len, (long long)n + 1);

    std::unique_ptr<FILE, int (*)(FILE*)> csv(nullptr, &std::fclose);
    if (!csv_path.empty()) {
      csv.reset(std::fopen(csv_path.c_str(), "w"));
      if (!csv) throw std::runtime_error("cannot write --csv '" + csv_path + "'");
      std::fprintf(csv.get(), "index,nll,ppl,cache_tokens,kv_bytes,rss_bytes,latency_ms\n");
    }
    const int vocab = e->model->config().vocab;
    std::vector<float> logits(static_cast<size_t>(vocab));
    std::vector<double> nll;
    nll.reserve(size_t(n));
    double sum = 0, latency_sum = 0;
    KVCache& cache = *e->cache;
    {
      Stream stream(*e->lockstep, e->sample_on);
      for (int64_t t = 0; t < n; ++t) {
        const auto t0 = std::chrono::steady_clock::now();
        try {
          stream.feed({&ids[size_t(t)], 1}, logits.data());
        } catch (const std::length_error& full) {
          // The dense baseline's end: the paper's out-of-memory point. Report what was measured.
          std::fprintf(stderr, "stopped after %lld tokens: %s\n", (long long)t, full.what());
          break;
        }
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        latency_sum += ms;
        float mx = logits[0];
        for (float v : logits) mx = std::max(mx, v);
        double z = 0;
        for (float v : logits) z += std::exp(double(v - mx));
        const double loss = std::log(z) + mx - logits[size_t(ids[size_t(t + 1)])];
        nll.push_back(loss);
        sum += loss;
        if (csv && (t % every == 0 || t == n - 1))
          std::fprintf(csv.get(), "%lld,%.6f,%.6f,%lld,%lld,%lld,%.4f\n", (long long)t, loss,
                       std::exp(sum / double(t + 1)), (long long)cache.cached_tokens(stream.slot()),
                       (long long)cache.live_bytes(stream.slot()), (long long)resident_bytes(), ms);
      }
    }
    print_summary(nll, latency_sum / double(std::max<size_t>(nll.size(), 1)), eo.policy);
    return 0;
  });
}

RegisterCommand reg({"perplexity", "stream a text through the cache and measure perplexity", &run});

}  // namespace
}  // namespace sinkserve
