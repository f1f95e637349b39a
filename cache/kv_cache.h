// The attention-sink KV cache: a fixed pool of session slots allocated once.
//
// Each slot keeps, per layer, the keys and values of the first `sink` tokens of its stream and of
// the most recent tokens in a ring. A query at stream position p (counted from the slot's start)
// attends to exactly:
//   sinks  = { j : j < sink, j <= p }
//   window = { j : max(sink, p - window + 1) <= j <= p }        (the current token included)
// whatever the stream's length and however the tokens were batched into steps. Eviction is the
// ring overwriting its oldest row: no data moves. The ring holds `window + chunk` rows so that a
// step appending up to `chunk` tokens never overwrites a key that an earlier token of the same
// step still attends to.
//
// Keys are stored rotated (RoPE) once, at their stream position. The window is then scored with
// the query rotated at its own stream position, and the sinks with the query rotated at its
// in-cache position: sink positions are 0..sink-1 and the window follows them, so the query sits
// at min(p, sink + window - 1). See docs/design.md for the derivation.
//
// The cache knows no model: it hands out rows and attention spans, and owns the K/V buffers.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace sinkserve {

enum class Policy { Sink, Window, Dense, Recompute };
Policy parse_policy(const std::string& s);  // throws std::invalid_argument naming the value
std::string policy_name(Policy p);
// "f32", "f16", "bf16" or "q8_0"; throws std::invalid_argument naming the value.
DType parse_kv_type(const std::string& s);

struct CacheConfig {
  Policy policy = Policy::Sink;
  int sink = 4;        // attention sinks (forced to 0 for window/dense/recompute)
  int window = 1020;   // recent tokens attended (dense: the context capacity)
  int chunk = 64;      // most tokens one step may append to a slot
  // How rows are stored (kv_type_supported). Exact F32 here; the commands default to F16.
  DType kv_type = DType::F32;
};

// Where one appended token goes and what it attends to.
struct TokenPlan {
  int64_t store_row = 0;  // row of the layer buffer receiving its K and V
  int64_t pos_win = 0;    // rotation of its key and of its window query (stream position)
  int64_t pos_sink = 0;   // rotation of its sink query (in-cache position)
  AttnSpan span;
};

class KVCache {
 public:
  // n_layers x n_slots x (sink + ring) rows of kv_dim values (stored as cfg.kv_type) for K and
  // for V, in `backend` memory. Throws std::invalid_argument for a type rows cannot be stored in,
  // and std::runtime_error, naming the sizes, before allocating anything when the pool would not
  // fit the memory available: the device's free memory, or the host's MemAvailable shared by
  // `host_sharers` processes that each allocate a pool like this one.
  KVCache(Backend& backend, int n_layers, int kv_dim, const CacheConfig& cfg, int n_slots,
          int host_sharers = 1);
  ~KVCache();
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  // Rows and bytes of one slot of a cache with this geometry (before building one).
  static int64_t slot_rows_for(const CacheConfig& cfg);
  static int64_t slot_bytes_for(const CacheConfig& cfg, int n_layers, int kv_dim);

  const CacheConfig& config() const { return cfg_; }
  int n_slots() const { return int(slots_.size()); }
  int n_layers() const { return n_layers_; }
  int kv_dim() const { return kv_dim_; }
  int64_t slot_rows() const { return cfg_.sink + ring_; }
  DType kv_type() const { return cfg_.kv_type; }
  // Bytes of one cached token: its K and V rows in every layer.
  int64_t token_bytes() const { return 2 * row_bytes_ * n_layers_; }

  // A free slot, reset to an empty stream; -1 when none is free.
  int acquire();
  void release(int slot);
  int free_slots() const;
  // Empties the slot's stream (keeps it acquired). `offset` is the stream position of its first
  // token: keys rotate by offset + p. Nonzero offsets exist to test position invariance.
  void reset(int slot, int64_t offset = 0);

  // Plans appending n tokens to the slot (n <= chunk for ring policies). Throws
  // std::length_error when a dense slot would exceed its capacity. Does not change state.
  void plan(int slot, int n, TokenPlan* out) const;
  // Records that n planned tokens were written.
  void commit(int slot, int n);

  int64_t stream_tokens(int slot) const;   // tokens ever appended since reset
  int64_t cached_tokens(int slot) const;   // tokens a next query would see (excluding itself)
  // The same for a stream of n tokens under cfg: the rows it holds, constant once n passes
  // sink + window.
  static int64_t cached_tokens_for(const CacheConfig& cfg, int64_t n);
  // Bytes of K/V memory holding live tokens of this slot, and of the whole pool as allocated.
  int64_t live_bytes(int slot) const;
  int64_t pool_bytes() const;
  // A hash of every slot's metadata: equal on every rank that evicted in lockstep.
  uint64_t metadata_hash() const;

  // A slot's state as bytes, to save a session and continue it in another cache (another
  // process) of the same geometry. The live rows of a stream of n tokens are those of its first
  // min(n, sink) tokens and of its last cached_tokens - min(n, sink), in stream order; per layer,
  // the K rows then the V rows, each as stored (kv_type). Rows are placed back by stream position,
  // so the importing cache may differ in chunk (ring size): the next query attends to the same
  // keys in the same order, which makes a restored stream continue bit-identically.
  int64_t slot_offset(int slot) const { return slots_.at(size_t(slot)).offset; }
  // Bytes of the rows a stream of n tokens keeps live (cached_tokens_for), as exported.
  int64_t export_bytes_for(int64_t n) const { return cached_tokens_for(cfg_, n) * token_bytes(); }
  // Writes export_bytes_for(stream_tokens(slot)) bytes to host memory `out`.
  void export_slot(int slot, uint8_t* out) const;
  // Makes `slot` (acquired) a stream of n tokens rotated from `offset`, its live rows read from
  // `in` (export_bytes_for(n) bytes). Throws std::invalid_argument, leaving the slot untouched,
  // for a recompute cache (it keeps no rows between steps) or a dense one too small for n.
  void import_slot(int slot, int64_t n, int64_t offset, const uint8_t* in);

  void* k(int layer) { return k_[layer]; }
  void* v(int layer) { return v_[layer]; }

 private:
  struct Slot {
    bool used = false;
    int64_t n = 0;       // stream tokens appended
    int64_t offset = 0;  // rotation offset of stream position 0
  };
  // Whether the slots keep a ring that wraps (sink, window); dense and recompute slots never wrap.
  bool ring() const { return cfg_.policy == Policy::Sink || cfg_.policy == Policy::Window; }
  // Row of the layer buffer holding stream position p of `slot`.
  int64_t row_of(int slot, int64_t p) const;
  // Calls f(first position, count) for the runs of consecutive live positions of a stream of n
  // tokens whose rows are consecutive too (at most three: sinks, and the ring split where it wraps).
  template <class F> void for_live_runs(int64_t n, F f) const;
  void release_buffers();
  Backend& backend_;
  CacheConfig cfg_;
  int n_layers_;
  int kv_dim_;
  int64_t row_bytes_;
  int ring_;
  std::vector<Slot> slots_;
  std::vector<void*> k_, v_;
};

}  // namespace sinkserve
