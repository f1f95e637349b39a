// A decoder-only transformer of any family in the architecture table (runtime/arch.h), written
// once against the Backend interface and sharded Megatron-style over the ranks of a Communicator.
// Its layers are the family's block (runtime/models/) built from the shared blocks.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "cache/kv_cache.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "runtime/blocks.h"
#include "runtime/linear.h"
#include "runtime/model_config.h"

namespace sinkserve {

class GGUFFile;

// One session's share of a forward step: `n` tokens appended to cache slot `slot`.
struct SeqStep {
  int slot = -1;
  const int32_t* tokens = nullptr;  // host memory
  int n = 0;
  bool all_logits = false;  // logits for every token, or only the last
};

class LlamaModel {
 public:
  // Loads this rank's shard of the weights of `f` (which must outlive the model). Throws
  // GGUFError / std::runtime_error naming the problem (missing tensor, shape that does not
  // divide by the number of ranks, ...).
  LlamaModel(const GGUFFile& f, Backend& backend, Communicator& comm);
  ~LlamaModel();

  const ModelConfig& config() const { return cfg_; }
  Communicator& comm() { return comm_; }
  // Width of one cache row on this rank (its KV heads x head_dim).
  int local_kv_dim() const { return shard_.n_kv * cfg_.head_dim; }
  // Bytes of weights this rank holds (or maps) for its shard.
  int64_t weight_bytes() const { return weight_bytes_; }
  // Bytes of weights this rank reads per forward step (every matrix once): the roofline's numerator.
  int64_t streamed_bytes() const { return streamed_bytes_; }

  // Runs one step on every rank in lockstep (all ranks pass the same steps). Appends the tokens
  // to their slots in `cache`. Its logits (full vocabulary) are one row per token for steps with
  // all_logits, else one row for the last token; they are copied to host memory `logits` unless
  // it is null, and when `specs` is given (one per row, on one rank or all) a token is drawn from
  // each row on the backend into host array `sampled`.
  void forward(KVCache& cache, std::span<const SeqStep> steps, float* logits,
               const SampleSpec* specs = nullptr, int32_t* sampled = nullptr);
  // Rows of logits forward() writes for these steps.
  static int64_t logit_rows(std::span<const SeqStep> steps);

 private:
  void ensure_scratch(int64_t n_tok, int64_t n_out);
  // Loads layer l's tensors, after checking that the layer has exactly the tensors its family
  // allows; kv_begin is this rank's first KV head.
  void split_ffn(const GGUFFile& f, int R, int r);
  LayerWeights load_layer(ShardLoader& ld, int l, int kv_begin);
  // The backend operations of a step planned in the scratch (T tokens, O logit rows), from the
  // embedding to this rank's logits; `shifted`: some query sees its sinks from another position.
  void run_layers(KVCache& cache, int64_t T, int64_t O, bool shifted);
  // Full logit rows from the ranks' slices, to the host and/or drawn on the backend.
  void gather_and_sample(int64_t O, float* logits, const SampleSpec* specs, int32_t* sampled);

  ModelConfig cfg_;
  Backend& backend_;
  Communicator& comm_;
  ShardShape shard_;
  int vocab_local_ = 0, vocab_begin_ = 0;
  int64_t ffn_begin_ = 0;  // this rank's first FFN unit
  int64_t weight_bytes_ = 0, streamed_bytes_ = 0;
  std::vector<void*> owned_;  // norm weights and biases, in backend memory
  std::vector<LayerWeights> layers_;
  Weight tok_embd_, output_;
  NormWeights output_norm_;
  std::vector<float> alibi_;  // this rank's heads' slopes (ALiBi models)
  struct Scratch;
  std::unique_ptr<Scratch> s_;
};

}  // namespace sinkserve
