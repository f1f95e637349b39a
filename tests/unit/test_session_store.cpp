// The session directory: ids of any bytes map to their own file names and back, sessions save,
// load, list and remove by id, and the directory stays within its byte bound by removing the
// sessions saved longest ago.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "runtime/session_store.h"
#include "tests/fixtures.h"

using namespace sinkserve;
using namespace sinkserve::test;

namespace {

// A session of `tokens` tokens of a 2-layer, 1 x 32 F16 model with sink 4 and window 60: its rows
// follow the geometry exactly, so that it decodes; the byte values identify it.
SessionSnapshot session(const std::string& id, int64_t tokens, uint8_t fill) {
  SessionSnapshot s;
  s.id = id;
  s.target.arch = "llama";
  s.target.model_fingerprint = 0x1234;
  s.target.n_layers = 2;
  s.target.n_heads = 1;
  s.target.n_kv_heads = 1;
  s.target.head_dim = 32;
  s.target.vocab = 100;
  s.target.sink = 4;
  s.target.window = 60;
  s.target.kv_type = DType::F16;
  s.tokens = tokens;
  s.kv_dims = {32};
  const int64_t rows = std::min<int64_t>(tokens, 4) + std::min<int64_t>(std::max<int64_t>(tokens - 4, 0), 60);
  s.rows = {std::vector<uint8_t>(size_t(rows * 2 * 2 * 64), fill)};
  return s;
}

class Store : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir("session_store"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir() const { return (dir_ / "sessions").string(); }
  std::filesystem::path dir_;
};

TEST(SessionStoreNames, EveryIdRoundTripsToItsOwnName) {
  const std::vector<std::string> ids = {"chat-1", "A_b", "a/b", "../etc/passwd", ".", "..", "with space",
                                        "%41", "caf\xc3\xa9", std::string("nul\0byte", 8), "a.session"};
  std::set<std::string> names;
  for (const std::string& id : ids) {
    const std::string name = SessionStore::file_name(id);
    EXPECT_EQ(name.find('/'), std::string::npos) << name;
    EXPECT_NE(name[0], '.') << name;  // never a hidden or dot name
    EXPECT_EQ(SessionStore::id_of(name), id) << name;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), ids.size());
  EXPECT_EQ(SessionStore::file_name("chat-1"), "chat-1.session");
  EXPECT_EQ(SessionStore::file_name("a/b"), "a%2Fb.session");
  EXPECT_THROW(SessionStore::file_name(""), std::invalid_argument);
  EXPECT_THROW(SessionStore::file_name(std::string(300, 'x')), std::invalid_argument);
  EXPECT_THROW(SessionStore::file_name(std::string(100, '/')), std::invalid_argument);
  // Names the store did not write are not sessions.
  for (const char* other : {"notes.txt", ".session", "a%2.session", "a%41.session", "a%zz.session", "x.session.tmp"})
    EXPECT_FALSE(SessionStore::id_of(other).has_value()) << other;
}

TEST_F(Store, SaveLoadListRemove) {
  SessionStore store(dir(), 0);
  EXPECT_FALSE(store.load("a").has_value());
  store.save(session("a", 10, 1));
  store.save(session("b/c", 100, 2));
  const std::optional<SessionSnapshot> b = store.load("b/c");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->tokens, 100);
  EXPECT_EQ(b->rows, session("b/c", 100, 2).rows);
  std::vector<StoredSession> all = store.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].id, "a");
  EXPECT_EQ(all[1].id, "b/c");
  EXPECT_EQ(all[1].bytes, int64_t(encode_session(session("b/c", 100, 2)).size()));
  EXPECT_EQ(store.used_bytes(), all[0].bytes + all[1].bytes);
  // Saving again replaces the file and makes it the newest.
  store.save(session("a", 20, 3));
  all = store.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[1].id, "a");
  EXPECT_EQ(store.load("a")->tokens, 20);
  EXPECT_TRUE(store.remove("a"));
  EXPECT_FALSE(store.remove("a"));
  EXPECT_FALSE(store.load("a").has_value());
  EXPECT_EQ(store.list().size(), 1u);
  // Other files in the directory are neither listed nor counted nor removed.
  write_bytes(std::filesystem::path(dir()) / "notes.txt", "keep me");
  EXPECT_EQ(store.list().size(), 1u);
  EXPECT_TRUE(std::filesystem::exists(std::filesystem::path(dir()) / "notes.txt"));
}

TEST_F(Store, OldestAreRemovedFirstWithinTheBound) {
  const int64_t one = int64_t(encode_session(session("s0", 64, 0)).size());
  SessionStore store(dir(), 3 * one + one / 2);  // room for three
  for (int i = 0; i < 6; ++i) {
    store.save(session("s" + std::to_string(i), 64, uint8_t(i)));
    EXPECT_LE(store.used_bytes(), store.max_bytes());
  }
  std::vector<StoredSession> left = store.list();
  ASSERT_EQ(left.size(), 3u);
  EXPECT_EQ(left[0].id, "s3");
  EXPECT_EQ(left[1].id, "s4");
  EXPECT_EQ(left[2].id, "s5");
  // Re-saving s3 makes it the newest: s4 goes next.
  store.save(session("s3", 64, 9));
  store.save(session("s6", 64, 6));
  left = store.list();
  ASSERT_EQ(left.size(), 3u);
  EXPECT_EQ(left[0].id, "s5");
  EXPECT_EQ(left[1].id, "s3");
  EXPECT_EQ(left[2].id, "s6");
  // A session larger than the whole bound is refused and removes nothing.
  SessionStore tiny(dir(), one / 2);
  try {
    tiny.save(session("s9", 64, 7));
    ADD_FAILURE() << "saved over the bound";
  } catch (const SessionFileError& e) {
    EXPECT_NE(std::string(e.what()).find("session 's9' takes " + std::to_string(one) + " bytes"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(store.list().size(), 3u);
  EXPECT_FALSE(store.load("s9").has_value());
}

TEST_F(Store, DamagedAndMisplacedFilesAreRefusedOnLoad) {
  SessionStore store(dir(), 0);
  store.save(session("a", 30, 1));
  const std::filesystem::path a = std::filesystem::path(dir()) / "a.session";
  std::string bytes = read_file(a);
  bytes[bytes.size() / 2] ^= 0x40;
  write_bytes(a, bytes);
  try {
    store.load("a");
    ADD_FAILURE() << "a damaged file loaded";
  } catch (const SessionFileError& e) {
    EXPECT_NE(std::string(e.what()).find(a.string() + ": is corrupt"), std::string::npos) << e.what();
  }
  // A file renamed to another id holds another session.
  store.save(session("b", 30, 2));
  std::filesystem::rename(std::filesystem::path(dir()) / "b.session", std::filesystem::path(dir()) / "c.session");
  try {
    store.load("c");
    ADD_FAILURE() << "session 'b' loaded as 'c'";
  } catch (const SessionFileError& e) {
    EXPECT_NE(std::string(e.what()).find("holds session 'b', not 'c'"), std::string::npos) << e.what();
  }
}

TEST_F(Store, LeftoverTemporaryFilesAreRemovedOnOpen) {
  std::filesystem::create_directories(dir());
  const std::filesystem::path tmp = std::filesystem::path(dir()) / "x.session.tmp";
  write_bytes(tmp, "half a session");
  SessionStore store(dir(), 0);
  EXPECT_FALSE(std::filesystem::exists(tmp));
  EXPECT_TRUE(store.list().empty());
}

TEST_F(Store, UnusableDirectoryIsRefused) {
  write_bytes(dir_ / "file", "x");
  EXPECT_THROW(SessionStore((dir_ / "file").string(), 0), SessionFileError);
  EXPECT_THROW(SessionStore(dir(), -1), std::invalid_argument);
}

}  // namespace
