#include "runtime/session_store.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <system_error>

namespace sinkserve {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSuffix = ".session";
constexpr const char* kTempSuffix = ".session.tmp";  // write_session_file's temporary name
constexpr size_t kMaxName = 255;

bool kept_as_is(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

SessionStore::SessionStore(std::string dir, int64_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {
  if (max_bytes_ < 0) throw std::invalid_argument("session directory bound must be >= 0 bytes");
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec || !fs::is_directory(dir_))
    throw SessionFileError("session directory " + dir_ + ": cannot create it" + (ec ? ": " + ec.message() : ""));
  for (auto it = fs::directory_iterator(dir_, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
    if (ends_with(it->path().filename().string(), kTempSuffix)) fs::remove(it->path(), ec);
  if (ec) throw SessionFileError("session directory " + dir_ + ": cannot read it: " + ec.message());
}

std::string SessionStore::file_name(const std::string& id) {
  if (id.empty()) throw std::invalid_argument("a session id must not be empty");
  static const char* digits = "0123456789ABCDEF";
  std::string name;
  for (unsigned char c : id) {
    if (kept_as_is(c)) {
      name += char(c);
    } else {
      name += '%';
      name += digits[c >> 4];
      name += digits[c & 15];
    }
  }
  name += kSuffix;
  // Room for the temporary suffix too.
  if (name.size() + 4 > kMaxName)
    throw std::invalid_argument("session id '" + id.substr(0, 64) + "...' is too long to save (" +
                                std::to_string(id.size()) + " bytes)");
  return name;
}

std::optional<std::string> SessionStore::id_of(const std::string& file_name) {
  if (!ends_with(file_name, kSuffix) || file_name.size() == std::string(kSuffix).size()) return std::nullopt;
  const std::string enc = file_name.substr(0, file_name.size() - std::string(kSuffix).size());
  std::string id;
  for (size_t i = 0; i < enc.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(enc[i]);
    if (kept_as_is(c)) {
      id += char(c);
      continue;
    }
    if (c != '%' || i + 2 >= enc.size()) return std::nullopt;
    const int hi = hex_digit(enc[i + 1]), lo = hex_digit(enc[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    const unsigned char v = static_cast<unsigned char>(hi * 16 + lo);
    if (kept_as_is(v)) return std::nullopt;  // not how file_name writes it: not ours
    id += char(v);
    i += 2;
  }
  return id;
}

std::vector<StoredSession> SessionStore::list_locked() const {
  std::vector<StoredSession> out;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir_, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::error_code fec;
    if (!it->is_regular_file(fec)) continue;
    const std::optional<std::string> id = id_of(it->path().filename().string());
    if (!id) continue;
    const auto size = it->file_size(fec);
    const auto mtime = it->last_write_time(fec);
    if (fec) continue;  // removed meanwhile
    out.push_back({*id, it->path().string(), int64_t(size),
                   int64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(mtime.time_since_epoch()).count())});
  }
  if (ec) throw SessionFileError("session directory " + dir_ + ": cannot read it: " + ec.message());
  std::sort(out.begin(), out.end(), [](const StoredSession& a, const StoredSession& b) {
    return a.saved_ns != b.saved_ns ? a.saved_ns < b.saved_ns : a.id < b.id;
  });
  return out;
}

std::vector<StoredSession> SessionStore::list() const {
  std::lock_guard lk(mu_);
  return list_locked();
}

int64_t SessionStore::used_bytes() const {
  int64_t total = 0;
  for (const StoredSession& s : list()) total += s.bytes;
  return total;
}

std::string SessionStore::path_of(const std::string& id) const { return (fs::path(dir_) / file_name(id)).string(); }

int64_t SessionStore::save(const SessionSnapshot& s) {
  std::lock_guard lk(mu_);
  const std::string path = path_of(s.id);
  const std::string bytes = encode_session(s);
  if (max_bytes_ > 0 && int64_t(bytes.size()) > max_bytes_)
    throw SessionFileError("session '" + s.id + "' takes " + std::to_string(bytes.size()) + " bytes, more than the " +
                           std::to_string(max_bytes_) + " the session directory may hold (--session-dir-max)");
  write_session_bytes(path, bytes);
  // File times tick coarsely: saves in quick succession get distinct, increasing times so that
  // "oldest first" follows the order of the saves.
  const auto now = fs::file_time_type::clock::now();
  last_stamp_ = std::max(now, last_stamp_ + std::chrono::microseconds(1));
  std::error_code ec;
  fs::last_write_time(path, last_stamp_, ec);
  if (max_bytes_ <= 0) return int64_t(bytes.size());
  std::vector<StoredSession> files = list_locked();
  int64_t total = 0;
  for (const StoredSession& f : files) total += f.bytes;
  for (const StoredSession& f : files) {
    if (total <= max_bytes_) break;
    if (f.id == s.id) continue;
    std::error_code ec;
    if (fs::remove(f.path, ec)) total -= f.bytes;
  }
  return int64_t(bytes.size());
}

std::optional<SessionSnapshot> SessionStore::load(const std::string& id) const {
  std::lock_guard lk(mu_);
  const std::string path = path_of(id);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  SessionSnapshot s = read_session_file(path);
  if (s.id != id)
    throw SessionFileError("session file " + path + " holds session '" + s.id + "', not '" + id + "'");
  return s;
}

bool SessionStore::remove(const std::string& id) {
  std::lock_guard lk(mu_);
  std::error_code ec;
  return fs::remove(path_of(id), ec);
}

}  // namespace sinkserve
