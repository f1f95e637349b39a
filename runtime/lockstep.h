// Keeps every rank's model and cache in lockstep. Rank 0 (the leader) decides each step: cache
// slot operations and forward steps. Each decision is broadcast before it is carried out, and the
// other ranks (followers) replay them in order inside follow(). Eviction is a pure function of
// the operations, so identical replays give identical caches; every `verify_every` steps the
// ranks compare a hash of their cache metadata and abort together on a mismatch.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "cache/kv_cache.h"
#include "runtime/llama_model.h"

namespace sinkserve {

class Lockstep {
 public:
  Lockstep(LlamaModel& model, KVCache& cache, int verify_every = 64);
  bool leader() const { return model_.comm().rank() == 0; }
  // Calls `fn` on this rank before each forward step, with the step's index (from 0): the
  // launcher's failure injection hangs off it (launcher/fault_injection.h).
  void before_step(std::function<void(int64_t step)> fn) { before_step_ = std::move(fn); }
  LlamaModel& model() { return model_; }
  KVCache& cache() { return cache_; }

  // Leader only: each call runs on every rank.
  int acquire();  // -1 when no slot is free
  void release(int slot);
  void reset(int slot, int64_t offset = 0);
  // LlamaModel::forward on every rank; the logits and draws (either may be null) come to the leader.
  void step(std::span<const SeqStep> steps, float* logits, const SampleSpec* specs = nullptr,
            int32_t* sampled = nullptr);
  // A slot's state saved on every rank (KVCache::export_slot), gathered to the leader.
  struct SlotRows {
    int64_t tokens = 0, offset = 0;
    std::vector<int32_t> kv_dims;             // each rank's row width, in rank order
    std::vector<std::vector<uint8_t>> rows;   // each rank's rows, in rank order
  };
  SlotRows export_slot(int slot);
  // Restores `slot` (acquired) on every rank from rows in rank order, as export_slot gave them.
  // The ranks first compare the bytes each expects for `tokens` with what it would be given: on a
  // mismatch no rank imports anything and the reason comes back; empty when restored.
  std::string import_slot(int slot, int64_t tokens, int64_t offset,
                          const std::vector<std::vector<uint8_t>>& rows);
  // Ends follow() on the other ranks after a final consistency check. A second call with nothing
  // sent in between does nothing (the followers have already returned).
  void finish();

  // Followers: replay the leader's calls until finish(). Returns normally on finish.
  void follow();

 private:
  enum class Op : uint32_t { Acquire, Release, Reset, Step, Finish, Export, Import };
  struct Header {
    Op op;
    int32_t slot;
    int64_t arg;  // Reset: offset; Step: number of sequences
    int64_t n_tokens;
  };
  void send(const Header& h);
  void run_step(std::span<const SeqStep> steps, float* logits, const SampleSpec* specs,
                int32_t* sampled);
  void verify();
  // The collective parts of export_slot and import_slot, run by every rank.
  SlotRows run_export(int slot);
  std::string run_import(int slot, int64_t tokens, int64_t offset,
                         const std::vector<std::vector<uint8_t>>* rows);

  LlamaModel& model_;
  KVCache& cache_;
  int verify_every_;
  int64_t steps_ = 0;
  bool finished_ = false;
  std::function<void(int64_t)> before_step_;
};

}  // namespace sinkserve
