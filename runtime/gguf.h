// GGUF v2/v3 reader over mmap. The file is validated once at open: every read afterwards is in
// bounds. Errors throw GGUFError whose message names the file and the problem.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "kernels/dtype.h"

namespace sinkserve {

class GGUFError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// GGUF metadata value types, numbered as in the spec.
enum class GGUFType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

struct GGUFValue;
struct GGUFArray {
  GGUFType elem_type = GGUFType::UINT8;
  std::vector<GGUFValue> items;
};
struct GGUFValue {
  GGUFType type = GGUFType::UINT8;
  // Integers of every width widen to int64/uint64; floats to double; bool to bool.
  std::variant<uint64_t, int64_t, double, bool, std::string, GGUFArray> v;
};

struct GGUFTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ne[0] is the innermost (contiguous) dimension
  DType type = DType::F32;
  uint64_t offset = 0;      // relative to the data section
  uint64_t bytes = 0;
  const uint8_t* data = nullptr;  // into the mapping
  int64_t elements() const;
};

class GGUFFile {
 public:
  // Maps and validates the file. Throws GGUFError.
  explicit GGUFFile(const std::string& path);
  ~GGUFFile();
  GGUFFile(const GGUFFile&) = delete;
  GGUFFile& operator=(const GGUFFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  size_t file_size() const { return size_; }

  const std::map<std::string, GGUFValue>& metadata() const { return kv_; }
  const GGUFValue* find(const std::string& key) const;
  // Typed accessors: throw GGUFError naming the key when missing or of the wrong kind.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;  // any integer type
  double get_float(const std::string& key) const;  // any float or integer type
  const GGUFArray& get_array(const std::string& key) const;
  std::optional<int64_t> find_int(const std::string& key) const;
  std::optional<double> find_float(const std::string& key) const;
  // A boolean key; integers count as true when non-zero (some converters write flags that way).
  std::optional<bool> find_bool(const std::string& key) const;
  std::optional<std::string> find_string(const std::string& key) const;

  // Gives back this process's resident pages of the mapping; they fault in again from the file
  // if read. For after a backend has copied the weights it computes with.
  void drop_resident_pages() const;

  const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
  const GGUFTensorInfo* find_tensor(const std::string& name) const;
  // Throws GGUFError naming the tensor when missing, or when `ne` is given and differs.
  const GGUFTensorInfo& tensor(const std::string& name,
                               const std::vector<int64_t>& expect_ne = {}) const;

 private:
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  const uint8_t* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, GGUFValue> kv_;
  std::vector<GGUFTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Writes GGUF v3 files (used by `synth` and by tests that build corrupt or custom models).
class GGUFWriter {
 public:
  void set(const std::string& key, GGUFValue value);
  void set_u32(const std::string& key, uint32_t v);
  void set_f32(const std::string& key, float v);
  void set_string(const std::string& key, const std::string& v);
  // Adds a tensor; data is copied. ne[0] innermost. Throws std::invalid_argument when the name
  // repeats, a dimension is not positive, ne[0] does not divide into blocks or `bytes` is wrong.
  void add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne,
                  const void* data, size_t bytes);
  // Adds a tensor whose bytes are produced only while write() streams the file, so that files
  // larger than memory can be written: fill(dst, bytes) must fill all `bytes` of dst.
  using Fill = std::function<void(uint8_t* dst, size_t bytes)>;
  void add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne, Fill fill);
  // Writes header, metadata, tensor infos and aligned data. Throws std::runtime_error on I/O errors.
  void write(const std::string& path, uint64_t alignment = 32) const;

 private:
  std::vector<std::pair<std::string, GGUFValue>> kv_;
  struct T {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    uint64_t bytes;
    std::vector<uint8_t> data;  // empty when `fill` produces the bytes
    Fill fill;
  };
  uint64_t check_new_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne) const;
  std::vector<T> tensors_;
};

}  // namespace sinkserve
