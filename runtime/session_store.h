// A directory of saved sessions (`serve --session-dir`), one file per session id, its disk use
// bounded (`--session-dir-max`): when a save would exceed the bound, the files saved longest ago
// are removed first.
//
// File names encode the id reversibly (letters, digits, '-' and '_' as they are, every other byte
// as %XX), so any id maps to its own name and list() gives the ids back without opening a file.
// Files are written through a temporary name and renamed (write_session_file); temporary files
// a crash left behind are removed when the store opens. Thread-safe.
#pragma once
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "runtime/session_file.h"

namespace sinkserve {

struct StoredSession {
  std::string id;
  std::string path;
  int64_t bytes = 0;
  int64_t saved_ns = 0;  // modification time, nanoseconds since the epoch
};

class SessionStore {
 public:
  // Creates `dir` when missing. max_bytes 0: unbounded. Throws SessionFileError when the directory
  // cannot be created or read.
  SessionStore(std::string dir, int64_t max_bytes);
  const std::string& dir() const { return dir_; }
  int64_t max_bytes() const { return max_bytes_; }

  // The file name for an id (without the directory). Throws std::invalid_argument for an empty id
  // or one whose name would not fit a file system's 255 bytes.
  static std::string file_name(const std::string& id);
  // The id a file name encodes; nullopt for names the store did not write.
  static std::optional<std::string> id_of(const std::string& file_name);
  // Where the session `id` is saved (file_name inside the directory).
  std::string path_of(const std::string& id) const;

  // Writes the session under s.id, replacing an earlier save, then removes the oldest other
  // files until the directory is within the bound. Throws SessionFileError when the session alone
  // exceeds the bound (nothing is written) or the file cannot be written. Returns the file's size.
  int64_t save(const SessionSnapshot& s);
  // The saved session, decoded and checked (decode_session); nullopt when none is saved under id.
  // Throws SessionFileError for a damaged file, or one that holds another session.
  std::optional<SessionSnapshot> load(const std::string& id) const;
  bool remove(const std::string& id);
  // Every saved session, oldest first.
  std::vector<StoredSession> list() const;
  int64_t used_bytes() const;

 private:
  std::vector<StoredSession> list_locked() const;
  std::string dir_;
  int64_t max_bytes_;
  mutable std::mutex mu_;
  std::filesystem::file_time_type last_stamp_{};  // the latest time given to a saved file
};

}  // namespace sinkserve
