// A read-only model file (a GGUF, or one safetensors shard of a checkpoint), mapped whole so that
// tensors have addresses, and kept open so that the loader can read byte ranges with pread: a
// rank then brings into its own memory only the rows and columns it was given, never whole pages
// of its neighbours' slices (a mapping would fault in page by page, plus the kernel's fault-around).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace sinkserve {

class MappedFile {
 public:
  // Opens and maps `path`; throws GGUFError naming it. An empty file is opened but not mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  size_t size() const { return size_; }
  const uint8_t* data() const { return map_; }

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
