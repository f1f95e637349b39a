// A single-rank model + cache + lockstep driver for tests, on the CPU backend unless given one;
// the model is a GGUF file or a checkpoint directory.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/gguf.h"
#include "runtime/hf_checkpoint.h"
#include "runtime/llama_model.h"
#include "runtime/lockstep.h"
#include "runtime/stream.h"
#include "runtime/tokenizer.h"
#include "tests/cache_config.h"
#include "tests/fixtures.h"

namespace sinkserve::test {

struct Rig {
  std::unique_ptr<GGUFFile> file;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KVCache> cache;
  std::unique_ptr<Lockstep> ls;

  Rig(const std::string& path, const CacheConfig& cfg, std::unique_ptr<Backend> b, int slots = 1)
      : file(open_model(path)),
        backend(std::move(b)),
        comm(make_single_communicator()),
        model(std::make_unique<LlamaModel>(*file, *backend, *comm)),
        cache(std::make_unique<KVCache>(*backend, model->config().n_layers, model->local_kv_dim(),
                                        cfg, slots)),
        ls(std::make_unique<Lockstep>(*model, *cache)) {}
  // On the CPU backend with `threads` threads.
  Rig(const std::string& path, const CacheConfig& cfg, int slots = 1, int threads = 1)
      : Rig(path, cfg, make_cpu_backend(threads), slots) {}
  int vocab() const { return model->config().vocab; }
};

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
