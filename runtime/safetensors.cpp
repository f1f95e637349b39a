#include "runtime/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "runtime/gguf.h"

namespace sinkserve {

namespace {

// The reference implementation refuses headers above 100 MB; real ones are a few hundred KB.
constexpr uint64_t kMaxHeader = 100'000'000;

struct DtypeInfo {
  const char* name;
  int bytes;
  std::optional<DType> type;
};

// Every dtype of the format with a whole number of bytes per element.
constexpr DtypeInfo kDtypes[] = {
    {"F32", 4, DType::F32},     {"F16", 2, DType::F16},       {"BF16", 2, DType::BF16},
    {"F64", 8, std::nullopt},   {"I64", 8, std::nullopt},     {"I32", 4, std::nullopt},
    {"I16", 2, std::nullopt},   {"I8", 1, std::nullopt},      {"U64", 8, std::nullopt},
    {"U32", 4, std::nullopt},   {"U16", 2, std::nullopt},     {"U8", 1, std::nullopt},
    {"BOOL", 1, std::nullopt},  {"F8_E4M3", 1, std::nullopt}, {"F8_E5M2", 1, std::nullopt},
    {"F8_E8M0", 1, std::nullopt},
};

const DtypeInfo* find_dtype(const std::string& s) {
  for (const DtypeInfo& d : kDtypes)
    if (s == d.name) return &d;
  return nullptr;
}

}  // namespace

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsFile::SafetensorsFile(const std::string& path)
    : file_(std::make_shared<const MappedFile>(path, /*map=*/false)) {
  auto fail = [&](const std::string& what) -> void { throw GGUFError(path + ": " + what); };
  const uint64_t size = file_->size();
  if (size < 8)
    fail("truncated file: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  file_->read(0, 8, &n);
  if (n > size - 8)
    fail("header length " + std::to_string(n) + " runs past the end of the " + std::to_string(size) +
         "-byte file (truncated, or not a safetensors file)");
  if (n > kMaxHeader) fail("header length " + std::to_string(n) + " is above the format's limit of 100 MB");
  data_start_ = 8 + n;
  std::string text(size_t(n), '\0');
  file_->read(8, size_t(n), text.data());

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail("header is not a JSON object");

  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail("'__metadata__' is not a JSON object");
      continue;
    }
    const std::string what = "tensor '" + name + "'";
    if (!v.is_object()) fail(what + " is not a JSON object");
    SafetensorsTensor t;
    t.name = name;
    const auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) fail(what + " has no string 'dtype'");
    t.dtype = dt->get<std::string>();
    const DtypeInfo* info = find_dtype(t.dtype);
    if (!info) fail(what + " has dtype '" + t.dtype + "', which the safetensors format does not define");
    t.type = info->type;
    const auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) fail(what + " has no 'shape' array");
    uint64_t elements = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) fail(what + " has a shape entry that is not a non-negative integer: " + d.dump());
      const uint64_t x = d.get<uint64_t>();
      if (x > uint64_t(INT64_MAX) || (x && elements > UINT64_MAX / x)) fail(what + " has a shape whose size overflows");
      elements *= x;
      t.shape.push_back(int64_t(x));
    }
    const auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      fail(what + " has no 'data_offsets' pair of non-negative integers");
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    if (t.end < t.begin)
      fail(what + " has data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] that end before they begin");
    if (elements > UINT64_MAX / uint64_t(info->bytes)) fail(what + " has a shape whose size overflows");
    const uint64_t bytes = elements * uint64_t(info->bytes);
    if (t.end - t.begin != bytes)
      fail(what + " is " + t.dtype + " " + shape_string(t.shape) + " (" + std::to_string(bytes) +
           " bytes), but its data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] span " +
           std::to_string(t.end - t.begin));
    index_.emplace(name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The data must be covered exactly: each tensor starts where the previous one ended.
  const uint64_t data_size = size - data_start_;
  std::vector<const SafetensorsTensor*> order;
  for (const SafetensorsTensor& t : tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->begin < b->begin || (a->begin == b->begin && a->end < b->end); });
  uint64_t at = 0;
  const SafetensorsTensor* prev = nullptr;
  for (const SafetensorsTensor* t : order) {
    if (t->begin < at)
      fail("tensors '" + prev->name + "' and '" + t->name + "' overlap (data_offsets [" + std::to_string(prev->begin) +
           ", " + std::to_string(prev->end) + "] and [" + std::to_string(t->begin) + ", " + std::to_string(t->end) + "])");
    if (t->begin > at)
      fail("bytes [" + std::to_string(at) + ", " + std::to_string(t->begin) + ") of the data belong to no tensor");
    if (t->end > data_size)
      fail("truncated file: tensor '" + t->name + "' data [" + std::to_string(t->begin) + ", " + std::to_string(t->end) +
           ") runs past the end of the " + std::to_string(data_size) + " bytes of data after the header");
    at = t->end;
    prev = t;
  }
  if (at != data_size)
    fail(std::to_string(data_size - at) + " bytes after the last tensor's data belong to no tensor");
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsWriter::add(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
                            Fill fill) {
  const DtypeInfo* info = find_dtype(dtype);
  if (!info) throw std::invalid_argument("SafetensorsWriter: unknown dtype '" + dtype + "'");
  for (const T& t : tensors_)
    if (t.name == name) throw std::invalid_argument("SafetensorsWriter: tensor '" + name + "' added twice");
  uint64_t bytes = uint64_t(info->bytes);
  for (int64_t d : shape) bytes *= uint64_t(d);
  tensors_.push_back({name, dtype, shape, offset_, offset_ + bytes, std::move(fill)});
  offset_ += bytes;
}

void SafetensorsWriter::write(const std::string& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}};
  for (const T& t : tensors_)
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot create " + path + ": " + std::strerror(errno));
  auto put = [&](const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f) != n) {
      std::fclose(f);
      throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
    }
  };
  const uint64_t n = text.size();
  put(&n, 8);
  put(text.data(), text.size());
  std::vector<uint8_t> buf;
  for (const T& t : tensors_) {
    buf.assign(size_t(t.end - t.begin), 0);
    t.fill(buf.data(), buf.size());
    put(buf.data(), buf.size());
  }
  if (std::fclose(f) != 0) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
}

}  // namespace sinkserve
