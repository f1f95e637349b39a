// Hand-assembled GGUF bytes, independent of GGUFWriter: the reference encoding the writer is
// checked against, and the way tests build corrupt files that no writer would produce.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace sinkserve::test {

struct GGUFBytes {
  std::string b;

  template <class T>
  GGUFBytes& pod(T v) {
    char tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    b.append(tmp, sizeof(T));
    return *this;
  }
  GGUFBytes& u32(uint32_t v) { return pod(v); }
  GGUFBytes& u64(uint64_t v) { return pod(v); }
  GGUFBytes& str(const std::string& s) {
    u64(s.size());
    b += s;
    return *this;
  }
  GGUFBytes& pad(size_t align) {
    while (b.size() % align) b.push_back('\0');
    return *this;
  }
  // "GGUF", version, tensor count, key count.
  static GGUFBytes header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    GGUFBytes g;
    g.b = "GGUF";
    g.u32(version).u64(n_tensors).u64(n_kv);
    return g;
  }
  GGUFBytes& kv_string(const std::string& key, const std::string& v) { return str(key).u32(8).str(v); }
  GGUFBytes& kv_u32(const std::string& key, uint32_t v) { return str(key).u32(4).u32(v); }
  GGUFBytes& tensor_info(const std::string& name, const std::vector<uint64_t>& ne, uint32_t ggml_type,
                         uint64_t offset) {
    str(name).u32(uint32_t(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(ggml_type).u64(offset);
  }
};

}  // namespace sinkserve::test
