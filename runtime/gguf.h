// GGUF v2/v3 reader over mmap. The file is validated once at open: every read afterwards is in
// bounds. Errors throw GGUFError whose message names the file and the problem. A Hugging Face
// checkpoint directory is presented through the same class (runtime/hf_checkpoint.h builds it):
// metadata under GGUF's key names, tensors under GGUF's names, bytes in the safetensors shards.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
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
  uint64_t offset = 0;      // relative to the data section (safetensors: to the shard's data)
  uint64_t bytes = 0;
  // Into the mapping, or into memory the file owns; null for a checkpoint's shards, which are
  // only read (GGUFFile::read).
  const uint8_t* data = nullptr;
  int source = -1;                // which of the file's sources holds the bytes; -1: `data` only
  uint64_t file_offset = 0;       // where the bytes start in that source
  // Where a tensor read from another format came from ("model.norm.weight in model.safetensors"),
  // for error messages; empty for GGUF.
  std::string origin;
  int64_t elements() const;
};

class MappedFile;

enum class ModelFormat : uint8_t { Gguf, HfCheckpoint };

class GGUFFile {
 public:
  // Maps and validates the file. Throws GGUFError.
  explicit GGUFFile(const std::string& path);
  // A model another reader assembled (runtime/hf_checkpoint.cpp), at `path` (its directory):
  // tensors whose bytes lie in `sources` or, for those the reader converted, in `owned`.
  GGUFFile(std::string path, ModelFormat format, std::map<std::string, GGUFValue> kv,
           std::vector<GGUFTensorInfo> tensors, std::vector<std::shared_ptr<const MappedFile>> sources,
           std::vector<std::vector<uint8_t>> owned);
  ~GGUFFile();
  GGUFFile(const GGUFFile&) = delete;
  GGUFFile& operator=(const GGUFFile&) = delete;

  const std::string& path() const { return path_; }
  ModelFormat format() const { return format_; }
  uint32_t version() const { return version_; }  // 0 for other formats
  uint64_t alignment() const { return alignment_; }
  size_t file_size() const;  // all sources together
  // The files the tensors' bytes come from: the GGUF, or a checkpoint's shards.
  const std::vector<std::shared_ptr<const MappedFile>>& sources() const { return sources_; }

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

  // Copies bytes [offset, offset + n) of t's data into dst by reading its file, so that a rank
  // that loads a slice brings nothing else into its memory. Throws GGUFError naming the file.
  void read(const GGUFTensorInfo& t, uint64_t offset, size_t n, void* dst) const;

  const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
  const GGUFTensorInfo* find_tensor(const std::string& name) const;
  // Throws GGUFError naming the tensor when missing, or when `ne` is given and differs.
  const GGUFTensorInfo& tensor(const std::string& name,
                               const std::vector<int64_t>& expect_ne = {}) const;

 private:
  std::string path_;
  ModelFormat format_ = ModelFormat::Gguf;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::shared_ptr<const MappedFile>> sources_;
  std::vector<std::vector<uint8_t>> owned_;
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
  const std::vector<std::pair<std::string, GGUFValue>>& metadata() const { return kv_; }
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
