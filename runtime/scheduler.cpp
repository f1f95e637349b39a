#include "runtime/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <utility>

namespace sinkserve {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Shutdown: return "shutdown";
  }
  return "?";
}

void LatencyHistogram::observe(double seconds) {
  size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  ++counts[i];
  ++count;
  sum += seconds;
}

namespace {

// The scheduler's section of a session file: the chat template its turns were rendered with, then
// the fingerprints of the messages its cache holds, one per line in hex.
std::string encode_conversation(ChatTemplate t, const std::vector<uint64_t>& history) {
  std::string out = std::string(chat_template_name(t)) + "\n";
  for (uint64_t h : history) {
    char buf[20];
    std::snprintf(buf, sizeof buf, "%016llx\n", static_cast<unsigned long long>(h));
    out += buf;
  }
  return out;
}

std::vector<uint64_t> decode_conversation(const std::string& text, ChatTemplate here, const std::string& source) {
  std::vector<uint64_t> history;
  size_t at = text.find('\n');
  if (at == std::string::npos) throw SessionFileError(source + ": its conversation section is malformed");
  const std::string saved = text.substr(0, at);
  if (saved != chat_template_name(here))
    throw SessionFileError(source + ": its turns were rendered with chat template '" + saved +
                           "', this server renders '" + std::string(chat_template_name(here)) + "'");
  for (++at; at < text.size();) {
    const size_t end = text.find('\n', at);
    if (end == std::string::npos || end - at != 16) throw SessionFileError(source + ": its conversation section is malformed");
    char* stop = nullptr;
    const std::string hex = text.substr(at, 16);
    history.push_back(std::strtoull(hex.c_str(), &stop, 16));
    if (stop != hex.c_str() + 16) throw SessionFileError(source + ": its conversation section is malformed");
    at = end + 1;
  }
  return history;
}

constexpr const char* kShuttingDown = "the server is shutting down";

uint64_t fingerprint(const ChatMessage& m) {
  // FNV-1a over role, a separator no role contains, and content.
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](std::string_view s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 0x100000001b3ull;
    }
  };
  mix(m.role);
  mix(std::string_view("\0", 1));
  mix(m.content);
  return h;
}

}  // namespace

struct Scheduler::Active {
  Active(uint64_t id_, GenerationRequest r, const Tokenizer& tok)
      : id(id_), req(std::move(r)), sampler(req.sampling), decoder(tok) {}
  uint64_t id;
  GenerationRequest req;
  int slot = -1;
  std::vector<int32_t> feed;  // tokens to append to the slot; [fed, size) still to go
  size_t fed = 0;
  bool prompting = true;      // still feeding the prompt (no token sampled yet)
  int64_t streamed = 0;       // tokens appended to the slot by this request
  int max_tokens = 0;
  Sampler sampler;
  StreamDecoder decoder;
  StopMatcher matcher;
  std::string reply;  // text released to the client
  std::vector<uint64_t> new_history;
  std::vector<int32_t> carry;
  std::vector<int32_t> recent;  // recompute: the tokens of the window, rebuilt every step
  Usage usage;
  Clock::time_point submitted, last_token;
  bool sink_gone = false;
  bool done = false;
};

Scheduler::Scheduler(Lockstep& ls, const Tokenizer& tok, SchedulerOptions opt)
    : ls_(ls), tok_(tok), opt_(std::move(opt)), format_(tok, opt_.chat_template, opt_.chat_add_bos) {
  if (!ls_.leader()) throw std::logic_error("the scheduler runs on rank 0 only");
  stats_.total_slots = ls_.cache().n_slots();
  stats_.free_slots = ls_.cache().free_slots();
  const CacheConfig& cc = ls_.cache().config();
  if (opt_.max_prompt_tokens <= 0) opt_.max_prompt_tokens = 8 * (cc.sink + cc.window);
  last_step_ = Clock::now();
}

Scheduler::~Scheduler() = default;

uint64_t Scheduler::submit(GenerationRequest r) {
  std::unique_lock lk(mu_);
  const uint64_t id = next_id_++;
  if (stop_) {
    lk.unlock();
    Pending p{id, std::move(r), Clock::now()};
    reject(p, RejectReason::ShuttingDown, kShuttingDown);
    return id;
  }
  // The step clock measures progress on pending work: idle time before it does not count.
  if (inbox_.empty() && stats_.running == 0) last_step_ = Clock::now();
  inbox_.push_back({id, std::move(r), Clock::now()});
  cv_.notify_one();
  return id;
}

void Scheduler::cancel(uint64_t id) {
  std::lock_guard lk(mu_);
  cancels_.push_back(id);
  cv_.notify_one();
}

bool Scheduler::delete_session(const std::string& id) {
  std::lock_guard lk(mu_);
  bool stored = false;
  if (opt_.store) {
    try {
      stored = opt_.store->remove(id);
    } catch (const std::exception&) {
      // An id no file name can hold was never saved.
    }
  }
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return stored;
  if (it->second.busy) {
    // The running request ends at the next step; its end drops the session.
    it->second.doomed = true;
    cancels_.push_back(it->second.active_id);
  } else {
    drop_session_locked(it);
  }
  cv_.notify_one();
  return true;
}

SaveResult Scheduler::save_session(const std::string& id) {
  if (!opt_.store) return {SaveResult::Status::NoStore, 0, 0, "this server keeps sessions in memory only (no --session-dir)"};
  std::future<SaveResult> done;
  {
    std::lock_guard lk(mu_);
    if (stop_) return {SaveResult::Status::Failed, 0, 0, "the server is shutting down"};
    saves_.push_back({id, {}});
    done = saves_.back().done.get_future();
    cv_.notify_one();
  }
  return done.get();
}

SaveResult Scheduler::save_now(const std::string& id) {
  std::lock_guard lk(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.doomed)
    return {SaveResult::Status::Unknown, 0, 0, "session '" + id + "' does not exist"};
  if (it->second.busy)
    return {SaveResult::Status::Busy, 0, 0, "session '" + id + "' is busy with a request; save it between turns"};
  try {
    const Session& ses = it->second;
    return {SaveResult::Status::Saved, write_locked(ses), ses.tokens, {}};
  } catch (const std::exception& e) {
    return {SaveResult::Status::Failed, 0, 0, e.what()};
  }
}

int64_t Scheduler::write_locked(const Session& ses) {
  const int64_t bytes = opt_.store->save(
      opt_.io->capture(ses.slot, ses.id, ses.carry, encode_conversation(format_.chat_template(), ses.history)));
  ++stats_.sessions_saved;
  return bytes;
}

void Scheduler::save_locked(const Session& ses, const char* why) {
  if (!opt_.store) return;
  try {
    write_locked(ses);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serve: session '%s' (%s) could not be saved, it is dropped: %s\n", ses.id.c_str(), why, e.what());
  }
}

Scheduler::Session* Scheduler::restore_locked(const std::string& id, bool* no_slot) {
  *no_slot = false;
  std::optional<SessionSnapshot> saved = opt_.store->load(id);
  if (!saved) return nullptr;
  const std::string source = opt_.store->path_of(id);
  std::vector<uint64_t> history = decode_conversation(saved->conversation, format_.chat_template(), source);
  int slot = -1;
  if (!take_slot(&slot)) {
    *no_slot = true;
    return nullptr;
  }
  try {
    opt_.io->restore(slot, *saved, source);
  } catch (...) {
    ls_.release(slot);
    throw;
  }
  Session& ses = sessions_[id];
  ses.id = id;
  ses.slot = slot;
  ses.tokens = saved->tokens;
  ses.carry = saved->held_tokens;
  ses.history = std::move(history);
  ses.last_use = Clock::now();
  ses.last_use_wall = std::chrono::system_clock::now();
  ++stats_.sessions_restored;
  return &ses;
}

std::vector<SessionInfo> Scheduler::sessions() const {
  std::lock_guard lk(mu_);
  std::vector<SessionInfo> out;
  out.reserve(sessions_.size());
  for (const auto& [id, s] : sessions_) {
    if (s.doomed) continue;
    out.push_back({id, s.tokens, KVCache::cached_tokens_for(ls_.cache().config(), s.tokens), int64_t(s.history.size()),
                   std::chrono::duration<double>(s.last_use_wall.time_since_epoch()).count(),
                   s.busy});
  }
  if (opt_.store) {
    for (const StoredSession& f : opt_.store->list()) {
      if (sessions_.count(f.id)) continue;
      SessionInfo info;
      info.id = f.id;
      info.last_use_unix = double(f.saved_ns) / 1e9;
      info.on_disk = true;
      info.saved_bytes = f.bytes;
      out.push_back(std::move(info));
    }
  }
  std::sort(out.begin(), out.end(), [](const SessionInfo& a, const SessionInfo& b) { return a.id < b.id; });
  return out;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lk(mu_);
  SchedulerStats s = stats_;
  s.sessions = 0;
  for (const auto& [id, ses] : sessions_) s.sessions += ses.doomed ? 0 : 1;
  s.pending = int(inbox_.size()) + s.running;
  s.last_step_age_s = std::chrono::duration<double>(Clock::now() - last_step_).count();
  return s;
}

void Scheduler::stop() {
  std::lock_guard lk(mu_);
  stop_ = true;
  cv_.notify_one();
}

void Scheduler::drop_session_locked(std::unordered_map<std::string, Session>::iterator it) {
  releases_.push_back(it->second.slot);
  sessions_.erase(it);
}

void Scheduler::expire_sessions_locked(Clock::time_point now) {
  const auto ttl = std::chrono::duration<double>(opt_.session_ttl_s);
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    auto next = std::next(it);
    if (!it->second.busy && now - it->second.last_use > ttl) {
      save_locked(it->second, "expired");
      drop_session_locked(it);
      ++stats_.sessions_expired;
    }
    it = next;
  }
}

void Scheduler::release_pending_slots() {
  std::lock_guard lk(mu_);
  for (int slot : releases_) ls_.release(slot);
  releases_.clear();
  stats_.free_slots = ls_.cache().free_slots();
}

void Scheduler::run() {
  for (;;) {
    std::deque<Pending> incoming;
    std::vector<uint64_t> cancels;
    std::deque<SaveOrder> saves;
    bool stopping;
    {
      std::unique_lock lk(mu_);
      while (active_.empty() && inbox_.empty() && cancels_.empty() && releases_.empty() && saves_.empty() && !stop_) {
        // Idle: sleep until work arrives or the oldest idle session is due to expire.
        auto oldest = Clock::time_point::max();
        for (const auto& [id, s] : sessions_)
          if (!s.busy) oldest = std::min(oldest, s.last_use);
        if (oldest == Clock::time_point::max()) {
          cv_.wait(lk);
        } else {
          const auto due = oldest + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(opt_.session_ttl_s)) +
                           std::chrono::milliseconds(1);
          if (cv_.wait_until(lk, due) == std::cv_status::timeout) break;
        }
      }
      expire_sessions_locked(Clock::now());
      incoming.swap(inbox_);
      cancels.swap(cancels_);
      saves.swap(saves_);
      stopping = stop_;
    }
    release_pending_slots();
    for (SaveOrder& o : saves)
      o.done.set_value(stopping ? SaveResult{SaveResult::Status::Failed, 0, 0, "the server is shutting down"}
                                : save_now(o.id));
    if (stopping) {
      for (auto& a : active_) finish(*a, FinishReason::Shutdown);
      active_.clear();
      for (Pending& p : incoming) reject(p, RejectReason::ShuttingDown, kShuttingDown);
      {
        // A restart with the same session directory resumes every session that was idle.
        std::lock_guard lk(mu_);
        for (const auto& [id, ses] : sessions_)
          if (!ses.busy && !ses.doomed) save_locked(ses, "at shutdown");
      }
      release_pending_slots();
      ls_.finish();
      return;
    }
    for (Pending& p : incoming) admit(p);
    // After admission: a request cancelled while still queued is admitted, then ended here.
    for (uint64_t id : cancels)
      for (auto& a : active_)
        if (a->id == id && !a->done) finish(*a, FinishReason::Cancelled);
    std::erase_if(active_, [](const auto& a) { return a->done; });
    if (!active_.empty()) run_step();
  }
}

void Scheduler::reject(Pending& p, RejectReason why, std::string message) {
  {
    std::lock_guard lk(mu_);
    ++stats_.requests_rejected[int(why)];
  }
  StreamEvent e;
  e.kind = StreamEvent::Kind::Rejected;
  e.reject = why;
  e.message = std::move(message);
  p.req.sink(e);
}

std::vector<int32_t> Scheduler::encode_request(Session* s, const GenerationRequest& r,
                                               std::string* err,
                                               std::vector<uint64_t>* new_history,
                                               size_t* prefix) {
  std::vector<int32_t> out = s ? s->carry : std::vector<int32_t>{};
  const bool fresh = !s;
  *prefix = 0;
  if (!r.chat) {
    const std::vector<int32_t> ids = tok_.encode(r.prompt, fresh);
    out.insert(out.end(), ids.begin(), ids.end());
    if (fresh && !out.empty() && out[0] == tok_.bos()) *prefix = 1;
    if (out.empty()) *err = "the prompt encodes to no tokens";
    return out;
  }
  const size_t seen = s ? s->history.size() : 0;
  for (size_t i = 0; i < std::min(seen, r.messages.size()); ++i)
    if (fingerprint(r.messages[i]) != s->history[i]) {
      *err = "messages[" + std::to_string(i) + "] differs from what session '" + s->id +
             "' has seen; send the conversation so far followed by the new turn, or use a new "
             "session";
      return {};
    }
  if (r.messages.size() <= seen) {
    *err = "no new message: session '" + (s ? s->id : std::string()) + "' has already seen all " +
           std::to_string(seen) + " messages";
    return {};
  }
  if (r.messages.back().role == "assistant") {
    *err = "the last message must not be from the assistant";
    return {};
  }
  const std::vector<ChatMessage> fresh_msgs(r.messages.begin() + ptrdiff_t(seen), r.messages.end());
  try {
    out = format_.encode_turn(fresh_msgs, seen == 0, fresh, out);
  } catch (const std::invalid_argument& e) {
    *err = e.what();
    return {};
  }
  // What truncation keeps from the start: the carried token, BOS, and below the system messages.
  *prefix = (s ? s->carry.size() : 0) + (fresh && format_.opens_with_bos() ? 1 : 0);
  if (fresh && r.truncate_keep_recent) {
    // The opening system messages, measured as rendered alone: the boundary with the first
    // user turn may tokenize a token differently, which at worst moves it by that token.
    std::vector<ChatMessage> system;
    for (const ChatMessage& m : fresh_msgs) {
      if (m.role != "system") break;
      system.push_back(m);
    }
    if (!system.empty()) {
      try {
        *prefix += tok_.encode(render_turn(format_.chat_template(), system, true, false), false).size();
      } catch (const std::invalid_argument&) {
        // A format that cannot render a system message alone keeps only BOS.
      }
    }
  }
  for (const ChatMessage& m : fresh_msgs) new_history->push_back(fingerprint(m));
  if (out.empty()) *err = "the messages encode to no tokens";
  *prefix = std::min(*prefix, out.size());
  return out;
}

std::string Scheduler::check_prompt(const Session* s, const GenerationRequest& r, size_t prefix,
                                    std::vector<int32_t>* feed) {
  const CacheConfig& cc = ls_.cache().config();
  const bool dense = cc.policy == Policy::Dense;
  const int64_t held = dense && s ? ls_.cache().stream_tokens(s->slot) : 0;
  // What the cache can hold of this prompt: a dense slot's room left, else what attention sees.
  const int64_t room = std::min<int64_t>(dense ? cc.window - held : int64_t(cc.sink) + cc.window,
                                         opt_.max_prompt_tokens);
  if (r.truncate_keep_recent && int64_t(feed->size()) > room && room > 0) {
    const size_t keep_head = std::min<size_t>(prefix, size_t(room) / 2);
    const size_t keep_tail = size_t(room) - keep_head;
    feed->erase(feed->begin() + ptrdiff_t(keep_head), feed->end() - ptrdiff_t(keep_tail));
    ++stats_.prompts_truncated;
  }
  const int64_t n = int64_t(feed->size());
  if (n > opt_.max_prompt_tokens)
    return "the prompt is " + std::to_string(n) + " tokens; this server accepts at most " +
           std::to_string(opt_.max_prompt_tokens) +
           " (--max-prompt-tokens); shorten it or send \"truncate_prompt\": \"keep_recent\"";
  if (dense && n > cc.window - held)
    return "the prompt is " + std::to_string(n) + " tokens but the dense context holds " +
           std::to_string(cc.window) + (held ? " and session '" + s->id + "' already fills " + std::to_string(held) : std::string()) +
           " (--ctx): it cannot fit";
  return {};
}

bool Scheduler::take_slot(int* slot) {
  if ((*slot = ls_.acquire()) >= 0) return true;
  // Full: evict the session idle the longest. Busy sessions are never evicted.
  auto victim = sessions_.end();
  for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
    if (!it->second.busy && (victim == sessions_.end() || it->second.last_use < victim->second.last_use))
      victim = it;
  if (victim == sessions_.end()) return false;
  save_locked(victim->second, "evicted");
  ls_.release(victim->second.slot);
  sessions_.erase(victim);
  ++stats_.sessions_evicted;
  *slot = ls_.acquire();
  return *slot >= 0;
}

void Scheduler::admit(Pending& p) {
  std::unique_lock lk(mu_);
  Session* s = nullptr;
  bool restored = false;
  if (!p.req.session.empty()) {
    if (auto it = sessions_.find(p.req.session); it != sessions_.end()) {
      if (it->second.busy || it->second.doomed) {
        lk.unlock();
        reject(p, RejectReason::SessionBusy,
               "session '" + p.req.session + "' is busy with another request");
        return;
      }
      s = &it->second;
    } else if (opt_.store) {
      bool no_slot = false;
      try {
        s = restore_locked(p.req.session, &no_slot);
      } catch (const std::exception& e) {
        lk.unlock();
        reject(p, RejectReason::SessionUnreadable,
               "session '" + p.req.session + "' cannot be restored: " + e.what());
        return;
      }
      if (no_slot) {
        const int n = ls_.cache().n_slots();
        lk.unlock();
        reject(p, RejectReason::NoSlot, "all " + std::to_string(n) + " cache slots hold running requests");
        return;
      }
      restored = s != nullptr;
    }
  }
  auto a = std::make_unique<Active>(p.id, std::move(p.req), tok_);
  a->usage.restored = restored;
  std::string err;
  size_t prefix = 0;
  a->feed = encode_request(s, a->req, &err, &a->new_history, &prefix);
  if (err.empty()) err = check_prompt(s, a->req, prefix, &a->feed);
  if (!err.empty()) {
    lk.unlock();
    p.req = std::move(a->req);
    reject(p, RejectReason::BadRequest, err);
    return;
  }
  if (s) {
    a->slot = s->slot;
    a->usage.cached_tokens = s->tokens;
    a->recent = s->recent;
  } else {
    if (!take_slot(&a->slot)) {
      const int n = ls_.cache().n_slots();
      lk.unlock();
      p.req = std::move(a->req);
      reject(p, RejectReason::NoSlot,
             "all " + std::to_string(n) + " cache slots hold running requests");
      return;
    }
    ls_.reset(a->slot);
    if (!a->req.session.empty()) {
      Session& ns = sessions_[a->req.session];
      ns.id = a->req.session;
      ns.slot = a->slot;
      s = &ns;
    }
  }
  if (s) {
    s->busy = true;
    s->active_id = a->id;
  }
  stats_.free_slots = ls_.cache().free_slots();
  ++stats_.requests_started;
  lk.unlock();

  a->max_tokens = a->req.max_tokens >= 0 ? a->req.max_tokens : opt_.default_max_tokens;
  std::vector<std::string> stops = a->req.stop;
  stops.insert(stops.end(), format_.stop_strings().begin(), format_.stop_strings().end());
  a->matcher = StopMatcher(std::move(stops));
  a->usage.prompt_tokens = int64_t(a->feed.size());
  a->submitted = p.submitted;
  for (int32_t t : a->feed) a->sampler.accept(t);
  StreamEvent started;
  started.kind = StreamEvent::Kind::Started;
  Active& ref = *a;
  active_.push_back(std::move(a));
  {
    std::lock_guard g(mu_);
    stats_.running = int(active_.size());
  }
  if (!deliver(ref, started)) finish(ref, FinishReason::Cancelled);
}

bool Scheduler::deliver(Active& a, const StreamEvent& e) {
  if (a.sink_gone) return false;
  if (!a.req.sink(e)) a.sink_gone = true;
  return !a.sink_gone;
}

int Scheduler::prefill_budget(bool decoding) const {
  const CacheConfig& cc = ls_.cache().config();
  const int most = opt_.step_tokens > 0 ? opt_.step_tokens : 4 * cc.chunk;
  if (!decoding || opt_.itl_factor <= 0) return most;
  // Until a step with prompt tokens has been timed, one chunk: the first measurement.
  if (decode_step_s_ <= 0 || prefill_token_s_ <= 0) return std::min(most, cc.chunk);
  const double n = (opt_.itl_factor - 1) * decode_step_s_ / prefill_token_s_;
  return int(std::clamp(n, 1.0, double(most)));
}

void Scheduler::measure_step(double seconds, uint64_t prompt_tokens, bool decoding) {
  constexpr double kAlpha = 0.2;
  auto ema = [](double& avg, double x) { avg = avg < 0 ? x : avg + kAlpha * (x - avg); };
  if (prompt_tokens == 0) {
    if (decoding) ema(decode_step_s_, seconds);
  } else if (decode_step_s_ > 0) {
    ema(prefill_token_s_, std::max(seconds - decode_step_s_, 0.0) / double(prompt_tokens));
  }
}

void Scheduler::run_step() {
  const CacheConfig& cc = ls_.cache().config();
  const bool recompute = cc.policy == Policy::Recompute;
  std::vector<SeqStep>& steps = step_.steps;
  std::vector<Active*>& owner = step_.owner;
  std::vector<Active*>& prompting = step_.prompting;
  std::vector<int>& consumed = step_.consumed;
  steps.clear();
  owner.clear();
  prompting.clear();
  consumed.clear();
  // Appends the next `n` feed tokens of `a` to the step. The recompute policy rebuilds the
  // slot from the window's tokens every time (as Stream does): only the last pass's logits
  // count, so a request's whole remaining feed goes at once.
  auto add = [&](Active* a, int n) {
    if (recompute) {
      n = int(a->feed.size() - a->fed);
      a->recent.insert(a->recent.end(), a->feed.begin() + ptrdiff_t(a->fed), a->feed.end());
      if (int64_t(a->recent.size()) > cc.window)
        a->recent.erase(a->recent.begin(), a->recent.end() - cc.window);
      ls_.reset(a->slot);
      steps.push_back({a->slot, a->recent.data(), int(a->recent.size()), false});
    } else {
      steps.push_back({a->slot, a->feed.data() + a->fed, n, false});
    }
    owner.push_back(a);
    consumed.push_back(n);
    return int(steps.back().n);
  };
  // Decoding streams first, one token each: they never wait behind a prompt.
  for (auto& a : active_) {
    if (a->prompting) prompting.push_back(a.get());
    else add(a.get(), 1);
  }
  const bool decoding = !steps.empty();
  const int budget = prefill_budget(decoding);
  // Prompt chunks round-robin from where the last step stopped, within the budget (the first
  // one always goes, so that prompts progress even under a tiny budget).
  int left = budget;
  size_t served = 0;
  for (size_t k = 0; k < prompting.size() && (left > 0 || served == 0); ++k) {
    Active* a = prompting[(rr_ + k) % prompting.size()];
    const int n = int(std::min<size_t>({size_t(cc.chunk), a->feed.size() - a->fed,
                                        size_t(std::max(left, 1))}));
    left -= add(a, n);
    ++served;
  }
  if (!prompting.empty()) rr_ = (rr_ + served) % prompting.size();

  // A session draws a token when this step completes its feed and it may still produce one.
  std::vector<char>& draws = step_.draws;
  draws.assign(steps.size(), 0);
  for (size_t i = 0; i < steps.size(); ++i) {
    const Active& a = *owner[i];
    draws[i] = a.fed + size_t(consumed[i]) == a.feed.size() && !a.done &&
               a.usage.completion_tokens < a.max_tokens;
  }
  const int vocab = ls_.model().config().vocab;
  std::vector<int32_t>& drawn = step_.drawn;
  drawn.assign(steps.size(), -1);
  const auto t0 = Clock::now();
  if (opt_.sample_on == SampleOn::Backend) {
    std::vector<SampleSpec>& specs = step_.specs;
    specs.assign(steps.size(), SampleSpec{});  // greedy (and free) where nothing is drawn
    for (size_t i = 0; i < steps.size(); ++i)
      if (draws[i]) specs[i] = owner[i]->sampler.next_spec();
    ls_.step(steps, nullptr, specs.data(), drawn.data());
  } else {
    logits_.resize(size_t(LlamaModel::logit_rows(steps)) * size_t(vocab));
    ls_.step(steps, logits_.data());
    for (size_t i = 0; i < steps.size(); ++i)
      if (draws[i]) drawn[i] = owner[i]->sampler.sample(logits_.data() + i * size_t(vocab), vocab);
  }
  const auto now = Clock::now();

  uint64_t prompt_tokens = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    Active& a = *owner[i];
    a.fed += size_t(consumed[i]);
    a.streamed += consumed[i];
    if (a.prompting) prompt_tokens += uint64_t(consumed[i]);
    if (a.fed < a.feed.size() || a.done) continue;
    a.prompting = false;
    if (!draws[i]) {
      finish(a, FinishReason::Length);
      continue;
    }
    if (drawn[i] < 0) throw std::runtime_error("sampling: the model gave no finite logit");
    on_token(a, drawn[i], now);
  }
  measure_step(std::chrono::duration<double>(now - t0).count(), prompt_tokens, decoding);
  std::erase_if(active_, [](const auto& a) { return a->done; });
  std::lock_guard lk(mu_);
  ++stats_.steps;
  last_step_ = now;
  const double dt = std::chrono::duration<double>(now - t0).count();
  stats_.step_s = stats_.step_s <= 0 ? dt : stats_.step_s + 0.2 * (dt - stats_.step_s);
  stats_.step_seconds += dt;
  stats_.prompt_tokens += prompt_tokens;
  stats_.running = int(active_.size());
  stats_.prefill_budget = prefill_budget(decoding);
}

void Scheduler::on_token(Active& a, int32_t t, Clock::time_point now) {
  {
    std::lock_guard lk(mu_);
    ++stats_.generated_tokens;
    if (a.usage.completion_tokens == 0) stats_.ttft.observe(std::chrono::duration<double>(now - a.submitted).count());
    else stats_.itl.observe(std::chrono::duration<double>(now - a.last_token).count());
  }
  a.last_token = now;
  ++a.usage.completion_tokens;
  a.feed.assign(1, t);
  a.fed = 0;
  // The end-of-turn token is never fed: the next turn's markup closes the reply (see
  // chat_template.h). Any other last token belongs to the reply and is fed with the next turn.
  if (!a.req.ignore_eos && format_.ends_reply(t)) {
    a.carry.clear();
    finish(a, FinishReason::Stop);
    return;
  }
  a.carry = {t};
  a.sampler.accept(t);
  bool hit = false;
  StreamEvent e;
  e.kind = StreamEvent::Kind::Token;
  e.token = t;
  e.text = a.matcher.push(a.decoder.push(t), &hit);
  a.reply += e.text;
  if (!deliver(a, e)) {
    finish(a, FinishReason::Cancelled);
    return;
  }
  const CacheConfig& cc = ls_.cache().config();
  if (hit) {
    a.carry.clear();  // the token that completed a stop string is dropped, not fed
    finish(a, FinishReason::Stop);
  } else if (a.usage.completion_tokens >= a.max_tokens) {
    finish(a, FinishReason::Length);
  } else if (cc.policy == Policy::Dense && ls_.cache().stream_tokens(a.slot) >= cc.window) {
    // A full dense context has no row for this token: the reply ends here, as if by max_tokens.
    finish(a, FinishReason::Length);
  }
}

void Scheduler::finish(Active& a, FinishReason why) {
  a.done = true;
  StreamEvent e;
  e.kind = StreamEvent::Kind::Done;
  e.finish = why;
  if (why == FinishReason::Length || why == FinishReason::Stop) {
    // Text held back for a stop string that never completed, or an unfinished UTF-8 character.
    bool hit = false;
    e.text = a.matcher.push(a.decoder.flush(), &hit) + a.matcher.flush();
    a.reply += e.text;
  }
  e.usage = a.usage;
  // The books are settled before the client hears the end, so that whatever it does next (its
  // next turn, a look at /v1/sessions or /metrics) sees the slot and session as they now are.
  {
    std::lock_guard lk(mu_);
    ++stats_.requests_finished[int(why)];
    auto it = a.req.session.empty() ? sessions_.end() : sessions_.find(a.req.session);
    const bool mine = it != sessions_.end() && it->second.active_id == a.id;
    // A cancelled turn leaves the cache holding text the client never saw: the session ends.
    if (mine && !it->second.doomed && (why == FinishReason::Stop || why == FinishReason::Length)) {
      Session& s = it->second;
      s.busy = false;
      s.tokens += a.streamed;
      s.carry = a.carry;
      s.recent = std::move(a.recent);
      s.history.insert(s.history.end(), a.new_history.begin(), a.new_history.end());
      if (a.req.chat) s.history.push_back(fingerprint({"assistant", a.reply}));
      s.last_use = Clock::now();
      s.last_use_wall = std::chrono::system_clock::now();
    } else {
      if (mine) sessions_.erase(it);
      ls_.release(a.slot);
      stats_.free_slots = ls_.cache().free_slots();
    }
    stats_.running = int(std::count_if(active_.begin(), active_.end(), [](const auto& x) { return !x->done; }));
  }
  deliver(a, e);
}

}  // namespace sinkserve
