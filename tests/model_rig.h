// A single-rank model + cache + lockstep driver on the CPU backend, for tests.
#pragma once
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/gguf.h"
#include "runtime/llama_model.h"
#include "runtime/lockstep.h"
#include "runtime/stream.h"
#include "runtime/tokenizer.h"
#include "tests/fixtures.h"

namespace sinkserve::test {

struct Rig {
  std::unique_ptr<GGUFFile> file;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KVCache> cache;
  std::unique_ptr<Lockstep> ls;

  Rig(const std::string& path, const CacheConfig& cfg, int slots = 1, int threads = 1)
      : file(std::make_unique<GGUFFile>(path)),
        backend(make_cpu_backend(threads)),
        comm(make_single_communicator()),
        model(std::make_unique<LlamaModel>(*file, *backend, *comm)),
        cache(std::make_unique<KVCache>(*backend, model->config().n_layers, model->local_kv_dim(),
                                        cfg, slots)),
        ls(std::make_unique<Lockstep>(*model, *cache)) {}
  int vocab() const { return model->config().vocab; }
};

inline CacheConfig cache_config(Policy p, int sink, int window, int chunk = 64) {
  CacheConfig c;
  c.policy = p;
  c.sink = sink;
  c.window = window;
  c.chunk = chunk;
  return c;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The first n tokens of a real text (BOS first), repeated when the text is shorter.
inline std::vector<int32_t> text_tokens(const GGUFFile& f, const std::string& text_path, size_t n) {
  auto tok = load_tokenizer(f);
  std::vector<int32_t> ids = tok->encode(read_file(text_path).substr(0, n * 8 + 64), true);
  const size_t len = ids.size();
  for (size_t i = 0; ids.size() < n; ++i) ids.push_back(ids[1 + i % (len - 1)]);
  ids.resize(n);
  return ids;
}

}  // namespace sinkserve::test
