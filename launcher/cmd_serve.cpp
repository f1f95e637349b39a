// `sinkserve serve`: the OpenAI-compatible HTTP server. Rank 0 runs the HTTP front node and the
// continuous-batching scheduler; every rank computes each batched step in lockstep.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cluster/http_server.h"
#include "launcher/command.h"
#include "launcher/engine_options.h"
#include "parallel/timed_communicator.h"
#include "runtime/chat_template.h"
#include "runtime/scheduler.h"
#include "runtime/session_file.h"
#include "runtime/session_store.h"

namespace sinkserve {
namespace {

// How long after SIGTERM a compute loop that has not stepped counts as stuck (or four recent
// steps, if longer): below the time mpirun gives a rank between SIGTERM and SIGKILL.
constexpr std::chrono::milliseconds kStuckAfter{300};
constexpr const char* kRankLost = "the server lost a compute rank and is ending";

int run(int argc, char** argv) {
  EngineFlags ef;
  ef.engine.slots = 16;
  ServerOptions so;
  SchedulerOptions sched_opt;
  std::string template_name, model_id;
  int64_t max_body = int64_t(so.max_body), client_buffer = int64_t(so.max_pending_bytes);
  ArgParser p("serve",
              "Serves the model over an OpenAI-compatible HTTP API (/v1/chat/completions, "
              "/v1/completions, /v1/models, /v1/sessions, /health, /metrics). Requests share every "
              "forward step (continuous batching); a session keeps its attention-sink cache slot "
              "between requests, so a new turn encodes only its own tokens. See docs/serving.md.");
  add_engine_options(p, ef);
  p.add("--host", "ADDR", "address to listen on (default 127.0.0.1)", &so.host);
  p.add("--port", "P", "TCP port, 0 = any free one (default 8080)", &so.port);
  p.add("--sessions", "N", "cache slots: concurrent requests plus idle sessions kept (default 16)",
        &ef.engine.slots);
  std::string kv_memory;
  p.add("--kv-memory", "SIZE", "size the slot pool from a KV memory budget per rank (e.g. 2GiB) "
        "instead of --sessions", &kv_memory);
  p.add("--session-ttl", "SEC", "drop sessions idle this long (default 600)", &sched_opt.session_ttl_s);
  std::string session_dir, session_dir_max;
  p.add("--session-dir", "DIR", "save sessions here instead of dropping them (evicted, expired, at "
        "shutdown, or POST /v1/sessions/{id}/save) and restore them on their next request, also after a restart",
        &session_dir);
  p.add("--session-dir-max", "SIZE", "bound on the session directory's disk use (e.g. 10GiB); the "
        "oldest saves are removed first (default: unbounded)", &session_dir_max);
  p.add("--max-tokens", "N", "generation limit of requests that set none (default 256)",
        &sched_opt.default_max_tokens);
  p.add("--step-tokens", "N", "prompt tokens per batched step, over all requests (default 4 x chunk)",
        &sched_opt.step_tokens);
  p.add("--max-prompt-tokens", "N",
        "longest prompt accepted, else 400 (default: 8 x the tokens a slot attends to)",
        &sched_opt.max_prompt_tokens);
  p.add("--itl-factor", "F",
        "while streams decode, cut a step's prompt tokens so that it lasts at most F decode-only "
        "steps (default 2; 0: only --step-tokens bounds them)",
        &sched_opt.itl_factor);
  p.add("--template", "NAME",
        "chat template: raw, llama-2, chatml, llama-3, vicuna, zephyr (default: detected from the "
        "GGUF's tokenizer.chat_template, raw when absent)",
        &template_name);
  p.add("--model-id", "NAME", "model id of the API (default: the file or directory name without .gguf)", &model_id);
  p.add("--max-body", "BYTES", "largest request body accepted, else 413 (default 1 MiB)", &max_body);
  p.add("--max-connections", "N", "open connections beyond this get 503 (default 256)", &so.max_connections);
  p.add("--client-buffer", "BYTES",
        "output a client may fall behind by before it is cut off (default 1 MiB)", &client_buffer);
  p.add("--http-threads", "N", "HTTP I/O threads (default 2)", &so.io_threads);
  p.add("--read-timeout", "SEC",
        "a request's headers and body must arrive within this, from its first byte, else 408 "
        "(default 10)",
        &so.read_timeout_s);
  p.add("--idle-timeout", "SEC", "keep-alive connections idle this long are closed (default 60)",
        &so.idle_timeout_s);
  p.add("--admin-port", "P",
        "also serve /health and /metrics on this port, whatever the main port's load (0 = any free "
        "one; default: none)",
        &so.admin_port);
  p.add("--stall-timeout", "SEC",
        "/health answers 503 when requests are pending and no step has completed this long "
        "(default 30; 0 = never)",
        &so.stall_timeout_s);
  p.epilog("Tensor parallel: mpirun -np N sinkserve serve ... (rank 0 serves HTTP).");
  if (!p.parse(argc, argv)) return 0;
  if (!kv_memory.empty()) {
    if (p.given("--sessions")) throw UsageError("give --sessions or --kv-memory, not both");
    ef.engine.kv_memory = parse_size(kv_memory, "--kv-memory");
  }
  const EngineOptions eo = finish_engine_options(ef);
  if (eo.slots < 1) throw UsageError("--sessions must be >= 1");
  if (so.port < 0 || so.port > 65535) throw UsageError("--port must be in 0..65535");
  if (!session_dir_max.empty() && session_dir.empty()) throw UsageError("--session-dir-max needs --session-dir");
  const int64_t store_max = session_dir_max.empty() ? 0 : parse_size(session_dir_max, "--session-dir-max");
  if (!session_dir.empty() && ef.policy == "recompute")
    throw UsageError("--session-dir needs a policy that keeps cache rows between requests (sink, window or dense)");
  if (!(sched_opt.session_ttl_s > 0 && sched_opt.session_ttl_s <= 315360000))
    throw UsageError("--session-ttl must be in (0, 315360000] seconds");
  if (sched_opt.default_max_tokens < 0) throw UsageError("--max-tokens must be >= 0");
  if (sched_opt.step_tokens < 0) throw UsageError("--step-tokens must be >= 0");
  if (p.given("--max-prompt-tokens") && sched_opt.max_prompt_tokens < 1)
    throw UsageError("--max-prompt-tokens must be >= 1");
  if (!(sched_opt.itl_factor == 0 || (sched_opt.itl_factor >= 1 && sched_opt.itl_factor <= 1000)))
    throw UsageError("--itl-factor must be 0 (off) or in [1, 1000]");
  if (max_body < 1) throw UsageError("--max-body must be >= 1");
  if (so.max_connections < 1) throw UsageError("--max-connections must be >= 1");
  if (client_buffer < 1024) throw UsageError("--client-buffer must be >= 1024");
  if (so.io_threads < 1 || so.io_threads > 64) throw UsageError("--http-threads must be in 1..64");
  if (!(so.read_timeout_s > 0 && so.read_timeout_s <= 3600)) throw UsageError("--read-timeout must be in (0, 3600] seconds");
  if (!(so.idle_timeout_s > 0 && so.idle_timeout_s <= 86400)) throw UsageError("--idle-timeout must be in (0, 86400] seconds");
  if (!(so.stall_timeout_s >= 0 && so.stall_timeout_s <= 86400)) throw UsageError("--stall-timeout must be in [0, 86400] seconds");
  if (p.given("--admin-port") && (so.admin_port < 0 || so.admin_port > 65535))
    throw UsageError("--admin-port must be in 0..65535");
  so.max_body = size_t(max_body);
  so.max_pending_bytes = size_t(client_buffer);
  if (!template_name.empty()) sched_opt.chat_template = parse_template_option(template_name);
  // "models/tl.gguf" and a checkpoint directory "models/tl/" both serve as "tl".
  std::filesystem::path model_path = std::filesystem::path(eo.model).lexically_normal();
  if (!model_path.has_filename()) model_path = model_path.parent_path();
  so.model_id = model_id.empty() ? model_path.stem().string() : model_id;

  // mpirun forwards SIGINT/SIGTERM to every rank; rank 0 alone decides when the job ends, after
  // its in-flight requests are answered, and then releases the other ranks.
  const auto ignore_signals = [] {
    std::signal(SIGINT, SIG_IGN);
    std::signal(SIGTERM, SIG_IGN);
  };
  // /metrics reports the collectives' share of step time: what tensor parallelism costs on the
  // links between the ranks (scripts/bench-multinode).
  TimedCommunicator comm(launch_communicator(eo));
  so.collectives = [&comm] {
    return CollectiveStats{comm.size(), comm.seconds(), comm.bytes(), comm.calls()};
  };
  return run_engine_command("serve", eo, comm, [&](Engine* e) -> int {
    if (template_name.empty()) sched_opt.chat_template = model_chat_template(*e);
    sched_opt.chat_add_bos = chat_opens_with_bos(*e, sched_opt.chat_template);
    sched_opt.sample_on = e->sample_on;
    struct stat st {};
    so.model_created = ::stat(eo.model.c_str(), &st) == 0 ? int64_t(st.st_mtime) : 0;

    const CacheConfig& cc = e->cache->config();
    std::fprintf(stderr,
                 "serve: %s (%s), %d rank(s); %d slots of %s cache (sink %d, window %d, chunk %d) in %s: "
                 "%lld bytes per cached token and %.2f MiB per slot per rank, KV memory %.1f MiB per rank%s; "
                 "chat template %s\n",
                 so.model_id.c_str(), e->model->config().arch.c_str(), e->comm->size(), e->cache->n_slots(),
                 policy_name(cc.policy).c_str(), cc.sink, cc.window, cc.chunk,
                 std::string(dtype_name(cc.kv_type)).c_str(), (long long)e->cache->token_bytes(),
                 double(e->cache->slot_rows() * e->cache->token_bytes()) / (1024.0 * 1024.0),
                 double(e->cache->pool_bytes()) / (1024.0 * 1024.0),
                 eo.kv_memory > 0 ? (" (--kv-memory buys " + std::to_string(e->cache->n_slots()) + " sessions of " +
                                     std::to_string(cc.sink + cc.window) + " tokens)").c_str() : "",
                 std::string(chat_template_name(sched_opt.chat_template)).c_str());

    std::unique_ptr<SessionStore> store;
    std::unique_ptr<SessionIO> io;
    if (!session_dir.empty()) {
      store = std::make_unique<SessionStore>(session_dir, store_max);
      io = std::make_unique<SessionIO>(*e->lockstep, *e->file);
      sched_opt.store = store.get();
      sched_opt.io = io.get();
      std::fprintf(stderr, "serve: sessions saved in %s (%zu there now, %.1f MiB%s)\n", session_dir.c_str(),
                   store->list().size(), double(store->used_bytes()) / (1024.0 * 1024.0),
                   store_max > 0 ? (", at most " + std::to_string(store_max) + " bytes").c_str() : "");
    }
    Scheduler sched(*e->lockstep, *e->tokenizer, sched_opt);
    HttpServer server(sched, so);
    std::atomic<bool> ran{false};
    server.on_signal([&](int sig) {
      std::fprintf(stderr, "serve: %s: finishing\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
      server.stop_accepting();
      sched.stop();
      // mpirun ends the job this way when another rank has died: the compute loop then sits in
      // a collective that never completes, and the requests in flight are answered from here
      // before mpirun's SIGKILL follows. A loop that still steps finishes them itself.
      server.after(kStuckAfter, [&] {
        const SchedulerStats st = sched.stats();
        const double stuck_s = std::max(double(kStuckAfter.count()) / 1000, 4 * st.step_s);
        if (ran || st.pending == 0 || st.last_step_age_s < stuck_s) return;
        std::fprintf(stderr, "serve: the compute loop has made no step for %.1f s: ending %d request(s) in flight\n",
                     st.last_step_age_s, st.pending);
        server.fail_in_flight(kRankLost);
      });
    });
    server.start();
    if (server.admin_port() >= 0)
      std::fprintf(stderr, "serve: admin (/health, /metrics) on http://%s:%d\n", so.host.c_str(), server.admin_port());
    std::fprintf(stderr, "serve: listening on http://%s:%d (pid %d)\n", so.host.c_str(), server.port(),
                 int(::getpid()));
    std::fflush(stderr);
    try {
      sched.run();
    } catch (const std::exception& ex) {
      // A failed step (a rank lost mid-collective, among others) ends the job: the clients hear
      // why before run_ranked ends every rank.
      server.fail_in_flight(std::string(kRankLost) + ": " + ex.what());
      server.stop(std::chrono::seconds(2));
      throw;
    }
    ran = true;
    server.stop(std::chrono::seconds(5));
    std::fprintf(stderr, "serve: stopped\n");
    return 0;
  }, ignore_signals);
}

RegisterCommand reg({"serve", "OpenAI-compatible HTTP server with continuous batching and sessions", &run});

}  // namespace
}  // namespace sinkserve
