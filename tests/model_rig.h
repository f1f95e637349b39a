// A single-rank engine for tests, built by open_engine like the commands' engines, on the CPU
// backend unless given one; the model is a GGUF file or a checkpoint directory.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/engine.h"
#include "runtime/hf_checkpoint.h"
#include "runtime/stream.h"
#include "runtime/tokenizer.h"
#include "tests/cache_config.h"
#include "tests/fixtures.h"

namespace sinkserve::test {

// The engine options that give exactly this cache geometry. The model alone: tests load the
// tokenizer where they need one, and synthetic models have none.
inline EngineOptions engine_options(const std::string& path, const CacheConfig& cfg, int slots = 1,
                                    int threads = 1) {
  EngineOptions o;
  o.model = path;
  o.threads = threads;
  o.policy = cfg.policy;
  o.sink = cfg.sink;
  o.window = cfg.window;
  o.ctx = cfg.window;  // the dense policy's capacity
  o.chunk = cfg.chunk;
  o.kv_type = cfg.kv_type;
  o.slots = slots;
  o.load_tokenizer = false;
  return o;
}

struct Rig {
  std::unique_ptr<Communicator> comm = make_single_communicator();
  std::unique_ptr<Engine> engine;
  GGUFFile* file;
  Backend* backend;
  LlamaModel* model;
  KVCache* cache;
  Lockstep* ls;

  Rig(const EngineOptions& o, std::unique_ptr<Backend> b = nullptr)
      : engine(open_engine(o, *comm, std::move(b))),
        file(engine->file.get()),
        backend(engine->backend.get()),
        model(engine->model.get()),
        cache(engine->cache.get()),
        ls(engine->lockstep.get()) {}
  Rig(const std::string& path, const CacheConfig& cfg, std::unique_ptr<Backend> b, int slots = 1)
      : Rig(engine_options(path, cfg, slots), std::move(b)) {}
  // On the CPU backend with `threads` threads.
  Rig(const std::string& path, const CacheConfig& cfg, int slots = 1, int threads = 1)
      : Rig(engine_options(path, cfg, slots, threads)) {}
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
