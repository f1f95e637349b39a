#include "runtime/gguf.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <set>

#include "kernels/type_traits.h"
#include "runtime/mapped_file.h"

namespace sinkserve {

namespace {

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};
constexpr int kMaxDims = 4;  // GGML_MAX_DIMS
// Real files nest arrays at most one level deep; a bound keeps a crafted file of nested
// one-element arrays from recursing the reader off its stack.
constexpr int kMaxArrayDepth = 8;

std::string type_name(GGUFType t) {
  static const char* names[] = {"uint8", "int8",  "uint16", "int16",  "uint32", "int32", "float32",
                                "bool",  "string", "array", "uint64", "int64", "float64"};
  const auto i = uint32_t(t);
  return i < std::size(names) ? names[i] : "type " + std::to_string(i);
}

// Fixed encoded size of a scalar type; 0 for string and array, whose size depends on content.
size_t scalar_size(GGUFType t) {
  switch (t) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
    case GGUFType::UINT16: case GGUFType::INT16: return 2;
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
    case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
    case GGUFType::STRING: case GGUFType::ARRAY: return 0;
  }
  return 0;
}

bool is_unsigned(GGUFType t) {
  return t == GGUFType::UINT8 || t == GGUFType::UINT16 || t == GGUFType::UINT32 || t == GGUFType::UINT64;
}
bool is_signed(GGUFType t) {
  return t == GGUFType::INT8 || t == GGUFType::INT16 || t == GGUFType::INT32 || t == GGUFType::INT64;
}
bool is_float(GGUFType t) { return t == GGUFType::FLOAT32 || t == GGUFType::FLOAT64; }

// The supported types as the error for an unsupported one lists them.
std::string supported_type_names() {
  std::string s;
  for (const TypeTraits& t : all_type_traits()) s += (s.empty() ? "" : ", ") + std::string(t.name);
  return s;
}

// Names of ggml's other tensor types, so the error tells the user what the file actually holds.
const char* ggml_type_name(uint32_t id) {
  static const char* names[] = {"F32",  "F16",  "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1",
                                "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
                                "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
                                "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
                                "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0"};
  return id < std::size(names) ? names[id] : nullptr;
}

std::string shape_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// Bytes of a tensor, or nullopt when the element count or byte size overflows int64.
std::optional<uint64_t> tensor_bytes(DType t, const std::vector<int64_t>& ne) {
  int64_t rows = 1;
  for (size_t d = 1; d < ne.size(); ++d)
    if (__builtin_mul_overflow(rows, ne[d], &rows)) return std::nullopt;
  int64_t elements;
  if (__builtin_mul_overflow(rows, ne[0], &elements)) return std::nullopt;
  int64_t bytes;
  if (__builtin_mul_overflow(rows, dtype_row_bytes(t, ne[0]), &bytes)) return std::nullopt;
  return uint64_t(bytes);
}

// Bounds-checked cursor over the mapping: every read names what it reads, so a truncated or
// corrupt file reports the field where it went wrong.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
  [[noreturn]] void fail(const std::string& what) const { throw GGUFError(path_ + ": " + what); }
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

  template <class T>
  T read(const std::string& what) {
    if (remaining() < sizeof(T))
      fail("truncated file: " + what + " at offset " + std::to_string(pos_) + " needs " +
           std::to_string(sizeof(T)) + " bytes, only " + std::to_string(remaining()) +
           " remain (file size " + std::to_string(n_) + ")");
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const std::string& what) {
    const size_t at = pos_;
    const auto len = read<uint64_t>("length of " + what);
    if (len > remaining())
      fail(what + " at offset " + std::to_string(at) + " claims " + std::to_string(len) +
           " bytes, but only " + std::to_string(remaining()) +
           " remain in the file (truncated or corrupt)");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& path_;
};

GGUFValue read_value(Cursor& c, GGUFType t, const std::string& key, int depth) {
  GGUFValue v;
  v.type = t;
  const std::string what = "value of '" + key + "'";
  switch (t) {
    case GGUFType::UINT8: v.v = uint64_t(c.read<uint8_t>(what)); break;
    case GGUFType::UINT16: v.v = uint64_t(c.read<uint16_t>(what)); break;
    case GGUFType::UINT32: v.v = uint64_t(c.read<uint32_t>(what)); break;
    case GGUFType::UINT64: v.v = c.read<uint64_t>(what); break;
    case GGUFType::INT8: v.v = int64_t(c.read<int8_t>(what)); break;
    case GGUFType::INT16: v.v = int64_t(c.read<int16_t>(what)); break;
    case GGUFType::INT32: v.v = int64_t(c.read<int32_t>(what)); break;
    case GGUFType::INT64: v.v = c.read<int64_t>(what); break;
    case GGUFType::FLOAT32: v.v = double(c.read<float>(what)); break;
    case GGUFType::FLOAT64: v.v = c.read<double>(what); break;
    case GGUFType::BOOL: {
      const auto b = c.read<uint8_t>(what);
      if (b > 1) c.fail("bool " + what + " is " + std::to_string(b) + " (must be 0 or 1)");
      v.v = b == 1;
      break;
    }
    case GGUFType::STRING: v.v = c.read_string("string " + what); break;
    case GGUFType::ARRAY: {
      if (depth >= kMaxArrayDepth)
        c.fail("array '" + key + "' nests deeper than " + std::to_string(kMaxArrayDepth) + " levels");
      const auto et = c.read<uint32_t>("element type of array '" + key + "'");
      if (et > uint32_t(GGUFType::FLOAT64))
        c.fail("array '" + key + "' has unknown element type " + std::to_string(et));
      const auto count = c.read<uint64_t>("element count of array '" + key + "'");
      GGUFArray arr;
      arr.elem_type = GGUFType(et);
      // Smallest possible encoding of one element: a string's length, an array's type and count.
      const size_t min_elem = arr.elem_type == GGUFType::STRING  ? 8
                              : arr.elem_type == GGUFType::ARRAY ? 12
                                                                 : scalar_size(arr.elem_type);
      if (count > c.remaining() / min_elem)
        c.fail("array '" + key + "' claims " + std::to_string(count) + " elements of " +
               type_name(arr.elem_type) + ", but only " + std::to_string(c.remaining()) +
               " bytes remain in the file (truncated or corrupt)");
      arr.items.reserve(size_t(count));
      for (uint64_t i = 0; i < count; ++i) arr.items.push_back(read_value(c, arr.elem_type, key, depth + 1));
      v.v = std::move(arr);
      break;
    }
    default: c.fail("metadata key '" + key + "' has unknown value type " + std::to_string(uint32_t(t)));
  }
  return v;
}

}  // namespace

int64_t GGUFTensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

GGUFFile::GGUFFile(const std::string& path) : path_(path) {
  sources_.push_back(std::make_shared<const MappedFile>(path, /*map=*/true));
  const uint8_t* map = sources_[0]->data();
  const size_t size = sources_[0]->size();
  if (size == 0) throw GGUFError(path + ": empty file (0 bytes), not a GGUF model");

  Cursor c(map, size, path_);
  if (size < 4 || std::memcmp(map, kMagic, 4) != 0) {
    char shown[5] = {};
    for (size_t i = 0; i < 4 && i < size; ++i)
      shown[i] = map[i] >= 0x20 && map[i] < 0x7f ? char(map[i]) : '?';
    c.fail(std::string("not a GGUF file: magic is '") + shown + "', expected 'GGUF'");
  }
  c.read<uint32_t>("magic");
  version_ = c.read<uint32_t>("version");
  if ((version_ & 0xffff) == 0 && (version_ >> 24) >= 1 && (version_ >> 24) <= 3)
    c.fail("big-endian GGUF file (version " + std::to_string(version_ >> 24) +
           "): only little-endian files are supported");
  if (version_ != 2 && version_ != 3)
    c.fail("unsupported GGUF version " + std::to_string(version_) + " (supported: 2 and 3)");

  const auto n_tensors = c.read<uint64_t>("tensor count");
  const auto n_kv = c.read<uint64_t>("metadata key count");
  // A key needs at least its length and type; a tensor info at least 8+4+8+4+8 bytes.
  if (n_kv > c.remaining() / 12)
    c.fail("header claims " + std::to_string(n_kv) + " metadata keys, more than the " +
           std::to_string(size) + "-byte file can hold (truncated or corrupt)");
  if (n_tensors > c.remaining() / 32)
    c.fail("header claims " + std::to_string(n_tensors) + " tensors, more than the " +
           std::to_string(size) + "-byte file can hold (truncated or corrupt)");

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string("name of metadata key " + std::to_string(i));
    const auto t = c.read<uint32_t>("value type of '" + key + "'");
    if (t > uint32_t(GGUFType::FLOAT64))
      c.fail("metadata key '" + key + "' has unknown value type " + std::to_string(t));
    GGUFValue v = read_value(c, GGUFType(t), key, 0);
    if (kv_.count(key)) c.fail("duplicate metadata key '" + key + "'");
    kv_.emplace(std::move(key), std::move(v));
  }

  if (const GGUFValue* a = find("general.alignment")) {
    if (a->type != GGUFType::UINT32)
      c.fail("general.alignment has type " + type_name(a->type) + ", expected uint32");
    const uint64_t al = std::get<uint64_t>(a->v);
    if (al == 0 || (al & (al - 1)) != 0)
      c.fail("general.alignment is " + std::to_string(al) + ", not a power of two");
    alignment_ = al;
  }

  tensors_.reserve(size_t(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GGUFTensorInfo ti;
    ti.name = c.read_string("name of tensor " + std::to_string(i));
    const std::string tn = "tensor '" + ti.name + "'";
    const auto n_dims = c.read<uint32_t>("dimension count of " + tn);
    if (n_dims < 1 || n_dims > kMaxDims)
      c.fail(tn + " has " + std::to_string(n_dims) + " dimensions (must be 1 to 4)");
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto n = c.read<uint64_t>("dimension " + std::to_string(d) + " of " + tn);
      if (n == 0 || n > uint64_t(std::numeric_limits<int64_t>::max()))
        c.fail(tn + " has dimension " + std::to_string(d) + " = " +
               (n == 0 ? "0" : std::to_string(int64_t(n))) + " (must be positive)");
      ti.ne.push_back(int64_t(n));
    }
    const auto type_id = c.read<uint32_t>("type of " + tn);
    const auto dt = dtype_from_ggml(type_id);
    if (!dt) {
      const char* known = ggml_type_name(type_id);
      c.fail(tn + " has type " + std::to_string(type_id) +
             " which sinkserve does not support (" + supported_type_names() + ")" +
             (known ? std::string("; it is ggml's ") + known + ": requantize the model to one of those"
                    : std::string("; it is not a known ggml type")));
    }
    ti.type = *dt;
    if (ti.ne[0] % dtype_block_values(ti.type) != 0)
      c.fail(tn + " has rows of " + std::to_string(ti.ne[0]) + " values, not a multiple of the " +
             std::string(dtype_name(ti.type)) + " block size " +
             std::to_string(dtype_block_values(ti.type)));
    const auto bytes = tensor_bytes(ti.type, ti.ne);
    if (!bytes) c.fail(tn + " has shape " + shape_str(ti.ne) + " whose size overflows 64 bits");
    ti.bytes = *bytes;
    ti.offset = c.read<uint64_t>("data offset of " + tn);
    if (ti.offset % alignment_ != 0)
      c.fail(tn + " has data offset " + std::to_string(ti.offset) + ", not a multiple of the alignment " +
             std::to_string(alignment_));
    if (tensor_index_.count(ti.name)) c.fail("duplicate tensor name '" + ti.name + "'");
    tensor_index_.emplace(ti.name, tensors_.size());
    tensors_.push_back(std::move(ti));
  }

  const uint64_t data_start = (uint64_t(c.pos()) + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t data_size = data_start <= size ? size - data_start : 0;
  if (!tensors_.empty() && data_start > size)
    c.fail("truncated file: the tensor data section would start at offset " +
           std::to_string(data_start) + ", past the end of the " + std::to_string(size) + "-byte file");
  for (GGUFTensorInfo& ti : tensors_) {
    if (ti.offset > data_size || ti.bytes > data_size - ti.offset)
      c.fail("tensor '" + ti.name + "' data [" + std::to_string(ti.offset) + ", " +
             std::to_string(ti.offset + ti.bytes) + ") of the data section lies outside it (" +
             std::to_string(data_size) + " bytes): the file is truncated or the offset is corrupt");
    ti.data = map + data_start + ti.offset;
    ti.source = 0;
    ti.file_offset = data_start + ti.offset;
  }
  std::vector<const GGUFTensorInfo*> by_offset;
  for (const GGUFTensorInfo& ti : tensors_) by_offset.push_back(&ti);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GGUFTensorInfo& a = *by_offset[i - 1];
    const GGUFTensorInfo& b = *by_offset[i];
    if (a.offset + a.bytes > b.offset)
      c.fail("tensors '" + a.name + "' and '" + b.name + "' overlap in the data section (offsets " +
             std::to_string(a.offset) + "+" + std::to_string(a.bytes) + " and " +
             std::to_string(b.offset) + ")");
  }
}

GGUFFile::GGUFFile(std::string path, ModelFormat format, std::map<std::string, GGUFValue> kv,
                   std::vector<GGUFTensorInfo> tensors, std::vector<std::shared_ptr<const MappedFile>> sources,
                   std::vector<std::vector<uint8_t>> owned)
    : path_(std::move(path)), format_(format), sources_(std::move(sources)), owned_(std::move(owned)),
      kv_(std::move(kv)), tensors_(std::move(tensors)) {
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (!tensor_index_.emplace(tensors_[i].name, i).second)
      throw GGUFError(path_ + ": tensor '" + tensors_[i].name + "' appears twice");
}

GGUFFile::~GGUFFile() = default;

size_t GGUFFile::file_size() const {
  size_t n = 0;
  for (const auto& s : sources_) n += s->size();
  return n;
}

void GGUFFile::drop_resident_pages() const {
  for (const auto& s : sources_) s->drop_resident_pages();
}

void GGUFFile::read(const GGUFTensorInfo& t, uint64_t offset, size_t n, void* dst) const {
  if (offset > t.bytes || n > t.bytes - offset)
    throw std::out_of_range("GGUFFile::read: bytes [" + std::to_string(offset) + ", " + std::to_string(offset + n) +
                            ") of tensor '" + t.name + "' (" + std::to_string(t.bytes) + " bytes)");
  if (t.source < 0) {
    std::memcpy(dst, t.data + offset, n);
    return;
  }
  sources_.at(size_t(t.source))->read(t.file_offset + offset, n, dst);
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {

[[noreturn]] void wrong_type(const std::string& path, const std::string& key, GGUFType got,
                             const char* want) {
  throw GGUFError(path + ": metadata key '" + key + "' has type " + type_name(got) + ", expected " + want);
}

int64_t as_int(const std::string& path, const std::string& key, const GGUFValue& v) {
  if (is_signed(v.type)) return std::get<int64_t>(v.v);
  if (!is_unsigned(v.type)) wrong_type(path, key, v.type, "an integer");
  const uint64_t u = std::get<uint64_t>(v.v);
  if (u > uint64_t(std::numeric_limits<int64_t>::max()))
    throw GGUFError(path + ": metadata key '" + key + "' is " + std::to_string(u) + ", out of range");
  return int64_t(u);
}

double as_float(const std::string& path, const std::string& key, const GGUFValue& v) {
  if (is_float(v.type)) return std::get<double>(v.v);
  if (is_signed(v.type)) return double(std::get<int64_t>(v.v));
  if (is_unsigned(v.type)) return double(std::get<uint64_t>(v.v));
  wrong_type(path, key, v.type, "a number");
}

}  // namespace

std::string GGUFFile::get_string(const std::string& key) const {
  if (auto s = find_string(key)) return *s;
  throw GGUFError(path_ + ": metadata key '" + key + "' is missing");
}

int64_t GGUFFile::get_int(const std::string& key) const {
  if (auto i = find_int(key)) return *i;
  throw GGUFError(path_ + ": metadata key '" + key + "' is missing");
}

double GGUFFile::get_float(const std::string& key) const {
  if (auto f = find_float(key)) return *f;
  throw GGUFError(path_ + ": metadata key '" + key + "' is missing");
}

const GGUFArray& GGUFFile::get_array(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) throw GGUFError(path_ + ": metadata key '" + key + "' is missing");
  if (v->type != GGUFType::ARRAY) wrong_type(path_, key, v->type, "an array");
  return std::get<GGUFArray>(v->v);
}

std::optional<int64_t> GGUFFile::find_int(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  return as_int(path_, key, *v);
}

std::optional<double> GGUFFile::find_float(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  return as_float(path_, key, *v);
}

std::optional<bool> GGUFFile::find_bool(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (auto* b = std::get_if<bool>(&v->v)) return *b;
  return as_int(path_, key, *v) != 0;  // throws naming the key when it is not a number either
}

std::optional<std::string> GGUFFile::find_string(const std::string& key) const {
  const GGUFValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GGUFType::STRING) wrong_type(path_, key, v->type, "a string");
  return std::get<std::string>(v->v);
}

const GGUFTensorInfo* GGUFFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GGUFTensorInfo& GGUFFile::tensor(const std::string& name, const std::vector<int64_t>& expect_ne) const {
  const GGUFTensorInfo* t = find_tensor(name);
  if (!t) throw GGUFError(path_ + ": tensor '" + name + "' is missing");
  if (!expect_ne.empty() && t->ne != expect_ne)
    throw GGUFError(path_ + ": tensor '" + name + "'" + (t->origin.empty() ? "" : " (" + t->origin + ")") +
                    " has shape " + shape_str(t->ne) + ", expected " + shape_str(expect_ne));
  return *t;
}

// ---------------------------------------------------------------------------------------------
// Writer

void GGUFWriter::set(const std::string& key, GGUFValue value) {
  for (auto& [k, v] : kv_)
    if (k == key) {
      v = std::move(value);
      return;
    }
  kv_.emplace_back(key, std::move(value));
}

void GGUFWriter::set_u32(const std::string& key, uint32_t v) { set(key, {GGUFType::UINT32, uint64_t(v)}); }
void GGUFWriter::set_f32(const std::string& key, float v) { set(key, {GGUFType::FLOAT32, double(v)}); }
void GGUFWriter::set_string(const std::string& key, const std::string& v) { set(key, {GGUFType::STRING, v}); }

uint64_t GGUFWriter::check_new_tensor(const std::string& name, DType type,
                                      const std::vector<int64_t>& ne) const {
  for (const T& t : tensors_)
    if (t.name == name) throw std::invalid_argument("GGUFWriter: duplicate tensor '" + name + "'");
  if (ne.empty() || ne.size() > size_t(kMaxDims))
    throw std::invalid_argument("GGUFWriter: tensor '" + name + "' needs 1 to 4 dimensions");
  for (int64_t d : ne)
    if (d <= 0) throw std::invalid_argument("GGUFWriter: tensor '" + name + "' has shape " + shape_str(ne));
  if (ne[0] % dtype_block_values(type) != 0)
    throw std::invalid_argument("GGUFWriter: tensor '" + name + "' rows of " + std::to_string(ne[0]) +
                                " do not divide into " + std::string(dtype_name(type)) + " blocks");
  const auto bytes = tensor_bytes(type, ne);
  if (!bytes) throw std::invalid_argument("GGUFWriter: tensor '" + name + "' is too large");
  return *bytes;
}

void GGUFWriter::add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne,
                            const void* data, size_t bytes) {
  const uint64_t want = check_new_tensor(name, type, ne);
  if (bytes != want)
    throw std::invalid_argument("GGUFWriter: tensor '" + name + "' " + shape_str(ne) + " " +
                                std::string(dtype_name(type)) + " needs " + std::to_string(want) +
                                " bytes, got " + std::to_string(bytes));
  const auto* p = static_cast<const uint8_t*>(data);
  tensors_.push_back({name, type, ne, want, std::vector<uint8_t>(p, p + bytes), nullptr});
}

void GGUFWriter::add_tensor(const std::string& name, DType type, const std::vector<int64_t>& ne, Fill fill) {
  const uint64_t bytes = check_new_tensor(name, type, ne);
  if (!fill) throw std::invalid_argument("GGUFWriter: tensor '" + name + "' has no fill function");
  tensors_.push_back({name, type, ne, bytes, {}, std::move(fill)});
}

namespace {

class Out {
 public:
  explicit Out(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "wb")) {
    if (!f_) throw std::runtime_error("cannot create " + path + ": " + std::strerror(errno));
    std::setvbuf(f_, nullptr, _IOFBF, 1 << 22);
  }
  ~Out() {
    if (f_) std::fclose(f_);
  }
  void bytes(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n)
      throw std::runtime_error("cannot write " + path_ + ": " + std::strerror(errno));
    pos_ += n;
  }
  template <class T>
  void pod(T v) { bytes(&v, sizeof v); }
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void pad(uint64_t alignment) {
    static const uint8_t zeros[256] = {};
    uint64_t n = (alignment - pos_ % alignment) % alignment;
    while (n) {
      const size_t k = size_t(std::min<uint64_t>(n, sizeof zeros));
      bytes(zeros, k);
      n -= k;
    }
  }
  void close() {
    const int rc = std::fclose(f_);
    f_ = nullptr;
    if (rc != 0) throw std::runtime_error("cannot write " + path_ + ": " + std::strerror(errno));
  }

 private:
  std::string path_;
  std::FILE* f_;
  uint64_t pos_ = 0;
};

[[noreturn]] void bad_value(const std::string& key, GGUFType t) {
  throw std::invalid_argument("GGUFWriter: value of '" + key + "' does not hold a " + type_name(t));
}

// Integers may be given as either signed or unsigned 64-bit; they must fit the declared width.
template <class I>
I narrow_int(const std::string& key, const GGUFValue& v) {
  __int128 x;
  if (auto* u = std::get_if<uint64_t>(&v.v)) x = *u;
  else if (auto* s = std::get_if<int64_t>(&v.v)) x = *s;
  else bad_value(key, v.type);
  if (x < __int128(std::numeric_limits<I>::min()) || x > __int128(std::numeric_limits<I>::max()))
    throw std::invalid_argument("GGUFWriter: value of '" + key + "' does not fit a " + type_name(v.type));
  return I(x);
}

void write_value(Out& o, const std::string& key, const GGUFValue& v) {
  switch (v.type) {
    case GGUFType::UINT8: o.pod(narrow_int<uint8_t>(key, v)); return;
    case GGUFType::INT8: o.pod(narrow_int<int8_t>(key, v)); return;
    case GGUFType::UINT16: o.pod(narrow_int<uint16_t>(key, v)); return;
    case GGUFType::INT16: o.pod(narrow_int<int16_t>(key, v)); return;
    case GGUFType::UINT32: o.pod(narrow_int<uint32_t>(key, v)); return;
    case GGUFType::INT32: o.pod(narrow_int<int32_t>(key, v)); return;
    case GGUFType::UINT64: o.pod(narrow_int<uint64_t>(key, v)); return;
    case GGUFType::INT64: o.pod(narrow_int<int64_t>(key, v)); return;
    case GGUFType::FLOAT32:
    case GGUFType::FLOAT64: {
      const auto* d = std::get_if<double>(&v.v);
      if (!d) bad_value(key, v.type);
      if (v.type == GGUFType::FLOAT32) o.pod(float(*d));
      else o.pod(*d);
      return;
    }
    case GGUFType::BOOL: {
      const auto* b = std::get_if<bool>(&v.v);
      if (!b) bad_value(key, v.type);
      o.pod(uint8_t(*b));
      return;
    }
    case GGUFType::STRING: {
      const auto* s = std::get_if<std::string>(&v.v);
      if (!s) bad_value(key, v.type);
      o.str(*s);
      return;
    }
    case GGUFType::ARRAY: {
      const auto* a = std::get_if<GGUFArray>(&v.v);
      if (!a) bad_value(key, v.type);
      o.pod(uint32_t(a->elem_type));
      o.pod(uint64_t(a->items.size()));
      for (const GGUFValue& item : a->items) {
        if (item.type != a->elem_type)
          throw std::invalid_argument("GGUFWriter: array '" + key + "' mixes element types");
        write_value(o, key, item);
      }
      return;
    }
  }
  bad_value(key, v.type);
}

}  // namespace

void GGUFWriter::write(const std::string& path, uint64_t alignment) const {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > 0xffffffffu)
    throw std::invalid_argument("GGUFWriter: alignment " + std::to_string(alignment) + " is not a power of two");
  // The reader only learns a non-default alignment from the metadata, so it must be recorded.
  auto kv = kv_;
  auto al = std::find_if(kv.begin(), kv.end(), [](auto& p) { return p.first == "general.alignment"; });
  if (alignment != 32 || al != kv.end()) {
    GGUFValue v{GGUFType::UINT32, alignment};
    if (al != kv.end()) al->second = v;
    else kv.emplace_back("general.alignment", v);
  }

  // Written beside the target and renamed into place, so a failed or interrupted write never
  // leaves a half-written model under the final name.
  const std::string tmp = path + ".partial";
  try {
    Out o(tmp);
    o.bytes(kMagic, 4);
    o.pod<uint32_t>(3);
    o.pod<uint64_t>(tensors_.size());
    o.pod<uint64_t>(kv.size());
    for (const auto& [k, v] : kv) {
      o.str(k);
      o.pod(uint32_t(v.type));
      write_value(o, k, v);
    }
    uint64_t offset = 0;
    for (const T& t : tensors_) {
      o.str(t.name);
      o.pod(uint32_t(t.ne.size()));
      for (int64_t d : t.ne) o.pod(uint64_t(d));
      o.pod(type_traits(t.type).ggml_type);
      o.pod(offset);
      offset += (t.bytes + alignment - 1) / alignment * alignment;
    }
    o.pad(alignment);
    std::vector<uint8_t> buf;
    for (const T& t : tensors_) {
      if (t.fill) {
        buf.resize(size_t(t.bytes));
        t.fill(buf.data(), buf.size());
        o.bytes(buf.data(), buf.size());
      } else {
        o.bytes(t.data.data(), t.data.size());
      }
      o.pad(alignment);
    }
    o.close();
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot rename " + tmp + " to " + path + ": " + std::strerror(e));
  }
}

}  // namespace sinkserve
