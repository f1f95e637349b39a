#include "cluster/metrics.h"

#include <cstdio>

namespace sinkserve {

void HttpCounters::count(const std::string& route, int status) {
  std::lock_guard lk(mu_);
  ++n_[{route, status}];
}

std::map<std::pair<std::string, int>, uint64_t> HttpCounters::snapshot() const {
  std::lock_guard lk(mu_);
  return n_;
}

namespace {

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void sample(std::string& out, const std::string& name, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, " %.17g\n", v);
  out += name;
  out += buf;
}

void histogram(std::string& out, const char* name, const char* help, const LatencyHistogram& h) {
  header(out, name, "histogram", help);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < LatencyHistogram::kBounds.size(); ++i) {
    cumulative += h.counts[i];
    char le[32];
    std::snprintf(le, sizeof le, "%g", LatencyHistogram::kBounds[i]);
    sample(out, std::string(name) + "_bucket{le=\"" + le + "\"}", double(cumulative));
  }
  sample(out, std::string(name) + "_bucket{le=\"+Inf\"}", double(h.count));
  sample(out, std::string(name) + "_sum", h.sum);
  sample(out, std::string(name) + "_count", double(h.count));
}

}  // namespace

std::string render_metrics(const SchedulerStats& s, const HttpCounters& http, int open_connections,
                           const CollectiveStats* collectives) {
  std::string out;
  header(out, "sinkserve_http_requests_total", "counter", "HTTP responses sent, by route and status code.");
  for (const auto& [key, n] : http.snapshot())
    sample(out, "sinkserve_http_requests_total{route=\"" + key.first + "\",status=\"" +
                    std::to_string(key.second) + "\"}",
           double(n));
  header(out, "sinkserve_generations_total", "counter",
         "Generation requests by outcome: finish reason, or the reason they were refused.");
  const char* finished[] = {"stop", "length", "cancelled", "shutdown"};
  for (int i = 0; i < 4; ++i)
    sample(out, std::string("sinkserve_generations_total{outcome=\"") + finished[i] + "\"}",
           double(s.requests_finished[i]));
  const char* rejected[] = {"rejected_bad_request", "rejected_no_slot", "rejected_session_busy",
                            "rejected_shutting_down", "rejected_session_unreadable"};
  for (int i = 0; i < 5; ++i)
    sample(out, std::string("sinkserve_generations_total{outcome=\"") + rejected[i] + "\"}",
           double(s.requests_rejected[i]));
  header(out, "sinkserve_prompt_tokens_total", "counter",
         "Prompt tokens encoded (on a session: only the new turns).");
  sample(out, "sinkserve_prompt_tokens_total", double(s.prompt_tokens));
  header(out, "sinkserve_generated_tokens_total", "counter", "Tokens generated.");
  sample(out, "sinkserve_generated_tokens_total", double(s.generated_tokens));
  header(out, "sinkserve_steps_total", "counter", "Batched forward steps run.");
  sample(out, "sinkserve_steps_total", double(s.steps));
  header(out, "sinkserve_step_seconds_total", "counter", "Time spent in batched forward steps.");
  sample(out, "sinkserve_step_seconds_total", s.step_seconds);
  if (collectives) {
    header(out, "sinkserve_tp_ranks", "gauge", "Ranks of the tensor-parallel group.");
    sample(out, "sinkserve_tp_ranks", collectives->ranks);
    header(out, "sinkserve_collective_seconds_total", "counter",
           "Time rank 0 spent in the model's collectives (all-reduce, all-gather) during steps, "
           "waiting for the other ranks included (NCCL: only their launch, they run on the GPU).");
    sample(out, "sinkserve_collective_seconds_total", collectives->seconds);
    header(out, "sinkserve_collective_bytes_total", "counter",
           "Payload of the model's collectives on rank 0 (all-reduce and all-gather buffers).");
    sample(out, "sinkserve_collective_bytes_total", double(collectives->bytes));
    header(out, "sinkserve_collective_calls_total", "counter", "The model's collectives issued.");
    sample(out, "sinkserve_collective_calls_total", double(collectives->calls));
  }
  header(out, "sinkserve_sessions_evicted_total", "counter", "Idle sessions evicted to free a slot.");
  sample(out, "sinkserve_sessions_evicted_total", double(s.sessions_evicted));
  header(out, "sinkserve_sessions_expired_total", "counter", "Idle sessions dropped after --session-ttl.");
  sample(out, "sinkserve_sessions_expired_total", double(s.sessions_expired));
  header(out, "sinkserve_sessions_saved_total", "counter",
         "Sessions written to --session-dir (saved on request, evicted, expired or at shutdown).");
  sample(out, "sinkserve_sessions_saved_total", double(s.sessions_saved));
  header(out, "sinkserve_sessions_restored_total", "counter", "Sessions brought back from --session-dir.");
  sample(out, "sinkserve_sessions_restored_total", double(s.sessions_restored));
  histogram(out, "sinkserve_time_to_first_token_seconds",
            "From request arrival to its first generated token.", s.ttft);
  histogram(out, "sinkserve_inter_token_latency_seconds",
            "Between consecutive generated tokens of one request.", s.itl);
  header(out, "sinkserve_active_sessions", "gauge", "Sessions holding a cache slot.");
  sample(out, "sinkserve_active_sessions", s.sessions);
  header(out, "sinkserve_running_requests", "gauge", "Requests being computed.");
  sample(out, "sinkserve_running_requests", s.running);
  header(out, "sinkserve_free_slots", "gauge", "Cache slots holding nothing.");
  sample(out, "sinkserve_free_slots", s.free_slots);
  header(out, "sinkserve_slots", "gauge", "Cache slots in the pool.");
  sample(out, "sinkserve_slots", s.total_slots);
  header(out, "sinkserve_prompts_truncated_total", "counter",
         "Prompts kept to the window by \"truncate_prompt\": \"keep_recent\".");
  sample(out, "sinkserve_prompts_truncated_total", double(s.prompts_truncated));
  header(out, "sinkserve_pending_requests", "gauge", "Requests queued or being computed.");
  sample(out, "sinkserve_pending_requests", s.pending);
  header(out, "sinkserve_last_step_age_seconds", "gauge",
         "Seconds since the last forward step completed while requests are pending; 0 when idle.");
  sample(out, "sinkserve_last_step_age_seconds", s.pending > 0 ? s.last_step_age_s : 0.0);
  header(out, "sinkserve_prefill_token_budget", "gauge",
         "Prompt tokens the next step may take (bounded while streams decode, --itl-factor).");
  sample(out, "sinkserve_prefill_token_budget", s.prefill_budget);
  header(out, "sinkserve_open_connections", "gauge", "Open HTTP connections.");
  sample(out, "sinkserve_open_connections", open_connections);
  return out;
}

}  // namespace sinkserve
