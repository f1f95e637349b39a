// Continuous batching over the cache slot pool. Many requests share every forward step: each
// decoding stream contributes its one next token, prompts are cut into chunks of at most the
// cache's chunk size and interleaved round-robin, so a long prompt never stalls the streams that
// are already decoding. Sessions keep their cache slot between requests: a new turn encodes only
// what the session has not seen yet.
//
// Threading: run() is the compute loop and the only code that touches the model, the cache and
// the communicator (rank 0; the other ranks replay its steps in Lockstep::follow()). Every other
// public member is thread-safe and never waits for a forward step. Requests report back through
// their EventSink, called on the compute thread: it must not block.
//
// The scheduler knows tokens, sessions and slots; it knows nothing of HTTP or JSON.
#pragma once
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/chat_template.h"
#include "runtime/conversation.h"
#include "runtime/lockstep.h"
#include "runtime/sampler.h"
#include "runtime/session_file.h"
#include "runtime/session_store.h"
#include "runtime/tokenizer.h"

namespace sinkserve {

enum class FinishReason { Stop, Length, Cancelled, Shutdown };
const char* finish_reason_name(FinishReason r);

// Why a request was refused before it produced anything.
// SessionUnreadable: the session's saved file is damaged or belongs to another model or cache.
enum class RejectReason { BadRequest, NoSlot, SessionBusy, ShuttingDown, SessionUnreadable };

struct Usage {
  int64_t prompt_tokens = 0;      // tokens this request encoded
  int64_t completion_tokens = 0;  // tokens it generated
  int64_t cached_tokens = 0;      // session tokens already in the cache when it started
  bool restored = false;          // its session was brought back from the session directory
};

struct StreamEvent {
  enum class Kind { Started, Token, Done, Rejected };
  Kind kind = Kind::Started;
  int32_t token = -1;  // Token: the generated id
  std::string text;    // Token: text that became final with it (may be empty: stop-string
                       // look-ahead or an incomplete UTF-8 character holds text back)
  FinishReason finish = FinishReason::Stop;  // Done
  Usage usage;                                // Done
  RejectReason reject = RejectReason::BadRequest;  // Rejected
  std::string message;                             // Rejected: what was wrong
};

// Returns false to cancel the request (the client is gone or cannot keep up): no further event
// is delivered for it, and its slot is freed before the next step.
using EventSink = std::function<bool(const StreamEvent&)>;

struct GenerationRequest {
  std::string session;  // empty: stateless, the slot is freed when the request ends
  bool chat = false;
  // Chat: the full conversation. On a session, the prefix the session has already seen (its
  // earlier requests' messages and replies) must be repeated verbatim and is skipped.
  std::vector<ChatMessage> messages;
  std::string prompt;  // completion: raw text appended to the stream
  SamplingParams sampling;
  int max_tokens = -1;  // -1: the scheduler's default
  std::vector<std::string> stop;
  bool ignore_eos = false;  // generate exactly max_tokens (benchmarks): end tokens are fed on
  // A prompt longer than the cache window keeps its opening (BOS and, for a new chat, the system
  // messages) and its most recent tokens, the window's worth in all, instead of being refused
  // over --max-prompt-tokens or a dense context.
  bool truncate_keep_recent = false;
  EventSink sink;
};

struct SchedulerOptions {
  double session_ttl_s = 600;    // idle sessions older than this are dropped
  int default_max_tokens = 256;  // for requests that do not say
  int step_tokens = 0;           // token budget of one step for prompt chunks; 0: 4 x chunk
  int max_prompt_tokens = 0;     // longest prompt accepted; 0: 8 x the tokens a slot attends to
  // While streams decode, a step's prompt tokens are cut so that it should last at most this
  // many times a decode-only step (measured as the server runs); 0: only step_tokens bounds them.
  double itl_factor = 2;
  ChatTemplate chat_template = ChatTemplate::Raw;
  bool chat_add_bos = true;  // a new chat session starts with BOS (as `sinkserve chat` decides)
  SampleOn sample_on = SampleOn::Host;  // where tokens are drawn (the engine's --sampler)
  // The session directory (serve --session-dir), with the SessionIO of the engine it runs on;
  // null: sessions live in memory only. Sessions evicted or expired are saved there instead of
  // dropped, a request for a session not in memory restores it from there, and stop() saves
  // every idle session.
  SessionStore* store = nullptr;
  SessionIO* io = nullptr;
};

// What save_session() did.
struct SaveResult {
  enum class Status { Saved, Unknown, Busy, Failed, NoStore };
  Status status = Status::Failed;
  int64_t bytes = 0;     // Saved: the file's size
  int64_t tokens = 0;    // Saved: the session's stream tokens
  std::string message;   // otherwise: why not
};

struct SessionInfo {
  std::string id;
  int64_t tokens = 0;      // tokens streamed through its slot
  int64_t cache_rows = 0;  // of which the cache holds (sinks + window): constant past the window
  int64_t messages = 0;
  double last_use_unix = 0;  // seconds since the epoch
  bool busy = false;
  // In the session directory only (not in memory): restored by its next request. Then only id,
  // last_use_unix (when it was saved) and saved_bytes are known.
  bool on_disk = false;
  int64_t saved_bytes = 0;
};

// Cumulative latency distribution with fixed upper bounds (seconds), Prometheus-style.
struct LatencyHistogram {
  static constexpr std::array<double, 14> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                     0.1,   0.25,   0.5,   1,    2.5,   5,
                                                     10,    30};
  std::array<uint64_t, kBounds.size() + 1> counts{};  // last: above every bound
  uint64_t count = 0;
  double sum = 0;
  void observe(double seconds);
};

struct SchedulerStats {
  uint64_t requests_started = 0;
  uint64_t requests_finished[4] = {};  // by FinishReason
  uint64_t requests_rejected[5] = {};  // by RejectReason
  uint64_t prompt_tokens = 0;
  uint64_t generated_tokens = 0;
  uint64_t steps = 0;
  uint64_t sessions_evicted = 0;
  uint64_t sessions_expired = 0;
  uint64_t sessions_saved = 0;     // written to the session directory
  uint64_t sessions_restored = 0;  // brought back from it
  uint64_t prompts_truncated = 0;
  LatencyHistogram ttft;  // submit to first generated token
  LatencyHistogram itl;   // between consecutive generated tokens of a request
  int sessions = 0;       // sessions holding a slot
  int running = 0;        // requests being computed
  int free_slots = 0;
  int total_slots = 0;
  int pending = 0;  // requests queued or running
  // Seconds since the last forward step completed (since the compute loop started when none has).
  double last_step_age_s = 0;
  int prefill_budget = 0;  // prompt tokens the next step may take
  double step_s = 0;       // duration of recent steps (moving average)
  double step_seconds = 0;  // every step's duration, summed
};

class Scheduler {
 public:
  // `ls` must be the leader's (rank 0). The tokenizer must outlive the scheduler.
  Scheduler(Lockstep& ls, const Tokenizer& tok, SchedulerOptions opt);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; its sink hears Started or Rejected first. Returns an id for cancel().
  uint64_t submit(GenerationRequest r);
  // Ends a request with FinishReason::Cancelled at the next step; unknown ids are ignored.
  void cancel(uint64_t id);
  // Drops a session and frees its slot (cancelling its running request). False when unknown.
  // Also removes its saved file, when there is a session directory.
  bool delete_session(const std::string& id);
  // Writes the session to the session directory (between steps, on the compute thread; this
  // waits for it). Thread-safe.
  SaveResult save_session(const std::string& id);
  // The sessions in memory and, with a session directory, those saved there and not in memory.
  std::vector<SessionInfo> sessions() const;
  SchedulerStats stats() const;

  // The compute loop: returns after stop(), once every request has ended and the other ranks
  // have been released from Lockstep::follow().
  void run();
  // Thread-safe and async-signal-unsafe: ends run() at the next step, finishing running requests
  // with FinishReason::Shutdown and refusing queued ones.
  void stop();

 private:
  using Clock = std::chrono::steady_clock;
  struct Session {
    std::string id;
    int slot = -1;
    bool busy = false;
    bool doomed = false;  // deleted while busy: dropped when its request ends
    uint64_t active_id = 0;
    int64_t tokens = 0;
    // Fingerprints of the messages the cache holds (the replies included), to find where a
    // request's history ends and its new turns begin without keeping the text.
    std::vector<uint64_t> history;
    // The reply's last token when it ended by length: sampled, never fed, the next turn's first.
    std::vector<int32_t> carry;
    std::vector<int32_t> recent;  // recompute: the window the next turn's pass starts from
    Clock::time_point last_use;
    std::chrono::system_clock::time_point last_use_wall;
  };
  struct Active;
  struct Pending {
    uint64_t id;
    GenerationRequest req;
    Clock::time_point submitted;
  };

  void admit(Pending& p);
  bool take_slot(int* slot);
  // With mu_ held, on the compute thread: writes an idle session to the store and returns the
  // file's size; throws on failure.
  int64_t write_locked(const Session& s);
  // The same when there is a store, for a session about to leave memory: a failure is reported on
  // stderr and the session is dropped as without a store.
  void save_locked(const Session& s, const char* why);
  SaveResult save_now(const std::string& id);
  // With mu_ held: the saved session `id` restored into a fresh slot and entered in sessions_;
  // null when nothing is saved under id. Throws SessionFileError when the file cannot be used.
  Session* restore_locked(const std::string& id, bool* no_slot);
  void drop_session_locked(std::unordered_map<std::string, Session>::iterator it);
  void expire_sessions_locked(Clock::time_point now);
  void release_pending_slots();
  void run_step();
  bool deliver(Active& a, const StreamEvent& e);
  void on_token(Active& a, int32_t token, Clock::time_point now);
  void finish(Active& a, FinishReason why);
  void reject(Pending& p, RejectReason why, std::string message);
  std::vector<int32_t> encode_request(Session* s, const GenerationRequest& r, std::string* err,
                                      std::vector<uint64_t>* new_history, size_t* prefix);
  // With mu_ held. Empty when the prompt may run (after truncation), else why not.
  std::string check_prompt(const Session* s, const GenerationRequest& r, size_t prefix,
                           std::vector<int32_t>* feed);
  int prefill_budget(bool decoding) const;
  void measure_step(double seconds, uint64_t prompt_tokens, bool decoding);

  Lockstep& ls_;
  const Tokenizer& tok_;
  SchedulerOptions opt_;
  ChatFormat format_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> inbox_;
  std::vector<uint64_t> cancels_;
  std::vector<int> releases_;  // slots of deleted sessions, freed by the compute thread
  struct SaveOrder {
    std::string id;
    std::promise<SaveResult> done;
  };
  std::deque<SaveOrder> saves_;  // save_session() requests, served between steps
  std::unordered_map<std::string, Session> sessions_;
  SchedulerStats stats_;
  Clock::time_point last_step_;
  bool stop_ = false;
  uint64_t next_id_ = 1;

  // Compute thread only.
  std::vector<std::unique_ptr<Active>> active_;
  size_t rr_ = 0;  // round-robin position among prompt-feeding requests
  // Step costs, for the prompt budget while streams decode (exponential moving averages; <0: none).
  double decode_step_s_ = -1, prefill_token_s_ = -1;
  std::vector<float> logits_;
  // run_step's working arrays, kept to reuse their memory step after step.
  struct StepBuffers {
    std::vector<SeqStep> steps;
    std::vector<Active*> owner, prompting;
    std::vector<int> consumed;  // feed tokens each sequence covers (recompute: not its step length)
    std::vector<char> draws;
    std::vector<int32_t> drawn;
    std::vector<SampleSpec> specs;
  } step_;
};

}  // namespace sinkserve
