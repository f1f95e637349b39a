#include "cache/kv_cache.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <new>
#include <stdexcept>

namespace sinkserve {

Policy parse_policy(const std::string& s) {
  if (s == "sink") return Policy::Sink;
  if (s == "window") return Policy::Window;
  if (s == "dense") return Policy::Dense;
  if (s == "recompute") return Policy::Recompute;
  throw std::invalid_argument("unknown cache policy '" + s +
                              "' (expected sink, window, dense or recompute)");
}

std::string policy_name(Policy p) {
  switch (p) {
    case Policy::Sink: return "sink";
    case Policy::Window: return "window";
    case Policy::Dense: return "dense";
    case Policy::Recompute: return "recompute";
  }
  return "?";
}

DType parse_kv_type(const std::string& s) {
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  if (s == "q8_0") return DType::Q8_0;
  if (s == "fp8")
    throw std::invalid_argument("fp8 KV storage is not implemented (expected f32, f16, bf16 or q8_0)");
  throw std::invalid_argument("unknown KV cache type '" + s + "' (expected f32, f16, bf16 or q8_0)");
}

namespace {

// /proc/meminfo's MemAvailable in bytes; -1 where it cannot be read.
int64_t host_memory_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return -1;
}

std::string gib(long double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3Lg GiB", bytes / (1024.0L * 1024 * 1024));
  return buf;
}

}  // namespace

KVCache::KVCache(Backend& backend, int n_layers, int kv_dim, const CacheConfig& cfg, int n_slots,
                 int host_sharers)
    : backend_(backend), cfg_(cfg), n_layers_(n_layers), kv_dim_(kv_dim),
      row_bytes_(dtype_row_bytes(cfg.kv_type, kv_dim)) {
  if (!kv_type_supported(cfg_.kv_type))
    throw std::invalid_argument("cache: rows cannot be stored as " + std::string(dtype_name(cfg_.kv_type)) +
                                " (f32, f16, bf16 or q8_0)");
  if (kv_dim % dtype_block_values(cfg_.kv_type))
    throw std::invalid_argument("cache: " + std::string(dtype_name(cfg_.kv_type)) + " stores rows in blocks of " +
                                std::to_string(dtype_block_values(cfg_.kv_type)) + " values, but this rank's rows hold " +
                                std::to_string(kv_dim) + " (K/V heads x head dimension)");
  if (cfg_.policy != Policy::Sink) cfg_.sink = 0;
  if (cfg_.sink < 0 || cfg_.window < 1 || cfg_.chunk < 1 || n_slots < 1 || n_layers < 1 ||
      kv_dim < 1)
    throw std::invalid_argument("cache: need sink >= 0, window >= 1, chunk >= 1, slots >= 1");
  if (slot_rows_for(cfg_) > INT32_MAX)
    throw std::invalid_argument("cache: sink + window + chunk must stay below 2^31 rows");
  ring_ = int(slot_rows_for(cfg_) - cfg_.sink);
  // Checked before anything is allocated, the slot table included, in a type that cannot
  // overflow. A tenth of what is available stays free for activations and everything else.
  const long double layer_bytes = (long double)n_slots * (long double)slot_rows() * (long double)row_bytes_;
  const long double need = layer_bytes * 2 * n_layers + (long double)n_slots * sizeof(Slot);
  const int64_t device = backend_.memory_available();
  const bool on_host = device < 0;
  const int sharers = on_host ? std::max(1, host_sharers) : 1;
  const int64_t avail = on_host ? host_memory_available() : device;
  if (avail >= 0 && need * sharers > 0.9L * (long double)avail)
    throw std::runtime_error(
        "cache: " + std::to_string(n_slots) + " slots x " + std::to_string(slot_rows()) + " rows x " +
        std::to_string(n_layers) + " layers need " + gib(need) + " of KV memory" +
        (sharers > 1 ? " per process (" + std::to_string(sharers) + " on this host)" : std::string()) +
        ", but " + gib((long double)avail) + " is available (" +
        (on_host ? "host MemAvailable" : backend_.name() + " free memory") +
        ", of which 90% may hold the cache): lower --sessions, --kv-memory, --window or --ctx");
  slots_.resize(size_t(n_slots));
  const size_t bytes = size_t(layer_bytes);
  try {
    for (int l = 0; l < n_layers; ++l) {
      // Not zeroed on purpose: rows are always written before they are read, and untouched pages
      // of a large dense cache stay unresident until the stream reaches them.
      k_.push_back(backend_.alloc(bytes));
      v_.push_back(backend_.alloc(bytes));
    }
  } catch (const std::bad_alloc&) {
    release_buffers();
    throw std::runtime_error("cache: cannot allocate " + std::to_string(n_slots) + " slots x " +
                             std::to_string(slot_rows()) + " rows x " + std::to_string(n_layers) +
                             " layers (" + std::to_string(double(bytes) * 2 * n_layers / double(1 << 30)) +
                             " GiB): lower --window, --ctx or the number of sessions");
  }
}

int64_t KVCache::slot_rows_for(const CacheConfig& cfg) {
  // Dense and recompute slots never wrap: they hold at most `window` tokens.
  const bool ring = cfg.policy == Policy::Sink || cfg.policy == Policy::Window;
  return (cfg.policy == Policy::Sink ? cfg.sink : 0) + int64_t(cfg.window) + (ring ? cfg.chunk : 0);
}

int64_t KVCache::slot_bytes_for(const CacheConfig& cfg, int n_layers, int kv_dim) {
  return slot_rows_for(cfg) * 2 * n_layers * dtype_row_bytes(cfg.kv_type, kv_dim);
}

KVCache::~KVCache() { release_buffers(); }

void KVCache::release_buffers() {
  for (void* p : k_) backend_.release(p);
  for (void* p : v_) backend_.release(p);
}

int KVCache::acquire() {
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i].used) {
      slots_[i] = Slot{true, 0, 0};
      return int(i);
    }
  }
  return -1;
}

void KVCache::release(int slot) { slots_.at(size_t(slot)).used = false; }

int KVCache::free_slots() const {
  return int(std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return !s.used; }));
}

void KVCache::reset(int slot, int64_t offset) {
  Slot& s = slots_.at(size_t(slot));
  s.n = 0;
  s.offset = offset;
}

void KVCache::plan(int slot, int n, TokenPlan* out) const {
  const Slot& s = slots_.at(size_t(slot));
  if (ring() && n > cfg_.chunk)
    throw std::invalid_argument("cache: a step may append at most " + std::to_string(cfg_.chunk) +
                                " tokens to a slot, got " + std::to_string(n));
  if (!ring() && s.n + n > cfg_.window)
    throw std::length_error("cache: the " + policy_name(cfg_.policy) + " policy holds at most " +
                            std::to_string(cfg_.window) + " tokens (context full at " +
                            std::to_string(s.n) + " + " + std::to_string(n) + ")");
  const int64_t S = cfg_.sink, W = cfg_.window, R = ring_;
  const int64_t row0 = int64_t(slot) * slot_rows();
  for (int i = 0; i < n; ++i) {
    const int64_t p = s.n + i;
    TokenPlan& t = out[i];
    t.store_row = row_of(slot, p);
    t.pos_win = s.offset + p;
    t.pos_sink = s.offset + std::min(p, S + W - 1);
    const int64_t first_win = std::max(S, p - W + 1);
    t.span.row0 = row0;
    t.span.sink_rows = int32_t(S);
    t.span.n_sink = int32_t(std::min(S, p + 1));
    t.span.ring_size = int32_t(R);
    t.span.win_begin = int32_t(p >= S ? (first_win - S) % R : 0);
    t.span.n_win = int32_t(p >= S ? p - first_win + 1 : 0);
  }
}

void KVCache::commit(int slot, int n) { slots_.at(size_t(slot)).n += n; }

int64_t KVCache::stream_tokens(int slot) const { return slots_.at(size_t(slot)).n; }

int64_t KVCache::cached_tokens(int slot) const { return cached_tokens_for(cfg_, stream_tokens(slot)); }

int64_t KVCache::cached_tokens_for(const CacheConfig& cfg, int64_t n) {
  const int64_t S = cfg.sink;
  return std::min<int64_t>(n, S) + std::min<int64_t>(std::max<int64_t>(n - S, 0), cfg.window);
}

int64_t KVCache::live_bytes(int slot) const {
  return cached_tokens(slot) * token_bytes();
}

int64_t KVCache::pool_bytes() const {
  return int64_t(slots_.size()) * slot_rows() * token_bytes();
}

int64_t KVCache::row_of(int slot, int64_t p) const {
  const int64_t S = cfg_.sink;
  return int64_t(slot) * slot_rows() + (p < S ? p : S + (p - S) % ring_);
}

template <class F>
void KVCache::for_live_runs(int64_t n, F f) const {
  const int64_t S = cfg_.sink;
  const int64_t sinks = std::min(n, S);
  if (sinks > 0) f(int64_t(0), sinks);
  int64_t p = std::max(S, n - std::min<int64_t>(std::max<int64_t>(n - S, 0), cfg_.window));
  while (p < n) {
    // Up to the ring's end: the row after the last ring row is the first ring row again.
    const int64_t to_wrap = ring_ - (p - S) % ring_;
    const int64_t run = std::min(n - p, to_wrap);
    f(p, run);
    p += run;
  }
}

void KVCache::export_slot(int slot, uint8_t* out) const {
  const int64_t n = stream_tokens(slot);
  for (int l = 0; l < n_layers_; ++l)
    for (const std::vector<void*>* buf : {&k_, &v_}) {
      const uint8_t* base = static_cast<const uint8_t*>((*buf)[size_t(l)]);
      for_live_runs(n, [&](int64_t p, int64_t count) {
        backend_.to_host(out, base + row_of(slot, p) * row_bytes_, size_t(count * row_bytes_));
        out += count * row_bytes_;
      });
    }
}

void KVCache::import_slot(int slot, int64_t n, int64_t offset, const uint8_t* in) {
  if (cfg_.policy == Policy::Recompute)
    throw std::invalid_argument("cache: the recompute policy keeps no rows between steps to restore");
  if (n < 0 || (!ring() && n > cfg_.window))
    throw std::invalid_argument("cache: a stream of " + std::to_string(n) + " tokens does not fit a " +
                                policy_name(cfg_.policy) + " slot of " + std::to_string(cfg_.window) + " tokens");
  Slot& s = slots_.at(size_t(slot));
  for (int l = 0; l < n_layers_; ++l)
    for (std::vector<void*>* buf : {&k_, &v_}) {
      uint8_t* base = static_cast<uint8_t*>((*buf)[size_t(l)]);
      for_live_runs(n, [&](int64_t p, int64_t count) {
        backend_.to_device(base + row_of(slot, p) * row_bytes_, in, size_t(count * row_bytes_));
        in += count * row_bytes_;
      });
    }
  s.n = n;
  s.offset = offset;
}

uint64_t KVCache::metadata_hash() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  auto mix = [&h](uint64_t x) {
    for (int i = 0; i < 8; ++i) {
      h ^= (x >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  mix(uint64_t(cfg_.sink));
  mix(uint64_t(ring_));
  mix(uint64_t(cfg_.kv_type));
  for (const Slot& s : slots_) {
    mix(s.used);
    mix(uint64_t(s.n));
    mix(uint64_t(s.offset));
  }
  return h;
}

}  // namespace sinkserve
