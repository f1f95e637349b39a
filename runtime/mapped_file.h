// A read-only model file (a GGUF, or one safetensors shard of a checkpoint), kept open so that the
// loader reads byte ranges with pread: a rank then brings into its own memory only the rows and
// columns it was given, never whole pages of its neighbours' slices, as reading through a mapping
// would (page by page, plus the kernel's fault-around). A GGUF is also mapped, for its header and
// for tools that look at tensors in place; a safetensors shard is not, so that nothing but read()
// can reach its bytes.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace sinkserve {

class MappedFile {
 public:
  // Opens (and with `map`, maps) `path`; throws GGUFError naming it. An empty file is not mapped.
  MappedFile(const std::string& path, bool map);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  size_t size() const { return size_; }
  const uint8_t* data() const { return map_; }  // null when not mapped

  // Copies bytes [offset, offset + n) into dst. Throws GGUFError naming the file when they lie
  // past its end or cannot be read (a file truncated after it was opened).
  void read(uint64_t offset, size_t n, void* dst) const;
  // Bytes copied by read() so far.
  uint64_t bytes_read() const { return bytes_read_.load(std::memory_order_relaxed); }

  // Gives back this process's resident pages of the mapping.
  void drop_resident_pages() const;

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  mutable std::atomic<uint64_t> bytes_read_{0};
};

}  // namespace sinkserve
