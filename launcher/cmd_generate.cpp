// `sinkserve generate`: streams text from a model, endlessly with -n -1, in constant memory.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>

#include "launcher/command.h"
#include "launcher/engine_options.h"
#include "launcher/measure.h"
#include "runtime/sampler.h"
#include "runtime/stream.h"

namespace sinkserve {
namespace {

std::atomic<bool> g_stop{false};

int run(int argc, char** argv) {
  EngineFlags ef;
  SamplingFlags sf;
  std::string prompt, prompt_file;
  int64_t n_predict = -1;
  ArgParser p("generate",
              "Streams generated text to stdout as tokens are produced. Stops at the end-of-text "
              "token (or BOS for models that delimit stories with it), after -n tokens, or on "
              "Ctrl-C; then prints prompt and generation speed to stderr. The KV cache keeps the "
              "attention sinks plus a sliding window, so -n -1 runs forever in constant memory.");
  add_engine_options(p, ef);
  p.add("-p,--prompt", "TEXT", "prompt text (default: none, start from BOS)", &prompt);
  p.add("-f,--prompt-file", "FILE", "read the prompt from a file", &prompt_file);
  p.add("-n,--tokens", "N", "tokens to generate, -1 = endless (default -1)", &n_predict);
  add_sampling_options(p, sf);
  p.epilog("Tensor parallel: mpirun -np N sinkserve generate ... (add --allow-run-as-root "
           "--oversubscribe as root or with more ranks than cores).");
  if (!p.parse(argc, argv)) return 0;
  const EngineOptions eo = finish_engine_options(ef);
  const SamplingParams sp = finish_sampling_options(sf);
  if (n_predict < -1) throw UsageError("-n must be -1 (endless) or >= 0");
  if (!prompt.empty() && !prompt_file.empty()) throw UsageError("give --prompt or --prompt-file, not both");
  if (!prompt_file.empty()) prompt = read_option_file("--prompt-file", prompt_file);

  return run_engine_command("generate", eo, [&](Engine* e) -> int {
    std::signal(SIGINT, [](int) { g_stop = true; });
    const Tokenizer& tok = *e->tokenizer;
    const std::vector<int32_t> ids = tok.encode(prompt, true);
    if (ids.empty()) throw std::runtime_error("the prompt encodes to no tokens and the model has no BOS");
    Sampler sampler(sp);
    for (int32_t id : ids) sampler.accept(id);
    {
      Stream stream(*e->lockstep, e->sample_on);
      const auto t0 = std::chrono::steady_clock::now();
      int32_t next = stream.feed_and_sample(ids, sampler);
      const double t_prompt = seconds_since(t0);
      StreamDecoder dec(tok);
      int64_t produced = 0;
      const auto t1 = std::chrono::steady_clock::now();
      while ((n_predict < 0 || produced < n_predict) && !g_stop) {
        if (tok.ends_generation(next) || next == tok.bos()) break;
        ++produced;
        const std::string text = dec.push(next);
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
        sampler.accept(next);
        if (n_predict >= 0 && produced == n_predict) break;
        next = stream.feed_and_sample({&next, 1}, sampler);
      }
      const std::string tail = dec.flush();
      std::fwrite(tail.data(), 1, tail.size(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
      const double t_gen = seconds_since(t1);
      std::fprintf(stderr, "\nprompt: %zu tokens, %.1f tok/s | generated: %lld tokens, %.2f tok/s\n",
                   ids.size(), t_prompt > 0 ? double(ids.size()) / t_prompt : 0.0,
                   (long long)produced, t_gen > 0 ? double(produced) / t_gen : 0.0);
    }
    return 0;
  });
}

RegisterCommand reg({"generate", "stream generated text from a model (endless with -n -1)", &run});

}  // namespace
}  // namespace sinkserve
