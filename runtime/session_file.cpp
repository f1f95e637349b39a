#include "runtime/session_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <type_traits>
#include <variant>

#include "runtime/gguf.h"
#include "runtime/model_config.h"

namespace sinkserve {

namespace {

constexpr char kMagic[8] = {'S', 'I', 'N', 'K', 'S', 'E', 'S', 'S'};
// magic, version, file length: enough to tell what the file is and whether it is whole.
constexpr size_t kPreamble = 8 + 4 + 8;
constexpr size_t kChecksum = 4;

// Slicing-by-8 tables: table[k][b] is the CRC of byte b followed by k zero bytes.
struct Crc32cTables {
  std::array<std::array<uint32_t, 256>, 8> t{};
  constexpr Crc32cTables() {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t c = b;
      for (int i = 0; i < 8; ++i) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
      t[0][b] = c;
    }
    for (size_t k = 1; k < 8; ++k)
      for (uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xff];
  }
};
constexpr Crc32cTables kCrc;

// Stable names on disk, independent of the enums' numbering.
std::string kv_type_code(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::Q8_0: return "q8_0";
    default: throw std::invalid_argument("session: rows cannot be stored as " + std::string(dtype_name(t)));
  }
}

// Live rows of a stream of n tokens under the saved geometry.
int64_t live_rows(const SessionTarget& t, int64_t n) {
  CacheConfig c;
  c.sink = t.sink;
  c.window = t.window;
  return KVCache::cached_tokens_for(c, n);
}

class Writer {
 public:
  void bytes(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  template <class T> void le(T v) {
    unsigned char b[sizeof(T)];
    for (size_t i = 0; i < sizeof(T); ++i) b[i] = static_cast<unsigned char>(uint64_t(v) >> (8 * i));
    bytes(b, sizeof b);
  }
  void str(std::string_view s) {
    le<uint32_t>(uint32_t(s.size()));
    bytes(s.data(), s.size());
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(std::string_view b, const std::string& source) : b_(b), source_(source) {}
  [[noreturn]] void fail(const std::string& what) const {
    throw SessionFileError("session file " + source_ + ": " + what);
  }
  void need(size_t n, const char* field) const {
    if (n > b_.size() - pos_)
      fail(std::string(field) + " runs past the end of the file (" + std::to_string(n) + " bytes at offset " +
           std::to_string(pos_) + " of " + std::to_string(b_.size()) + ")");
  }
  template <class T> T le(const char* field) {
    need(sizeof(T), field);
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(static_cast<unsigned char>(b_[pos_ + i])) << (8 * i);
    pos_ += sizeof(T);
    return static_cast<T>(v);
  }
  std::string_view take(size_t n, const char* field) {
    need(n, field);
    std::string_view s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::string str(const char* field, size_t max) {
    const uint32_t n = le<uint32_t>(field);
    if (n > max) fail(std::string(field) + " is " + std::to_string(n) + " bytes long (at most " + std::to_string(max) + ")");
    return std::string(take(n, field));
  }
  // A positive count of at most `max`.
  int positive(const char* field, int64_t max) {
    const uint32_t v = le<uint32_t>(field);
    if (v < 1 || int64_t(v) > max) fail(std::string(field) + " " + std::to_string(v) + " is out of range");
    return int(v);
  }
  size_t pos() const { return pos_; }

 private:
  std::string_view b_;
  const std::string& source_;
  size_t pos_ = 0;
};

std::string hex(uint64_t v) {
  char buf[19];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  const auto& t = kCrc.t;
  crc = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    const uint32_t lo = crc ^ (uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24);
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^ t[3][p[4]] ^
          t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
  }
  for (; n > 0; --n, ++p) crc = (crc >> 8) ^ t[0][(crc ^ *p) & 0xff];
  return ~crc;
}

uint64_t model_fingerprint(const GGUFFile& f) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  auto mix = [&h](const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      h ^= static_cast<const unsigned char*>(p)[i];
      h *= 0x100000001b3ull;
    }
  };
  auto mix_u64 = [&](uint64_t v) { mix(&v, sizeof v); };
  auto mix_str = [&](const std::string& s) {
    mix_u64(s.size());
    mix(s.data(), s.size());
  };
  std::function<void(const GGUFValue&)> mix_value = [&](const GGUFValue& v) {
    mix_u64(uint64_t(v.type));
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::string>) mix_str(x);
          else if constexpr (std::is_same_v<T, GGUFArray>) {
            mix_u64(uint64_t(x.elem_type));
            mix_u64(x.items.size());
            for (const GGUFValue& item : x.items) mix_value(item);
          } else {
            mix(&x, sizeof x);
          }
        },
        v.v);
  };
  for (const auto& [key, value] : f.metadata()) {
    mix_str(key);
    mix_value(value);
  }
  for (const GGUFTensorInfo& t : f.tensors()) {
    mix_str(t.name);
    mix_u64(uint64_t(t.type));
    mix_u64(t.ne.size());
    for (int64_t d : t.ne) mix_u64(uint64_t(d));
    mix_u64(t.offset);
    mix_u64(t.bytes);
  }
  return h;
}

std::string encode_session(const SessionSnapshot& s) {
  if (s.rows.size() != size_t(s.target.tp) || s.kv_dims.size() != size_t(s.target.tp))
    throw std::invalid_argument("session: rows of " + std::to_string(s.rows.size()) + " ranks for tp " +
                                std::to_string(s.target.tp));
  Writer w;
  w.bytes(kMagic, sizeof kMagic);
  w.le<uint32_t>(kSessionFileVersion);
  w.le<uint64_t>(0);  // the file's length, known at the end
  w.str(s.id);
  const SessionTarget& t = s.target;
  w.str(t.arch);
  w.le<uint64_t>(t.model_fingerprint);
  for (int v : {t.n_layers, t.n_heads, t.n_kv_heads, t.head_dim, t.vocab}) w.le<uint32_t>(uint32_t(v));
  w.str(policy_name(t.policy));
  w.le<uint32_t>(uint32_t(t.sink));
  w.le<uint32_t>(uint32_t(t.window));
  w.str(kv_type_code(t.kv_type));
  w.le<uint32_t>(uint32_t(t.tp));
  for (int32_t d : s.kv_dims) w.le<uint32_t>(uint32_t(d));
  w.le<int64_t>(s.tokens);
  w.le<int64_t>(s.offset);
  w.le<uint32_t>(uint32_t(s.held_tokens.size()));
  for (int32_t id : s.held_tokens) w.le<int32_t>(id);
  w.le<uint64_t>(s.conversation.size());
  w.bytes(s.conversation.data(), s.conversation.size());
  for (const std::vector<uint8_t>& r : s.rows) {
    w.le<uint64_t>(r.size());
    w.bytes(r.data(), r.size());
  }
  std::string& out = w.out();
  const uint64_t total = out.size() + kChecksum;
  for (size_t i = 0; i < 8; ++i) out[12 + i] = char(static_cast<unsigned char>(total >> (8 * i)));
  w.le<uint32_t>(crc32c(out.data(), out.size()));
  return std::move(out);
}

SessionSnapshot decode_session(std::string_view b, const std::string& source) {
  Reader r(b, source);
  if (b.empty()) r.fail("is empty");
  if (b.size() < sizeof kMagic || std::memcmp(b.data(), kMagic, sizeof kMagic) != 0)
    r.fail(b.size() < sizeof kMagic && std::memcmp(b.data(), kMagic, b.size()) == 0
               ? "is truncated (" + std::to_string(b.size()) + " bytes, shorter than its header)"
               : "is not a sinkserve session file (no SINKSESS magic)");
  if (b.size() < kPreamble + kChecksum)
    r.fail("is truncated (" + std::to_string(b.size()) + " bytes, shorter than its header)");
  r.take(sizeof kMagic, "magic");
  const uint32_t version = r.le<uint32_t>("version");
  if (version > kSessionFileVersion)
    r.fail("has format version " + std::to_string(version) + ", newer than this build reads (" +
           std::to_string(kSessionFileVersion) + "): restore it with the sinkserve that wrote it");
  if (version != kSessionFileVersion) r.fail("has unknown format version " + std::to_string(version));
  const uint64_t total = r.le<uint64_t>("file length");
  if (total > b.size())
    r.fail("is truncated (" + std::to_string(b.size()) + " of the " + std::to_string(total) + " bytes its header gives)");
  if (total < b.size())
    r.fail("has " + std::to_string(b.size() - total) + " bytes after the " + std::to_string(total) +
           " its header gives (damaged or appended to)");
  const size_t body = b.size() - kChecksum;
  uint32_t stored = 0;
  for (size_t i = 0; i < kChecksum; ++i) stored |= uint32_t(static_cast<unsigned char>(b[body + i])) << (8 * i);
  if (const uint32_t computed = crc32c(b.data(), body); computed != stored)
    r.fail("is corrupt: checksum 0x" + hex(computed).substr(10) + " over its contents, the file records 0x" +
           hex(stored).substr(10));
  // Checksummed from here on: what follows catches files written wrong, not damage.
  SessionSnapshot s;
  s.id = r.str("session id", 4096);
  SessionTarget& t = s.target;
  t.arch = r.str("architecture", 256);
  t.model_fingerprint = r.le<uint64_t>("model fingerprint");
  t.n_layers = r.positive("layer count", 1 << 16);
  t.n_heads = r.positive("attention head count", 1 << 16);
  t.n_kv_heads = r.positive("KV head count", t.n_heads);
  t.head_dim = r.positive("head dimension", 1 << 16);
  t.vocab = r.positive("vocabulary size", int64_t(1) << 30);
  const std::string policy = r.str("cache policy", 64);
  try {
    t.policy = parse_policy(policy);
  } catch (const std::invalid_argument& e) {
    r.fail(e.what());
  }
  if (t.policy == Policy::Recompute) r.fail("claims the recompute policy, which keeps no rows to save");
  t.sink = int(r.le<uint32_t>("sink"));
  t.window = r.positive("window", INT32_MAX);
  if (t.sink < 0 || (t.policy != Policy::Sink && t.sink != 0)) r.fail("sink " + std::to_string(t.sink) + " is out of range");
  const std::string kv = r.str("KV type", 64);
  try {
    t.kv_type = parse_kv_type(kv);
  } catch (const std::invalid_argument& e) {
    r.fail(e.what());
  }
  t.tp = r.positive("tensor-parallel size", 1 << 16);
  for (int i = 0; i < t.tp; ++i) {
    const int d = r.positive("rank row width", int64_t(t.n_kv_heads) * t.head_dim);
    if (d % dtype_block_values(t.kv_type)) r.fail("rank row width " + std::to_string(d) + " does not divide into " + kv + " blocks");
    s.kv_dims.push_back(d);
  }
  s.tokens = r.le<int64_t>("token count");
  s.offset = r.le<int64_t>("stream offset");
  if (s.tokens < 0 || s.offset < 0) r.fail("negative token count or offset");
  if (t.policy == Policy::Dense && s.tokens > t.window)
    r.fail(std::to_string(s.tokens) + " tokens exceed the dense context of " + std::to_string(t.window));
  const uint32_t held = r.le<uint32_t>("held token count");
  r.need(size_t(held) * 4, "held tokens");
  for (uint32_t i = 0; i < held; ++i) {
    const int32_t id = r.le<int32_t>("held token");
    if (id < 0 || id >= t.vocab) r.fail("held token " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(t.vocab));
    s.held_tokens.push_back(id);
  }
  const uint64_t conv = r.le<uint64_t>("conversation length");
  s.conversation = std::string(r.take(size_t(conv), "conversation"));
  const int64_t rows = live_rows(t, s.tokens);
  for (int i = 0; i < t.tp; ++i) {
    const uint64_t n = r.le<uint64_t>("rank rows length");
    // Wide enough that no header can overflow it.
    const unsigned __int128 want =
        (unsigned __int128)rows * 2 * unsigned(t.n_layers) * uint64_t(dtype_row_bytes(t.kv_type, s.kv_dims[size_t(i)]));
    if (n != want)
      r.fail("rank " + std::to_string(i) + " rows are " + std::to_string(n) + " bytes; " + std::to_string(rows) +
             " live rows of " + std::to_string(t.n_layers) + " layers take " + std::to_string(uint64_t(want)));
    const std::string_view bytes = r.take(size_t(n), "rank rows");
    s.rows.emplace_back(bytes.begin(), bytes.end());
  }
  if (r.pos() != body) r.fail("has " + std::to_string(body - r.pos()) + " unread bytes before its checksum");
  return s;
}

void check_session_target(const SessionSnapshot& s, const SessionTarget& here, const std::string& source) {
  const SessionTarget& f = s.target;
  std::string why;
  auto differ = [&why](const std::string& what, const std::string& file, const std::string& engine) {
    if (file == engine) return;
    why += (why.empty() ? "" : "; ") + what + " " + file + " (this engine: " + engine + ")";
  };
  differ("architecture", f.arch, here.arch);
  differ("model fingerprint", hex(f.model_fingerprint), hex(here.model_fingerprint));
  differ("layers", std::to_string(f.n_layers), std::to_string(here.n_layers));
  differ("attention heads", std::to_string(f.n_heads), std::to_string(here.n_heads));
  differ("KV heads", std::to_string(f.n_kv_heads), std::to_string(here.n_kv_heads));
  differ("head dimension", std::to_string(f.head_dim), std::to_string(here.head_dim));
  differ("vocabulary", std::to_string(f.vocab), std::to_string(here.vocab));
  differ("cache policy", policy_name(f.policy), policy_name(here.policy));
  differ("sink", std::to_string(f.sink), std::to_string(here.sink));
  differ("window", std::to_string(f.window), std::to_string(here.window));
  differ("KV type", kv_type_code(f.kv_type), kv_type_code(here.kv_type));
  if (!why.empty()) throw SessionFileError("session file " + source + " was saved from another setup: " + why);
}

SessionSnapshot reshard_session(const SessionSnapshot& s, int tp, const std::string& source) {
  const SessionTarget& t = s.target;
  auto refuse = [&](const std::string& why) -> SessionFileError {
    return SessionFileError("session file " + source + " cannot move from " + std::to_string(t.tp) + " to " +
                            std::to_string(tp) + " ranks: " + why);
  };
  auto shares = [&](int R) {
    std::vector<KvHeadShare> v;
    for (int r = 0; r < R; ++r) {
      v.push_back(kv_head_share(t.n_heads, t.n_kv_heads, R, r));
      if (v.back().count == 0)
        throw refuse(std::to_string(t.n_kv_heads) + " KV heads do not shard over " + std::to_string(R) + " ranks");
    }
    return v;
  };
  const std::vector<KvHeadShare> from = shares(t.tp), to = shares(tp);
  if (s.rows.size() != from.size() || s.kv_dims.size() != from.size())
    throw refuse("rows of " + std::to_string(s.rows.size()) + " ranks");
  const int64_t block = dtype_block_values(t.kv_type);
  // Bytes of the first v values of a row (v a multiple of the block).
  auto bytes_of = [&](int64_t v) { return dtype_row_bytes(t.kv_type, v); };
  // Rows per rank: n_layers x (K, V) x live rows, each row its heads side by side.
  const int64_t rows = live_rows(t, s.tokens) * 2 * t.n_layers;
  for (size_t p = 0; p < from.size(); ++p)
    if (s.kv_dims[p] != from[p].count * t.head_dim ||
        int64_t(s.rows[p].size()) != rows * bytes_of(int64_t(from[p].count) * t.head_dim))
      throw refuse("rank " + std::to_string(p) + " holds rows " + std::to_string(s.kv_dims[p]) + " values wide, not " +
                   std::to_string(from[p].count) + " heads of " + std::to_string(t.head_dim));
  SessionSnapshot out = s;
  out.target.tp = tp;
  out.kv_dims.assign(size_t(tp), 0);
  out.rows.assign(size_t(tp), {});
  for (int q = 0; q < tp; ++q) {
    const KvHeadShare& dst = to[size_t(q)];
    const int64_t dst_pitch = bytes_of(int64_t(dst.count) * t.head_dim);
    out.kv_dims[size_t(q)] = dst.count * t.head_dim;
    std::vector<uint8_t>& buf = out.rows[size_t(q)];
    buf.resize(size_t(rows * dst_pitch));
    // Runs of consecutive heads that one saved rank held move together: quantized blocks stay
    // whole as long as each run starts and ends on a block boundary in both layouts.
    for (int g = dst.first; g < dst.first + dst.count;) {
      size_t p = 0;
      while (!(from[p].first <= g && g < from[p].first + from[p].count)) ++p;
      const int n = std::min(dst.first + dst.count, from[p].first + from[p].count) - g;
      const int64_t src_at = int64_t(g - from[p].first) * t.head_dim, dst_at = int64_t(g - dst.first) * t.head_dim;
      const int64_t len = int64_t(n) * t.head_dim;
      if (src_at % block || dst_at % block || len % block)
        throw refuse(kv_type_code(t.kv_type) + " stores " + std::to_string(block) + " values per block, and runs of " +
                     std::to_string(len) + " values (heads of " + std::to_string(t.head_dim) +
                     ") would split blocks between ranks");
      const int64_t src_pitch = bytes_of(int64_t(from[p].count) * t.head_dim);
      const uint8_t* src = s.rows[p].data() + bytes_of(src_at);
      uint8_t* d = buf.data() + bytes_of(dst_at);
      for (int64_t i = 0; i < rows; ++i) std::memcpy(d + i * dst_pitch, src + i * src_pitch, size_t(bytes_of(len)));
      g += n;
    }
  }
  return out;
}

void write_session_file(const std::string& path, const SessionSnapshot& s) {
  write_session_bytes(path, encode_session(s));
}

void write_session_bytes(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  auto fail = [&](const std::string& what) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw SessionFileError("session file " + path + ": " + what + ": " + std::strerror(err));
  };
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create " + tmp);
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      errno = err;
      fail("cannot write " + tmp);
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    errno = err;
    fail("cannot sync " + tmp);
  }
  if (::close(fd) != 0) fail("cannot close " + tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename " + tmp + " over it");
  // The rename itself reaches the disk with the directory.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  if (const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

SessionSnapshot read_session_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SessionFileError("session file " + path + ": cannot open: " + std::strerror(errno));
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  if (in.bad()) throw SessionFileError("session file " + path + ": read error");
  return decode_session(bytes, path);
}

SessionIO::SessionIO(Lockstep& ls, const GGUFFile& model) : ls_(ls) {
  const ModelConfig& m = ls.model().config();
  const CacheConfig& c = ls.cache().config();
  target_.arch = m.arch;
  target_.model_fingerprint = model_fingerprint(model);
  target_.n_layers = m.n_layers;
  target_.n_heads = m.n_heads;
  target_.n_kv_heads = m.n_kv_heads;
  target_.head_dim = m.head_dim;
  target_.vocab = m.vocab;
  target_.policy = c.policy;
  target_.sink = c.sink;
  target_.window = c.window;
  target_.kv_type = c.kv_type;
  target_.tp = ls.model().comm().size();
}

SessionSnapshot SessionIO::capture(int slot, std::string id, std::vector<int32_t> held_tokens,
                                   std::string conversation) {
  if (target_.policy == Policy::Recompute)
    throw SessionFileError("session '" + id + "': the recompute policy keeps no cache rows between steps to save");
  for (int32_t t : held_tokens)
    if (t < 0 || t >= target_.vocab)
      throw SessionFileError("session '" + id + "': held token " + std::to_string(t) + " is outside the vocabulary");
  Lockstep::SlotRows rows = ls_.export_slot(slot);
  SessionSnapshot s;
  s.id = std::move(id);
  s.target = target_;
  s.tokens = rows.tokens;
  s.offset = rows.offset;
  s.held_tokens = std::move(held_tokens);
  s.conversation = std::move(conversation);
  s.kv_dims = std::move(rows.kv_dims);
  s.rows = std::move(rows.rows);
  return s;
}

void SessionIO::restore(int slot, const SessionSnapshot& s, const std::string& source) {
  check_session_target(s, target_, source);
  const std::string why = s.target.tp == target_.tp
                              ? ls_.import_slot(slot, s.tokens, s.offset, s.rows)
                              : ls_.import_slot(slot, s.tokens, s.offset, reshard_session(s, target_.tp, source).rows);
  if (!why.empty()) throw SessionFileError("session file " + source + " does not fit this engine: " + why);
}

}  // namespace sinkserve
