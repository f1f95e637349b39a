// Sessions saved to disk and restored, in this process or another: a session's state is bounded
// (sink + window cache rows), so it can be written out whole and continued later bit for bit.
//
// A session file holds what the stream needs to continue exactly: the live cache rows of every
// layer on every rank of its tensor-parallel group (as stored, in the cache's type), the stream's
// token count and rotation offset, the tokens its owner holds outside the cache, and an opaque
// section for the conversation layer. Its header names everything the rows depend on (model,
// cache geometry, tensor parallelism), and a file that does not match the engine restoring it is
// refused, as are damaged ones: docs/sessions.md describes the format and every check.
//
// Rank 0 alone reads and writes files; the other ranks send and receive their rows through the
// lockstep driver (Lockstep::export_slot / import_slot).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "cache/kv_cache.h"
#include "runtime/lockstep.h"

namespace sinkserve {

class GGUFFile;

// A file that cannot be read or must not be restored; the message names the file and why.
class SessionFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The format version this build writes and the only one it reads.
constexpr uint32_t kSessionFileVersion = 1;

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), continuing from `crc` (0 to start).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

// A hash of a model's metadata and tensor table (names, types, shapes, sizes, offsets): which model
// a session was computed by, without reading the weights. Equal for copies of the same file.
uint64_t model_fingerprint(const GGUFFile& f);

// What a session's rows depend on: a file restores only into an engine with the same values.
struct SessionTarget {
  std::string arch;
  uint64_t model_fingerprint = 0;
  int n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, vocab = 0;
  Policy policy = Policy::Sink;
  int sink = 0, window = 0;
  DType kv_type = DType::F32;
  // Ranks of the tensor-parallel group. Unlike the rest, it need not match: rows are re-sharded.
  int tp = 1;
};

struct SessionSnapshot {
  std::string id;         // the session's name (the directory store files it under this)
  SessionTarget target;   // what it was saved from
  int64_t tokens = 0;     // stream tokens appended since the stream began
  int64_t offset = 0;     // rotation offset of stream position 0 (KVCache::reset)
  // Tokens the owner holds outside the cache that a continuation must see: a reply's last token,
  // sampled but never fed (the scheduler's carried token). Checked against the vocabulary.
  std::vector<int32_t> held_tokens;
  // The conversation layer's own state (message fingerprints, template decisions), kept as given.
  std::string conversation;
  std::vector<int32_t> kv_dims;            // each rank's row width, rank order
  std::vector<std::vector<uint8_t>> rows;  // each rank's live rows (KVCache::export_slot)
};

// The file's bytes, checksum included.
std::string encode_session(const SessionSnapshot& s);
// Parses and checks a file's bytes (`source` names it in errors): magic, version, length,
// checksum, then every field's range and the rows' sizes against the header. Throws
// SessionFileError; never reads out of bounds.
SessionSnapshot decode_session(std::string_view bytes, const std::string& source);
// Throws SessionFileError naming `source` and every field where `s` was saved from something other
// than `here` (the tensor-parallel size aside).
void check_session_target(const SessionSnapshot& s, const SessionTarget& here, const std::string& source);
// The same session's rows as a group of `tp` ranks holds them (kv_head_share): every KV head's
// values move from a rank that held it to each rank that holds it now. Throws SessionFileError
// naming `source` when that would split a storage block of the KV type (q8_0: 32 values) between
// ranks, or the rows are not laid out as the saved tp gives.
SessionSnapshot reshard_session(const SessionSnapshot& s, int tp, const std::string& source);

// Writes through a temporary file in the same directory, synced, then renamed over `path`: a
// crash leaves the old file or the new one, never part of one. Throws SessionFileError.
void write_session_file(const std::string& path, const SessionSnapshot& s);
// The same for bytes already encoded (encode_session).
void write_session_bytes(const std::string& path, const std::string& bytes);
// Reads and decodes (decode_session). Throws SessionFileError.
SessionSnapshot read_session_file(const std::string& path);

// Saves and restores sessions of one engine; the leader's (rank 0) lockstep driver. Capture and
// restore run on every rank (the followers inside Lockstep::follow()).
class SessionIO {
 public:
  SessionIO(Lockstep& ls, const GGUFFile& model);
  const SessionTarget& target() const { return target_; }
  // The state of `slot` (acquired, not mid-step). Throws SessionFileError for the recompute
  // policy, whose cache keeps no rows between steps.
  SessionSnapshot capture(int slot, std::string id = {}, std::vector<int32_t> held_tokens = {},
                          std::string conversation = {});
  // Makes `slot` (acquired) continue the saved stream, re-sharding rows saved by another number of
  // ranks (then it continues as this engine would from those rows: equal to the saving engine to
  // the precision tp = N matches tp = 1 with, not bit for bit). Throws SessionFileError naming
  // `source` when the snapshot does not fit this engine; the slot is then left as it was.
  void restore(int slot, const SessionSnapshot& s, const std::string& source);

 private:
  Lockstep& ls_;
  SessionTarget target_;
};

}  // namespace sinkserve
