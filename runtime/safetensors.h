// Reader of one safetensors file: an 8-byte little-endian header length N, N bytes of JSON that map
// each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the bytes that
// follow the header) plus an optional "__metadata__" object, then the tensor data. Validated once
// at open as the format requires: known dtypes, sizes that match the shapes, and data offsets that
// cover the data exactly (in range, no overlap, no hole). Errors throw GGUFError naming the file.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "runtime/mapped_file.h"

namespace sinkserve {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;          // as the file spells it: "BF16", "I64", ...
  std::optional<DType> type;  // set for the types sinkserve computes with (F32, F16, BF16)
  std::vector<int64_t> shape;  // outermost first, as PyTorch writes it
  uint64_t begin = 0, end = 0;  // data_offsets
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::shared_ptr<const MappedFile>& file() const { return file_; }
  uint64_t data_start() const { return data_start_; }  // 8 + the header length
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const;

 private:
  std::shared_ptr<const MappedFile> file_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;
};

// "[4096, 11008]"
std::string shape_string(const std::vector<int64_t>& shape);

// Writes a safetensors file (`synth --format hf`, tests): the tensors in the order added, their
// bytes produced while the file streams out, so that files larger than memory can be written.
class SafetensorsWriter {
 public:
  // fill(dst, bytes) must fill all `bytes` of dst. Throws std::invalid_argument for an unknown
  // dtype or a repeated name.
  using Fill = std::function<void(uint8_t* dst, size_t bytes)>;
  void add(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape, Fill fill);
  uint64_t data_bytes() const { return offset_; }
  // Throws std::runtime_error on I/O errors.
  void write(const std::string& path) const;

 private:
  struct T {
    std::string name, dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
    Fill fill;
  };
  std::vector<T> tensors_;
  uint64_t offset_ = 0;
};

}  // namespace sinkserve
