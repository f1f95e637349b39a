// Everything one rank needs to run a model: communicator, weights, backend, tokenizer, the cache
// slot pool and the lockstep driver, built from one set of options.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "cache/kv_cache.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "runtime/chat_template.h"
#include "runtime/gguf.h"
#include "runtime/llama_model.h"
#include "runtime/lockstep.h"
#include "runtime/sampler.h"
#include "runtime/tokenizer.h"

namespace sinkserve {

struct EngineOptions {
  std::string model;
  std::string device = "cpu";  // cpu or cuda
  int threads = 0;             // CPU worker threads, 0 = one per core
  bool bf16_prefill = false;   // CPU prompt GEMMs in BF16 (AVX512_BF16): ~1.5x faster, ~3 digits
  // Where tokens are drawn: "backend" (the logits never leave the device), "host" (the logits are
  // copied out; on the CPU this reproduces llama2.c's draws), or "auto": backend on CUDA, else host.
  std::string sampler = "auto";
  Policy policy = Policy::Sink;
  int sink = 4;
  int window = 0;    // 0: the model's training context minus the sinks (at most 4096)
  int chunk = 64;    // tokens per prefill step and slot
  int64_t ctx = 0;   // dense/recompute capacity; 0: the training context (dense) or window
  DType kv_type = DType::F16;  // how cache rows are stored
  int slots = 1;
  // When positive, the slot pool takes as many slots as fit in these bytes of KV memory per rank
  // (instead of `slots`); open_engine fails when not one fits.
  int64_t kv_memory = 0;
  bool allow_unknown_pretokenizer = false;  // TokenizerOptions
  bool load_tokenizer = true;  // false: a bare model (tokenizer stays null), e.g. a synthetic file
  int verify_every = 64;       // forward steps between the ranks' cache consistency checks
};

struct Engine {
  Communicator* comm = nullptr;
  std::unique_ptr<GGUFFile> file;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<KVCache> cache;
  std::unique_ptr<Lockstep> lockstep;
  SampleOn sample_on = SampleOn::Host;  // where streams draw tokens (--sampler)
  bool leader() const { return comm->rank() == 0; }
};

// The one place an engine is built, for the commands and the tests alike. The communicator comes
// first (it initialises MPI under mpirun) so that every later failure can end the whole job; it
// must outlive the engine: a failure handler (run_ranked) still needs it after the engine is gone.
// `backend` null: the one the options name (make_engine_backend).
std::unique_ptr<Engine> open_engine(const EngineOptions& o, Communicator& comm,
                                    std::unique_ptr<Backend> backend = nullptr);
// The backend --device and --threads ask for, for a model file of `model_bytes`.
std::unique_ptr<Backend> make_engine_backend(const EngineOptions& o, size_t model_bytes);

// How this model formats a conversation: `forced` when given, else the family recognised from the
// GGUF's tokenizer.chat_template (raw when none fits).
ChatTemplate model_chat_template(const Engine& e, std::optional<ChatTemplate> forced = std::nullopt);
// Whether a conversation in this format opens with BOS: the GGUF's tokenizer.ggml.add_bos_token
// when present, else the format's convention. `chat` and `serve` both decide here, so that they
// encode a conversation to the same tokens.
bool chat_opens_with_bos(const Engine& e, ChatTemplate t);

// The cache geometry the options describe for this model (resolving the defaults).
CacheConfig resolve_cache_config(const EngineOptions& o, const ModelConfig& m);

}  // namespace sinkserve
