// Saved sessions on real models: a stream saved, restored into a fresh model and cache (another
// slot, another rig) and continued gives the uninterrupted stream's tokens and logits bit for
// bit - before any eviction and after the ring has wrapped, for every KV type, through chunked
// prefill after the restore. Damaged, truncated, foreign and future files are refused with a
// message naming the file and the problem, and never loaded.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "runtime/session_file.h"
#include "tests/model_rig.h"

using namespace sinkserve;
using namespace sinkserve::test;

namespace {

int argmax(const float* row, int n) { return int(std::max_element(row, row + n) - row); }

struct Trace {
  std::vector<int32_t> tokens;
  std::vector<float> logits;  // every row the continuation produced, in order
};

// The part of a conversation after the save point: greedy decoding from the held token, a long
// prompt fed in chunks (every token's logits kept), then greedy decoding again.
Trace continue_stream(Stream& s, int vocab, int32_t held, const std::vector<int32_t>& prompt, int decode) {
  Trace t;
  std::vector<float> row(static_cast<size_t>(vocab));
  int32_t next = held;
  for (int i = 0; i < decode; ++i) {
    s.feed({&next, 1}, row.data());
    t.logits.insert(t.logits.end(), row.begin(), row.end());
    next = argmax(row.data(), vocab);
    t.tokens.push_back(next);
  }
  std::vector<int32_t> feed = {next};
  feed.insert(feed.end(), prompt.begin(), prompt.end());
  std::vector<float> all(feed.size() * size_t(vocab));
  s.feed(feed, all.data(), true);
  t.logits.insert(t.logits.end(), all.begin(), all.end());
  next = argmax(all.data() + (feed.size() - 1) * size_t(vocab), vocab);
  t.tokens.push_back(next);
  for (int i = 0; i < decode; ++i) {
    s.feed({&next, 1}, row.data());
    t.logits.insert(t.logits.end(), row.begin(), row.end());
    next = argmax(row.data(), vocab);
    t.tokens.push_back(next);
  }
  return t;
}

// Feeds `prompt` in chunks, then decodes greedily `decode` tokens; returns the last sampled
// token, which is held (not fed), as a reply ending by length leaves it.
int32_t open_stream(Stream& s, int vocab, const std::vector<int32_t>& prompt, int decode) {
  std::vector<float> row(static_cast<size_t>(vocab));
  s.feed(prompt, row.data());
  int32_t next = argmax(row.data(), vocab);
  for (int i = 0; i < decode; ++i) {
    s.feed({&next, 1}, row.data());
    next = argmax(row.data(), vocab);
  }
  return next;
}

struct Case {
  std::string model;
  Policy policy;
  std::string kv;
  int opening;  // prompt tokens before the save point (plus 8 decoded)
  std::string label;
};

std::ostream& operator<<(std::ostream& o, const Case& c) { return o << c.label; }

class Continuation : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override { dir_ = make_temp_dir("session_file"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_P(Continuation, RestoredStreamEqualsUninterruptedBitForBit) {
  const Case& c = GetParam();
  const std::string model = fixture("models/" + c.model);
  CacheConfig cfg = cache_config(c.policy, c.policy == Policy::Sink ? 4 : 0, 60, 16);
  if (c.policy == Policy::Dense) cfg.window = 400;
  cfg.kv_type = parse_kv_type(c.kv);
  Rig a(model, cfg);
  const int V = a.vocab();
  const std::vector<int32_t> text = text_tokens(*a.file, fixture("texts/pg1342_pride_and_prejudice.txt"), 400);
  const std::vector<int32_t> opening(text.begin(), text.begin() + c.opening);
  const std::vector<int32_t> later(text.begin() + 200, text.begin() + 250);  // 50 tokens: 4 chunks

  Stream sa(*a.ls);
  const int32_t held = open_stream(sa, V, opening, 8);
  SessionIO io_a(*a.ls, *a.file);
  const SessionSnapshot saved = io_a.capture(sa.slot(), "chat-1", {held}, "conversation state");
  EXPECT_EQ(saved.tokens, c.opening + 8);
  EXPECT_EQ(int64_t(saved.rows.at(0).size()), a.cache->export_bytes_for(saved.tokens));
  const std::string path = (dir_ / "chat-1.session").string();
  write_session_file(path, saved);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const Trace want = continue_stream(sa, V, held, later, 12);

  // A fresh rig: its own model, backend and cache; the stream lands in slot 1, slot 0 holding
  // another stream's rows.
  Rig b(model, cfg, 2);
  Stream other(*b.ls);
  open_stream(other, V, std::vector<int32_t>(text.begin() + 100, text.begin() + 180), 3);
  SessionIO io_b(*b.ls, *b.file);
  const SessionSnapshot loaded = read_session_file(path);
  EXPECT_EQ(loaded.id, "chat-1");
  EXPECT_EQ(loaded.conversation, "conversation state");
  ASSERT_EQ(loaded.held_tokens, std::vector<int32_t>{held});
  Stream sb(*b.ls, io_b, loaded, path);
  EXPECT_EQ(sb.slot(), 1);
  EXPECT_EQ(sb.tokens(), saved.tokens);
  EXPECT_EQ(b.cache->cached_tokens(sb.slot()), KVCache::cached_tokens_for(a.cache->config(), saved.tokens));
  const Trace got = continue_stream(sb, V, loaded.held_tokens[0], later, 12);

  EXPECT_EQ(got.tokens, want.tokens);
  ASSERT_EQ(got.logits.size(), want.logits.size());
  size_t differ = 0;
  for (size_t i = 0; i < got.logits.size(); ++i)
    differ += std::memcmp(&got.logits[i], &want.logits[i], sizeof(float)) != 0;
  EXPECT_EQ(differ, 0u) << "of " << got.logits.size() << " logits differ in their bits";
  // Saving again from the restored stream gives the same rows as the uninterrupted one now holds.
  EXPECT_EQ(io_b.capture(sb.slot()).rows, io_a.capture(sa.slot()).rows);
}

// 60 + 8 tokens stay before the first eviction of a 4 + 60 cache; 300 wrap its 76-row ring
// several times (sinks kept, the window's oldest rows overwritten).
INSTANTIATE_TEST_SUITE_P(
    Sessions, Continuation,
    ::testing::Values(Case{"stories260K.gguf", Policy::Sink, "f32", 50, "stories_f32_before_eviction"},
                      Case{"stories260K.gguf", Policy::Sink, "f32", 300, "stories_f32_wrapped"},
                      Case{"stories260K.gguf", Policy::Sink, "f16", 50, "stories_f16_before_eviction"},
                      Case{"stories260K.gguf", Policy::Sink, "f16", 300, "stories_f16_wrapped"},
                      Case{"stories260K.gguf", Policy::Sink, "q8_0", 50, "stories_q8_0_before_eviction"},
                      Case{"stories260K.gguf", Policy::Sink, "q8_0", 300, "stories_q8_0_wrapped"},
                      Case{"stories260K.gguf", Policy::Sink, "bf16", 300, "stories_bf16_wrapped"},
                      Case{"stories260K.gguf", Policy::Window, "f16", 300, "stories_window_wrapped"},
                      Case{"stories260K.gguf", Policy::Dense, "f16", 300, "stories_dense"},
                      Case{"gutenberg-1m.gguf", Policy::Sink, "f32", 50, "gutenberg_f32_before_eviction"},
                      Case{"gutenberg-1m.gguf", Policy::Sink, "f32", 300, "gutenberg_f32_wrapped"},
                      Case{"gutenberg-1m.gguf", Policy::Sink, "f16", 300, "gutenberg_f16_wrapped"},
                      Case{"gutenberg-1m.gguf", Policy::Sink, "q8_0", 300, "gutenberg_q8_0_wrapped"}),
    [](const ::testing::TestParamInfo<Case>& i) { return i.param.label; });

// The saving process is gone before the restoring one begins: a child process streams, saves and
// continues (writing its continuation to a file) and exits; only then does this process load a
// model and restore. Nothing but the two files passes between them.
TEST(SessionAcrossProcesses, RestoredInAnotherProcessEqualsUninterrupted) {
  const auto dir = make_temp_dir("session_process");
  const std::string model = fixture("models/stories260K.gguf");
  const std::string text_path = fixture("texts/pg1342_pride_and_prejudice.txt");
  CacheConfig cfg = cache_config(Policy::Sink, 4, 60, 16);
  cfg.kv_type = DType::F16;
  const std::string session = (dir / "s.session").string(), trace = (dir / "trace.bin").string();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    Rig a(model, cfg);
    const std::vector<int32_t> text = text_tokens(*a.file, text_path, 400);
    Stream s(*a.ls);
    const int32_t held = open_stream(s, a.vocab(), std::vector<int32_t>(text.begin(), text.begin() + 300), 8);
    SessionIO io(*a.ls, *a.file);
    write_session_file(session, io.capture(s.slot(), "s", {held}));
    const Trace t = continue_stream(s, a.vocab(), held, std::vector<int32_t>(text.begin() + 200, text.begin() + 250), 12);
    std::string bytes(reinterpret_cast<const char*>(t.tokens.data()), t.tokens.size() * sizeof(int32_t));
    bytes.append(reinterpret_cast<const char*>(t.logits.data()), t.logits.size() * sizeof(float));
    write_bytes(trace, bytes);
    std::_Exit(0);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the saving process failed";
  Rig b(model, cfg);
  const std::vector<int32_t> text = text_tokens(*b.file, text_path, 400);
  SessionIO io(*b.ls, *b.file);
  const SessionSnapshot loaded = read_session_file(session);
  Stream s(*b.ls, io, loaded, session);
  const Trace got = continue_stream(s, b.vocab(), loaded.held_tokens.at(0),
                                    std::vector<int32_t>(text.begin() + 200, text.begin() + 250), 12);
  std::string mine(reinterpret_cast<const char*>(got.tokens.data()), got.tokens.size() * sizeof(int32_t));
  mine.append(reinterpret_cast<const char*>(got.logits.data()), got.logits.size() * sizeof(float));
  const std::string want = read_file(trace);
  EXPECT_EQ(mine.size(), want.size());
  EXPECT_TRUE(mine == want) << "the continuation differs from the saving process's";
  std::filesystem::remove_all(dir);
}

TEST(Crc32c, StandardCheckValueAndIncremental) {
  // The CRC-32C catalogue's check value: the CRC of the nine ASCII digits "123456789".
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  // The eight-byte path and the byte path agree at every length and split.
  std::string data;
  for (int i = 0; i < 100; ++i) data += char(i * 37 + 11);
  for (size_t n = 0; n <= data.size(); ++n) {
    uint32_t bytewise = 0;
    for (size_t i = 0; i < n; ++i) bytewise = crc32c(data.data() + i, 1, bytewise);
    EXPECT_EQ(crc32c(data.data(), n), bytewise) << n;
    EXPECT_EQ(crc32c(data.data() + n / 3, n - n / 3, crc32c(data.data(), n / 3)), bytewise) << n;
  }
}

// A small saved session (stories260K, 4 + 16 window, 30 tokens, f16) for the refusal tests.
class Refusal : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    CacheConfig cfg = cache_config(Policy::Sink, 4, 16, 16);
    cfg.kv_type = DType::F16;
    rig_ = new Rig(fixture("models/stories260K.gguf"), cfg, 2);
    io_ = new SessionIO(*rig_->ls, *rig_->file);
    Stream s(*rig_->ls);
    const std::vector<int32_t> text = text_tokens(*rig_->file, fixture("texts/pg1342_pride_and_prejudice.txt"), 30);
    std::vector<float> row(static_cast<size_t>(rig_->vocab()));
    s.feed(text, row.data());
    snap_ = new SessionSnapshot(io_->capture(s.slot(), "s", {7}, "conv"));
    bytes_ = new std::string(encode_session(*snap_));
  }
  static void TearDownTestSuite() {
    delete bytes_;
    delete snap_;
    delete io_;
    delete rig_;
  }
  // The message decode_session gives for these bytes; fails the test when they decode.
  static std::string refusal(const std::string& bytes, const std::string& source = "bad.session") {
    try {
      decode_session(bytes, source);
    } catch (const SessionFileError& e) {
      return e.what();
    }
    ADD_FAILURE() << "decoded without complaint (" << bytes.size() << " bytes)";
    return {};
  }
  static std::string mismatch(const SessionSnapshot& s) {
    try {
      check_session_target(s, io_->target(), "other.session");
    } catch (const SessionFileError& e) {
      return e.what();
    }
    ADD_FAILURE() << "accepted as matching";
    return {};
  }
  static Rig* rig_;
  static SessionIO* io_;
  static SessionSnapshot* snap_;
  static std::string* bytes_;
};
Rig* Refusal::rig_ = nullptr;
SessionIO* Refusal::io_ = nullptr;
SessionSnapshot* Refusal::snap_ = nullptr;
std::string* Refusal::bytes_ = nullptr;

TEST_F(Refusal, IntactFileDecodesToWhatWasSaved) {
  const SessionSnapshot s = decode_session(*bytes_, "good.session");
  EXPECT_EQ(s.id, "s");
  EXPECT_EQ(s.tokens, 30);
  EXPECT_EQ(s.held_tokens, std::vector<int32_t>{7});
  EXPECT_EQ(s.conversation, "conv");
  EXPECT_EQ(s.rows, snap_->rows);
  EXPECT_EQ(s.kv_dims, snap_->kv_dims);
  check_session_target(s, io_->target(), "good.session");
  // 20 live rows x 5 layers x K and V x 32 F16 values: the rows dominate the file.
  EXPECT_EQ(s.rows.at(0).size(), size_t(20 * 5 * 2 * 32 * 2));
}

TEST_F(Refusal, EveryFlippedByteIsRefused) {
  for (size_t i = 0; i < bytes_->size(); ++i) {
    std::string b = *bytes_;
    b[i] = char(b[i] ^ 0x01);
    const std::string why = refusal(b);
    ASSERT_NE(why.find("session file bad.session"), std::string::npos) << "byte " << i << ": " << why;
    if (i >= 20 && i < bytes_->size() - 4) {
      ASSERT_NE(why.find("is corrupt: checksum"), std::string::npos) << "byte " << i << ": " << why;
    }
  }
  std::string b = *bytes_;
  b[0] = 'X';
  EXPECT_NE(refusal(b).find("not a sinkserve session file"), std::string::npos);
}

TEST_F(Refusal, EveryTruncationIsRefused) {
  EXPECT_NE(refusal("").find("bad.session: is empty"), std::string::npos);
  for (size_t n = 1; n < bytes_->size(); ++n) {
    const std::string why = refusal(bytes_->substr(0, n));
    ASSERT_NE(why.find("bad.session: is truncated"), std::string::npos) << n << ": " << why;
  }
  EXPECT_NE(refusal(*bytes_ + "x").find("has 1 bytes after the"), std::string::npos);
}

TEST_F(Refusal, FutureAndUnknownVersionsAreRefused) {
  std::string b = *bytes_;
  b[8] = 2;
  EXPECT_NE(refusal(b).find("has format version 2, newer than this build reads (1)"), std::string::npos);
  b[8] = 0;
  EXPECT_NE(refusal(b).find("unknown format version 0"), std::string::npos);
}

TEST_F(Refusal, ChecksummedButInconsistentFilesAreRefused) {
  SessionSnapshot s = *snap_;
  s.rows[0].pop_back();
  EXPECT_NE(refusal(encode_session(s)).find("rank 0 rows are 12799 bytes; 20 live rows of 5 layers take 12800"),
            std::string::npos);
  s = *snap_;
  s.held_tokens = {100000};
  EXPECT_NE(refusal(encode_session(s)).find("held token 100000 is outside the vocabulary"), std::string::npos);
}

TEST_F(Refusal, ForeignFilesAreRefusedNamingWhatDiffers) {
  struct Edit {
    void (*apply)(SessionTarget&);
    const char* expect;
  };
  const Edit edits[] = {
      {[](SessionTarget& t) { t.model_fingerprint ^= 1; }, "model fingerprint"},
      {[](SessionTarget& t) { t.arch = "gpt2"; }, "architecture gpt2 (this engine: llama)"},
      {[](SessionTarget& t) { t.sink = 8; }, "sink 8 (this engine: 4)"},
      {[](SessionTarget& t) { t.window = 32; }, "window 32 (this engine: 16)"},
      {[](SessionTarget& t) { t.kv_type = DType::Q8_0; }, "KV type q8_0 (this engine: f16)"},
      {[](SessionTarget& t) { t.n_heads = 16; }, "attention heads 16 (this engine: 8)"},
      {[](SessionTarget& t) { t.policy = Policy::Window; }, "cache policy window (this engine: sink)"},
  };
  for (const Edit& e : edits) {
    SessionSnapshot s = *snap_;
    e.apply(s.target);
    const std::string why = mismatch(s);
    EXPECT_NE(why.find("session file other.session was saved from another setup"), std::string::npos) << why;
    EXPECT_NE(why.find(e.expect), std::string::npos) << why;
  }
  // A real other model: its session is refused by this one, and the slot stays free.
  CacheConfig cfg = cache_config(Policy::Sink, 4, 16, 16);
  cfg.kv_type = DType::F16;
  Rig g(fixture("models/gutenberg-1m.gguf"), cfg);
  SessionIO io(*g.ls, *g.file);
  SessionSnapshot foreign;
  {
    Stream s(*g.ls);
    std::vector<float> row(size_t(g.vocab()));
    const std::vector<int32_t> ids = {1, 2, 3};
    s.feed(ids, row.data());
    foreign = decode_session(encode_session(io.capture(s.slot())), "gutenberg.session");
  }
  const int free_before = rig_->cache->free_slots();
  try {
    Stream s(*rig_->ls, *io_, foreign, "gutenberg.session");
    ADD_FAILURE() << "a gutenberg-1m session restored into stories260K";
  } catch (const SessionFileError& e) {
    EXPECT_NE(std::string(e.what()).find("gutenberg.session was saved from another setup: "), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("model fingerprint"), std::string::npos) << e.what();
  }
  EXPECT_EQ(rig_->cache->free_slots(), free_before);
}

// stories260K has 8 query heads and 4 KV heads of 8 values: 2 ranks hold 2 heads each, 4 ranks one,
// 8 ranks one each with every KV head on two ranks.
TEST_F(Refusal, RowsMoveBetweenTensorParallelSizes) {
  for (int tp : {2, 4, 8}) {
    const SessionSnapshot wide = reshard_session(*snap_, tp, "s.session");
    ASSERT_EQ(wide.rows.size(), size_t(tp));
    EXPECT_EQ(wide.target.tp, tp);
    for (int r = 0; r < tp; ++r) EXPECT_EQ(wide.kv_dims[size_t(r)], tp == 8 ? 8 : 32 / tp) << tp;
    // Through a file, and back: the same bytes as the one rank saved.
    const SessionSnapshot back = reshard_session(decode_session(encode_session(wide), "wide.session"), 1, "wide.session");
    EXPECT_EQ(back.rows, snap_->rows) << tp;
    EXPECT_EQ(back.kv_dims, snap_->kv_dims) << tp;
  }
  // Rank 1 of 2 holds KV heads 2 and 3: the second half of every row of one rank.
  const SessionSnapshot two = reshard_session(*snap_, 2, "s.session");
  const size_t head = 8 * 2;  // F16 bytes of one head
  for (size_t row = 0; row < snap_->rows[0].size() / (4 * head); ++row)
    ASSERT_EQ(0, std::memcmp(two.rows[1].data() + row * 2 * head, snap_->rows[0].data() + row * 4 * head + 2 * head, 2 * head))
        << row;
  try {
    reshard_session(*snap_, 3, "s.session");
    ADD_FAILURE() << "sharded 4 KV heads over 3 ranks";
  } catch (const SessionFileError& e) {
    EXPECT_NE(std::string(e.what()).find("s.session cannot move from 1 to 3 ranks: 4 KV heads do not shard over 3 ranks"),
              std::string::npos)
        << e.what();
  }
  SessionSnapshot q8 = *snap_;
  q8.target.kv_type = DType::Q8_0;
  q8.rows[0].assign(20 * 5 * 2 * size_t(dtype_row_bytes(DType::Q8_0, 32)), 0);  // one block per row
  try {
    reshard_session(q8, 2, "q8.session");
    ADD_FAILURE() << "split q8_0 blocks between ranks";
  } catch (const SessionFileError& e) {
    EXPECT_NE(std::string(e.what()).find("q8.session cannot move from 1 to 2 ranks: q8_0 stores 32 values per block, "
                                         "and runs of 16 values (heads of 8) would split blocks between ranks"),
              std::string::npos)
        << e.what();
  }
}

// A file of 2 ranks restored by one: the rows come back whole, and the stream continues exactly as
// the one rank that computed them would have.
TEST_F(Refusal, TwoRankFileRestoresAtOneRank) {
  const SessionSnapshot two = decode_session(encode_session(reshard_session(*snap_, 2, "s")), "two.session");
  std::vector<float> want(size_t(rig_->vocab())), got(want.size());
  const int32_t next = 42;
  {
    Stream s(*rig_->ls, *io_, *snap_, "s");
    s.feed({&next, 1}, want.data());
  }
  Stream s(*rig_->ls, *io_, two, "two.session");
  EXPECT_EQ(io_->capture(s.slot()).rows, snap_->rows);
  s.feed({&next, 1}, got.data());
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * sizeof(float)));
}

TEST_F(Refusal, RowsThatDoNotFitTheEngineAreNotImported) {
  // A snapshot built in memory (never through a file) with one byte too few on rank 0.
  SessionSnapshot s = *snap_;
  s.rows[0].pop_back();
  Stream holder(*rig_->ls);
  const int64_t before = rig_->cache->stream_tokens(holder.slot());
  try {
    io_->restore(holder.slot(), s, "memory");
    ADD_FAILURE() << "restored rows of the wrong size";
  } catch (const SessionFileError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0 keeps 12800 bytes of rows for 30 tokens, the saved rows are 12799"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(rig_->cache->stream_tokens(holder.slot()), before);
}

TEST_F(Refusal, FilesOnDisk) {
  const auto dir = make_temp_dir("session_refusal");
  write_bytes(dir / "empty.session", "");
  try {
    read_session_file((dir / "empty.session").string());
    ADD_FAILURE() << "an empty file loaded";
  } catch (const SessionFileError& e) {
    EXPECT_NE(std::string(e.what()).find("empty.session: is empty"), std::string::npos) << e.what();
  }
  try {
    read_session_file((dir / "missing.session").string());
    ADD_FAILURE() << "a missing file loaded";
  } catch (const SessionFileError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.session: cannot open"), std::string::npos) << e.what();
  }
  // Rewriting a file replaces it whole.
  const std::string path = (dir / "s.session").string();
  write_session_file(path, *snap_);
  write_session_file(path, *snap_);
  EXPECT_EQ(read_file(path), *bytes_);
  std::filesystem::remove_all(dir);
}

TEST(SessionCapture, RecomputePolicyIsRefused) {
  Rig r(fixture("models/stories260K.gguf"), cache_config(Policy::Recompute, 0, 16, 16));
  SessionIO io(*r.ls, *r.file);
  Stream s(*r.ls);
  EXPECT_THROW(io.capture(s.slot(), "x"), SessionFileError);
}

}  // namespace
