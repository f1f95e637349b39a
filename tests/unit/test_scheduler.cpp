// The continuous-batching scheduler on the real stories260K model, one rank, CPU. References are
// computed without the scheduler: one Stream per sequence, fed token by token, greedy argmax, on
// the same model and slot pool while the scheduler's loop is idle (between requests).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "runtime/chat_template.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"
#include "runtime/stream.h"
#include "tests/fixtures.h"

namespace sinkserve {
namespace {

using namespace std::chrono_literals;

// Small window and chunk so that prompts span several steps and sessions outgrow the window.
std::unique_ptr<Engine> open_stories(Communicator& comm, int slots, Policy policy = Policy::Sink) {
  EngineOptions o;
  o.model = test::fixture("models/stories260K.gguf");
  o.threads = 1;
  o.policy = policy;
  o.sink = 4;
  o.window = 48;
  o.ctx = 48;
  o.chunk = 8;
  o.slots = slots;
  return open_engine(o, comm);
}

// Everything a request reported, for a test thread to wait on.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  std::string text;
  bool started = false, done = false, rejected = false;
  RejectReason reject{};
  FinishReason finish{};
  Usage usage;
  int refuse_after = -1;  // the sink returns false at this token: a client that went away

  EventSink sink() {
    return [this](const StreamEvent& e) {
      std::lock_guard lk(mu);
      switch (e.kind) {
        case StreamEvent::Kind::Started: started = true; break;
        case StreamEvent::Kind::Token:
          tokens.push_back(e.token);
          text += e.text;
          if (refuse_after >= 0 && int(tokens.size()) >= refuse_after) {
            cv.notify_all();
            return false;
          }
          break;
        case StreamEvent::Kind::Done:
          text += e.text;
          finish = e.finish;
          usage = e.usage;
          done = true;
          break;
        case StreamEvent::Kind::Rejected:
          rejected = true;
          reject = e.reject;
          done = true;
          break;
      }
      cv.notify_all();
      return true;
    };
  }
  bool wait(const std::function<bool()>& pred, std::chrono::seconds limit = 120s) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, limit, pred);
  }
  bool wait_done() { return wait([this] { return done; }); }
};

class SchedulerTest : public ::testing::Test {
 protected:
  void start(int slots, SchedulerOptions opt = {}, bool sample_on_backend = false,
             Policy policy = Policy::Sink) {
    engine_ = open_stories(*comm_, slots, policy);
    opt.sample_on = sample_on_backend ? SampleOn::Backend : SampleOn::Host;
    sched_ = std::make_unique<Scheduler>(*engine_->lockstep, *engine_->tokenizer, opt);
    thread_ = std::thread([this] { sched_->run(); });
  }
  void TearDown() override {
    if (thread_.joinable()) {
      sched_->stop();
      thread_.join();
    }
  }
  GenerationRequest completion(const std::string& prompt, int max_tokens, Collector& c) {
    GenerationRequest r;
    r.prompt = prompt;
    r.max_tokens = max_tokens;
    r.sink = c.sink();
    return r;
  }
  bool is_end(int32_t t) const { return t == engine_->tokenizer->eos() || t == engine_->tokenizer->bos(); }

  // Greedy continuation of `ids` on a fresh slot, as the scheduler would stop it.
  std::vector<int32_t> reference(Stream& s, const std::vector<int32_t>& ids, int max_tokens,
                                 int32_t* carry) {
    const int vocab = engine_->model->config().vocab;
    std::vector<float> logits(static_cast<size_t>(vocab));
    s.feed(ids, logits.data());
    std::vector<int32_t> out;
    *carry = -1;
    while (int(out.size()) < max_tokens) {
      const int32_t t = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
      out.push_back(t);
      if (is_end(t)) return out;
      if (int(out.size()) == max_tokens) {
        *carry = t;  // sampled, not fed: the next turn starts with it
        return out;
      }
      s.feed({&t, 1}, logits.data());
    }
    return out;
  }

  void expect_batched_streams_match_each_alone();

  std::unique_ptr<Communicator> comm_ = make_single_communicator();
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Scheduler> sched_;
  std::thread thread_;
};

const std::vector<std::string> kPrompts = {
    "Once upon a time, there was a little girl named Lily who loved to play outside",
    "The dog ran",
    "Tom and his friend Sam went to the park to see the big red ball",
    "One day, a bird",
    "The sun was shining and the children were happy because it was the first day of summer",
};

TEST_F(SchedulerTest, BatchedStreamsMatchEachStreamAlone) {
  start(8);
  expect_batched_streams_match_each_alone();
}

// The same with every session's token drawn by Backend::sample in one call per step.
TEST_F(SchedulerTest, BatchedStreamsDrawnOnTheBackendMatchEachStreamAlone) {
  start(8, {}, true);
  expect_batched_streams_match_each_alone();
}

void SchedulerTest::expect_batched_streams_match_each_alone() {
  constexpr int kMax = 40;
  // Independent reference: each prompt alone through its own Stream, outside the scheduler.
  std::vector<std::vector<int32_t>> ref;
  for (const std::string& p : kPrompts) {
    Stream s(*engine_->lockstep);
    int32_t carry;
    ref.push_back(reference(s, engine_->tokenizer->encode(p, true), kMax, &carry));
  }
  // Each alone through the scheduler.
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    Collector c;
    sched_->submit(completion(kPrompts[i], kMax, c));
    ASSERT_TRUE(c.wait_done());
    std::vector<int32_t> got = c.tokens;
    if (c.finish == FinishReason::Stop && got.size() < ref[i].size()) got.push_back(ref[i].back());
    EXPECT_EQ(got, ref[i]) << "prompt " << i << " alone";
  }
  // All at once: prompts of different lengths are chunked and interleaved with decodes.
  std::vector<Collector> cs(kPrompts.size());
  for (size_t i = 0; i < kPrompts.size(); ++i) sched_->submit(completion(kPrompts[i], kMax, cs[i]));
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    ASSERT_TRUE(cs[i].wait_done());
    ASSERT_FALSE(cs[i].rejected);
    EXPECT_EQ(cs[i].usage.prompt_tokens, int64_t(engine_->tokenizer->encode(kPrompts[i], true).size()));
    // The scheduler does not report the end token itself.
    std::vector<int32_t> expect = ref[i];
    if (!expect.empty() && is_end(expect.back())) {
      EXPECT_EQ(cs[i].finish, FinishReason::Stop);
      expect.pop_back();
    } else {
      EXPECT_EQ(cs[i].finish, FinishReason::Length);
    }
    EXPECT_EQ(cs[i].tokens, expect) << "prompt " << i << " batched";
    EXPECT_EQ(cs[i].text, engine_->tokenizer->decode(expect)) << "prompt " << i;
  }
  const SchedulerStats st = sched_->stats();
  EXPECT_EQ(st.free_slots, 8);
  EXPECT_EQ(st.sessions, 0);
}

TEST_F(SchedulerTest, SessionEncodesOnlyNewTurnsAndMatchesOneStream) {
  start(4);
  const Tokenizer& tok = *engine_->tokenizer;
  const std::vector<std::string> users = {"Once upon a time, there was a cat.", "The cat was sad.",
                                          "Then the sun came out and"};
  constexpr int kMax = 24;
  std::vector<ChatMessage> history;
  // Reference: one Stream holding the whole conversation, each turn fed as the template renders it.
  Stream ref_stream(*engine_->lockstep);
  int32_t carry = -1;
  int64_t streamed = 0;
  for (size_t round = 0; round < users.size(); ++round) {
    history.push_back({"user", users[round]});
    std::vector<int32_t> turn;
    if (carry >= 0) turn.push_back(carry);
    if (round == 0) turn.push_back(tok.bos());
    const std::vector<int32_t> rendered =
        tok.encode(render_turn(ChatTemplate::Raw, {history.back()}, round == 0, true), false);
    turn.insert(turn.end(), rendered.begin(), rendered.end());
    std::vector<int32_t> expect = reference(ref_stream, turn, kMax, &carry);
    const bool ended = !expect.empty() && is_end(expect.back());
    if (ended) expect.pop_back();

    Collector c;
    GenerationRequest r;
    r.session = "story";
    r.chat = true;
    r.messages = history;
    r.max_tokens = kMax;
    r.sink = c.sink();
    sched_->submit(std::move(r));
    ASSERT_TRUE(c.wait_done());
    ASSERT_FALSE(c.rejected) << "round " << round;
    EXPECT_EQ(c.tokens, expect) << "round " << round;
    // Only the new turn was encoded, on top of everything the session already held.
    EXPECT_EQ(c.usage.prompt_tokens, int64_t(turn.size())) << "round " << round;
    EXPECT_EQ(c.usage.cached_tokens, streamed) << "round " << round;
    streamed += int64_t(turn.size()) + int64_t(expect.size()) - (ended ? 0 : 1);
    history.push_back({"assistant", c.text});
  }
  ASSERT_EQ(sched_->sessions().size(), 1u);
  EXPECT_EQ(sched_->sessions()[0].tokens, streamed);
  EXPECT_EQ(sched_->sessions()[0].messages, 6);
  EXPECT_GT(streamed, 48) << "the conversation should outgrow the window";

  // A history that differs from what the session saw is refused, and leaves the session intact.
  Collector bad;
  GenerationRequest r;
  r.session = "story";
  r.chat = true;
  r.messages = {{"user", "Something else entirely."}, {"user", "More."}};
  r.sink = bad.sink();
  sched_->submit(std::move(r));
  ASSERT_TRUE(bad.wait_done());
  EXPECT_TRUE(bad.rejected);
  EXPECT_EQ(bad.reject, RejectReason::BadRequest);
  EXPECT_EQ(sched_->sessions().size(), 1u);
}

TEST_F(SchedulerTest, EvictsLeastRecentlyUsedIdleSessionAndRefusesWhenAllBusy) {
  start(2);
  auto session_request = [&](const std::string& id, Collector& c) {
    GenerationRequest r = completion("Once upon a time", 4, c);
    r.session = id;
    sched_->submit(std::move(r));
    ASSERT_TRUE(c.wait_done());
    ASSERT_FALSE(c.rejected);
  };
  Collector a, b;
  session_request("a", a);
  session_request("b", b);
  EXPECT_EQ(sched_->stats().free_slots, 0);
  // Both slots hold idle sessions: a stateless request evicts the older one, "a".
  Collector c;
  sched_->submit(completion("The dog", 4, c));
  ASSERT_TRUE(c.wait_done());
  EXPECT_FALSE(c.rejected);
  auto ss = sched_->sessions();
  ASSERT_EQ(ss.size(), 1u);
  EXPECT_EQ(ss[0].id, "b");
  EXPECT_EQ(sched_->stats().sessions_evicted, 1u);

  // Two endless requests hold both slots ("b" is evicted for the second): a third is refused.
  Collector r1, r2, r3;
  uint64_t id1, id2;
  {
    GenerationRequest r = completion("The cat", 1 << 20, r1);
    r.ignore_eos = true;
    id1 = sched_->submit(std::move(r));
    GenerationRequest q = completion("The bird", 1 << 20, r2);
    q.ignore_eos = true;
    id2 = sched_->submit(std::move(q));
  }
  ASSERT_TRUE(r1.wait([&] { return r1.tokens.size() >= 2 || r1.done; }));
  ASSERT_TRUE(r2.wait([&] { return r2.tokens.size() >= 2 || r2.done; }));
  ASSERT_FALSE(r1.done);
  ASSERT_FALSE(r2.done);
  EXPECT_TRUE(sched_->sessions().empty());
  sched_->submit(completion("The fish", 4, r3));
  ASSERT_TRUE(r3.wait_done());
  EXPECT_TRUE(r3.rejected);
  EXPECT_EQ(r3.reject, RejectReason::NoSlot);

  // Cancelling one frees its slot for the next request.
  sched_->cancel(id1);
  ASSERT_TRUE(r1.wait_done());
  EXPECT_EQ(r1.finish, FinishReason::Cancelled);
  Collector r4;
  sched_->submit(completion("The fish", 4, r4));
  ASSERT_TRUE(r4.wait_done());
  EXPECT_FALSE(r4.rejected);
  sched_->cancel(id2);
  ASSERT_TRUE(r2.wait_done());
  const auto t0 = std::chrono::steady_clock::now();
  while (sched_->stats().free_slots != 2 && std::chrono::steady_clock::now() - t0 < 10s)
    std::this_thread::sleep_for(1ms);
  EXPECT_EQ(sched_->stats().free_slots, 2);
}

TEST_F(SchedulerTest, ClientThatGoesAwayIsCancelledAndItsSessionFreed) {
  start(2);
  Collector gone;
  gone.refuse_after = 3;
  GenerationRequest r = completion("Once upon a time", 1 << 20, gone);
  r.ignore_eos = true;
  r.session = "s";
  sched_->submit(std::move(r));
  ASSERT_TRUE(gone.wait([&] { return int(gone.tokens.size()) >= 3; }));
  const auto t0 = std::chrono::steady_clock::now();
  while (sched_->stats().free_slots != 2 && std::chrono::steady_clock::now() - t0 < 10s)
    std::this_thread::sleep_for(1ms);
  EXPECT_EQ(sched_->stats().free_slots, 2);
  EXPECT_TRUE(sched_->sessions().empty());
  EXPECT_EQ(gone.tokens.size(), 3u) << "no event after the sink refused one";
  EXPECT_EQ(sched_->stats().requests_finished[int(FinishReason::Cancelled)], 1u);
}

TEST_F(SchedulerTest, IdleSessionsExpireAndDeleteFreesSlots) {
  SchedulerOptions opt;
  opt.session_ttl_s = 0.3;
  start(3, opt);
  for (const char* id : {"x", "y"}) {
    Collector c;
    GenerationRequest r = completion("Once upon a time", 3, c);
    r.session = id;
    sched_->submit(std::move(r));
    ASSERT_TRUE(c.wait_done());
  }
  EXPECT_EQ(sched_->stats().free_slots, 1);
  EXPECT_TRUE(sched_->delete_session("x"));
  EXPECT_FALSE(sched_->delete_session("nope"));
  const auto t0 = std::chrono::steady_clock::now();
  while (sched_->stats().free_slots != 3 && std::chrono::steady_clock::now() - t0 < 10s)
    std::this_thread::sleep_for(5ms);
  EXPECT_EQ(sched_->stats().free_slots, 3);
  EXPECT_TRUE(sched_->sessions().empty());
  EXPECT_EQ(sched_->stats().sessions_expired, 1u);
}

TEST_F(SchedulerTest, LongPromptIsInterleavedWithDecodingStreams) {
  SchedulerOptions opt;
  opt.max_prompt_tokens = 1000;
  opt.itl_factor = 0;  // the fixed budget of 4 chunks per step, which the count below assumes
  start(2, opt);
  // A decodes endlessly; B arrives with a prompt many steps long (chunk 8, 32 prompt tokens per
  // step). A must gain a token on every step B's prompt takes, not wait for it.
  Collector a, b;
  GenerationRequest ra = completion("Once upon a time", 1 << 20, a);
  ra.ignore_eos = true;
  const uint64_t ida = sched_->submit(std::move(ra));
  ASSERT_TRUE(a.wait([&] { return a.tokens.size() >= 3; }));
  std::string long_prompt;
  for (int i = 0; i < 40; ++i) long_prompt += "The little dog ran to the park. ";
  const int64_t prompt_len = int64_t(engine_->tokenizer->encode(long_prompt, true).size());
  ASSERT_GT(prompt_len, 200);
  size_t a_at_start = 0, a_at_first = 0;
  GenerationRequest rb = completion(long_prompt, 1, b);
  auto inner = rb.sink;
  rb.sink = [&, inner](const StreamEvent& e) {
    {
      std::lock_guard lk(a.mu);
      if (e.kind == StreamEvent::Kind::Started) a_at_start = a.tokens.size();
      if (e.kind == StreamEvent::Kind::Token) a_at_first = a.tokens.size();
    }
    return inner(e);
  };
  sched_->submit(std::move(rb));
  ASSERT_TRUE(b.wait_done());
  ASSERT_EQ(b.usage.prompt_tokens, prompt_len);
  // B's prompt took ceil(len / 32) steps; A decoded once per step, B's sampling step included.
  const size_t prompt_steps = size_t((prompt_len + 31) / 32);
  EXPECT_GE(a_at_first - a_at_start, prompt_steps - 1);
  sched_->cancel(ida);
  ASSERT_TRUE(a.wait_done());
}

TEST_F(SchedulerTest, StopStringsEndTheReplyBeforeTheMatch) {
  start(2);
  Collector free_run;
  sched_->submit(completion("Once upon a time", 40, free_run));
  ASSERT_TRUE(free_run.wait_done());
  ASSERT_GT(free_run.text.size(), 20u);
  // Stop on a piece of text from the middle of the free-running reply.
  const std::string stop = free_run.text.substr(12, 4);
  Collector c;
  GenerationRequest r = completion("Once upon a time", 40, c);
  r.stop = {stop};
  sched_->submit(std::move(r));
  ASSERT_TRUE(c.wait_done());
  EXPECT_EQ(c.finish, FinishReason::Stop);
  EXPECT_EQ(c.text, free_run.text.substr(0, free_run.text.find(stop)));
}

// A dense slot holds 48 tokens: a reply that reaches the end of it ends by length, a prompt that
// cannot fit is refused, and the scheduler serves on (a full slot once ended the whole job).
TEST_F(SchedulerTest, DenseContextFullEndsTheReplyAndRefusesPromptsThatCannotFit) {
  start(2, {}, false, Policy::Dense);
  const int64_t prompt_len = int64_t(engine_->tokenizer->encode("Once upon a time", true).size());
  Collector full;
  GenerationRequest r = completion("Once upon a time", 300, full);
  r.ignore_eos = true;
  r.session = "s";
  sched_->submit(std::move(r));
  ASSERT_TRUE(full.wait_done());
  EXPECT_EQ(full.finish, FinishReason::Length);
  // The last token drawn is never fed: the slot's 48 rows hold the prompt and all but it.
  EXPECT_EQ(full.usage.completion_tokens, 48 - prompt_len + 1);

  std::string long_prompt;
  for (int i = 0; i < 10; ++i) long_prompt += "The little dog ran to the park. ";
  Collector too_long;
  sched_->submit(completion(long_prompt, 4, too_long));
  ASSERT_TRUE(too_long.wait_done());
  EXPECT_TRUE(too_long.rejected);
  EXPECT_EQ(too_long.reject, RejectReason::BadRequest);

  // The full session's next turn cannot fit either; the session itself survives the refusal.
  Collector next;
  GenerationRequest rn = completion(" The end.", 4, next);
  rn.session = "s";
  sched_->submit(std::move(rn));
  ASSERT_TRUE(next.wait_done());
  EXPECT_TRUE(next.rejected);
  EXPECT_EQ(sched_->sessions().size(), 1u);

  // Kept to the window, the same long prompt fits.
  Collector kept;
  GenerationRequest rk = completion(long_prompt, 4, kept);
  rk.truncate_keep_recent = true;
  sched_->submit(std::move(rk));
  ASSERT_TRUE(kept.wait_done());
  ASSERT_FALSE(kept.rejected);
  EXPECT_EQ(kept.usage.prompt_tokens, 48);
  EXPECT_EQ(kept.usage.completion_tokens, 1);  // the 48 rows are full after the prompt
  EXPECT_EQ(sched_->stats().prompts_truncated, 1u);

  Collector ok;
  sched_->submit(completion("The dog", 5, ok));
  ASSERT_TRUE(ok.wait_done());
  EXPECT_EQ(ok.finish, FinishReason::Length);
  EXPECT_EQ(ok.usage.completion_tokens, 5);
}

// Recompute rebuilds the window of 48 tokens for every token, batched or not, as Stream does; a
// stream runs on far past the window.
TEST_F(SchedulerTest, RecomputeMatchesTheRecomputingStream) {
  start(4, {}, false, Policy::Recompute);
  constexpr int kMax = 80;
  const std::vector<std::string> prompts = {kPrompts[0], kPrompts[1]};
  std::vector<std::vector<int32_t>> ref;
  for (const std::string& p : prompts) {
    Stream s(*engine_->lockstep);
    int32_t carry;
    ref.push_back(reference(s, engine_->tokenizer->encode(p, true), kMax, &carry));
  }
  std::vector<Collector> cs(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    sched_->submit(completion(prompts[i], kMax, cs[i]));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(cs[i].wait_done());
    std::vector<int32_t> expect = ref[i];
    if (!expect.empty() && is_end(expect.back())) expect.pop_back();
    EXPECT_EQ(cs[i].tokens, expect) << "prompt " << i;
  }
}

// Prompts over --max-prompt-tokens are refused with the limit named, unless kept to the window.
TEST_F(SchedulerTest, PromptLimitRefusesOrKeepsTheRecentTokens) {
  SchedulerOptions opt;
  opt.max_prompt_tokens = 20;
  start(2, opt);
  std::string long_prompt;
  for (int i = 0; i < 10; ++i) long_prompt += "The little dog ran to the park. ";
  std::string message;
  Collector refused;
  GenerationRequest r = completion(long_prompt, 2, refused);
  auto inner = r.sink;
  r.sink = [&, inner](const StreamEvent& e) {
    if (e.kind == StreamEvent::Kind::Rejected) message = e.message;
    return inner(e);
  };
  sched_->submit(std::move(r));
  ASSERT_TRUE(refused.wait_done());
  EXPECT_TRUE(refused.rejected);
  EXPECT_NE(message.find("at most 20 (--max-prompt-tokens)"), std::string::npos) << message;

  // Kept: BOS and the last 19 tokens, the same as a prompt that was only those.
  const std::vector<int32_t> ids = engine_->tokenizer->encode(long_prompt, true);
  Collector kept, same;
  GenerationRequest rk = completion(long_prompt, 6, kept);
  rk.truncate_keep_recent = true;
  sched_->submit(std::move(rk));
  ASSERT_TRUE(kept.wait_done());
  ASSERT_FALSE(kept.rejected);
  EXPECT_EQ(kept.usage.prompt_tokens, 20);
  std::vector<int32_t> tail(ids.end() - 19, ids.end());
  GenerationRequest rs = completion(engine_->tokenizer->decode(tail), 6, same);
  sched_->submit(std::move(rs));
  ASSERT_TRUE(same.wait_done());
  if (same.usage.prompt_tokens == 20) EXPECT_EQ(kept.tokens, same.tokens);
}

}  // namespace
}  // namespace sinkserve
