#include "runtime/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "runtime/gguf.h"

namespace sinkserve {

MappedFile::MappedFile(const std::string& path, bool map) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw GGUFError(path + ": cannot open: " + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw GGUFError(path + ": not a regular file");
  }
  size_ = size_t(st.st_size);
  if (size_ == 0 || !map) return;
  void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (m == MAP_FAILED) {
    const int e = errno;
    ::close(fd_);
    throw GGUFError(path + ": cannot map: " + std::strerror(e));
  }
  map_ = static_cast<const uint8_t*>(m);
}

MappedFile::~MappedFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
}

void MappedFile::read(uint64_t offset, size_t n, void* dst) const {
  if (offset > size_ || n > size_ - offset)
    throw GGUFError(path_ + ": bytes [" + std::to_string(offset) + ", " + std::to_string(offset + n) +
                    ") lie past the end of the " + std::to_string(size_) + "-byte file");
  auto* out = static_cast<uint8_t*>(dst);
  for (size_t done = 0; done < n;) {
    const ssize_t got = ::pread(fd_, out + done, n - done, off_t(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw GGUFError(path_ + ": cannot read: " + std::strerror(errno));
    if (got == 0)
      throw GGUFError(path_ + ": the file ended at byte " + std::to_string(offset + done) +
                      " while reading (truncated after it was opened?)");
    done += size_t(got);
  }
  bytes_read_.fetch_add(n, std::memory_order_relaxed);
}

void MappedFile::drop_resident_pages() const {
  if (map_) ::madvise(const_cast<uint8_t*>(map_), size_, MADV_DONTNEED);
}

}  // namespace sinkserve
