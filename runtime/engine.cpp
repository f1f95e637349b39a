#include "runtime/engine.h"

#include <algorithm>
#include <stdexcept>

#include "kernels/cpu/cpu_backend.h"
#include "parallel/communicator_factory.h"
#include "runtime/hf_checkpoint.h"

namespace sinkserve {

CacheConfig resolve_cache_config(const EngineOptions& o, const ModelConfig& m) {
  CacheConfig c;
  c.policy = o.policy;
  c.chunk = o.chunk;
  c.kv_type = o.kv_type;
  const int64_t train = m.ctx_train > 0 ? m.ctx_train : 2048;
  switch (o.policy) {
    case Policy::Sink:
    case Policy::Window:
      c.sink = o.policy == Policy::Sink ? o.sink : 0;
      c.window = o.window > 0 ? o.window : int(std::min<int64_t>(train, 4096) - c.sink);
      break;
    case Policy::Dense:
      c.sink = 0;
      c.window = int(o.ctx > 0 ? o.ctx : train);
      break;
    case Policy::Recompute:
      c.sink = 0;
      c.window = o.window > 0 ? o.window : int(std::min<int64_t>(train, 4096));
      break;
  }
  if (c.window < 1)
    throw std::invalid_argument("--sink " + std::to_string(c.sink) + " leaves no room for a window in the " +
                                std::to_string(train) + "-token training context; give --window");
  return c;
}

std::unique_ptr<Backend> make_engine_backend(const EngineOptions& o, size_t model_bytes) {
  // A model of a few MB runs a whole token in well under a millisecond: waking workers would
  // cost more than they save, so "one thread per core" means one thread for it.
  const int threads = o.threads == 0 && model_bytes < (size_t(16) << 20) ? 1 : o.threads;
  if (o.device == "cpu") return cpu::make_cpu_backend(threads, cpu::best_isa(), o.bf16_prefill);
  if (o.device == "cuda") return make_cuda_backend(node_local_rank() % std::max(1, cuda_device_count()));
  throw std::invalid_argument("unknown device '" + o.device + "' (expected cpu or cuda)");
}

std::unique_ptr<Engine> open_engine(const EngineOptions& o, Communicator& comm,
                                    std::unique_ptr<Backend> backend) {
  auto e = std::make_unique<Engine>();
  e->comm = &comm;
  e->file = open_model(o.model);
  e->backend = backend ? std::move(backend) : make_engine_backend(o, e->file->file_size());
  e->model = std::make_unique<LlamaModel>(*e->file, *e->backend, *e->comm);
  if (o.load_tokenizer)
    e->tokenizer = load_tokenizer(*e->file, {.allow_unknown_pretokenizer = o.allow_unknown_pretokenizer});
  const CacheConfig cc = resolve_cache_config(o, e->model->config());
  int slots = o.slots;
  if (o.kv_memory > 0) {
    const int64_t slot_bytes = KVCache::slot_bytes_for(cc, e->model->config().n_layers, e->model->local_kv_dim());
    const int64_t fit = o.kv_memory / slot_bytes;
    if (fit < 1)
      throw std::invalid_argument("--kv-memory " + std::to_string(o.kv_memory) + " bytes holds no slot: one slot of " +
                                  std::to_string(KVCache::slot_rows_for(cc)) + " rows takes " +
                                  std::to_string(slot_bytes) + " bytes per rank");
    slots = int(std::min<int64_t>(fit, 1 << 20));
  }
  e->cache = std::make_unique<KVCache>(*e->backend, e->model->config().n_layers,
                                       e->model->local_kv_dim(), cc, slots, node_local_size());
  if (o.sampler != "auto" && o.sampler != "host" && o.sampler != "backend")
    throw std::invalid_argument("unknown sampler '" + o.sampler + "' (expected auto, host or backend)");
  const bool on_backend = o.sampler == "backend" || (o.sampler == "auto" && o.device == "cuda");
  e->sample_on = on_backend ? SampleOn::Backend : SampleOn::Host;
  e->lockstep = std::make_unique<Lockstep>(*e->model, *e->cache, o.verify_every);
  return e;
}

ChatTemplate model_chat_template(const Engine& e, std::optional<ChatTemplate> forced) {
  return forced ? *forced : detect_chat_template(e.file->find_string("tokenizer.chat_template").value_or(""));
}

bool chat_opens_with_bos(const Engine& e, ChatTemplate t) {
  if (e.tokenizer->bos() < 0) return false;
  return e.file->find_bool("tokenizer.ggml.add_bos_token").value_or(chat_template_adds_bos(t));
}

}  // namespace sinkserve
