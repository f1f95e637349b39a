#include "runtime/lockstep.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "parallel/lockstep.h"

namespace sinkserve {

Lockstep::Lockstep(LlamaModel& model, KVCache& cache, int verify_every)
    : model_(model), cache_(cache), verify_every_(verify_every) {}

void Lockstep::send(const Header& h) {
  if (model_.comm().size() == 1) return;
  finished_ = false;
  Header copy = h;
  model_.comm().broadcast(&copy, sizeof copy, 0);
}

int Lockstep::acquire() {
  send({Op::Acquire, -1, 0, 0});
  return cache_.acquire();
}

void Lockstep::release(int slot) {
  send({Op::Release, slot, 0, 0});
  cache_.release(slot);
}

void Lockstep::reset(int slot, int64_t offset) {
  send({Op::Reset, slot, offset, 0});
  cache_.reset(slot, offset);
}

void Lockstep::step(std::span<const SeqStep> steps, float* logits, const SampleSpec* specs,
                    int32_t* sampled) {
  if (model_.comm().size() > 1) {
    // The step travels as: header, then (slot, n, all_logits) per sequence, then all tokens.
    int64_t n_tokens = 0;
    std::vector<int32_t> meta;
    for (const SeqStep& s : steps) {
      meta.insert(meta.end(), {s.slot, s.n, s.all_logits ? 1 : 0});
      n_tokens += s.n;
    }
    std::vector<int32_t> tokens;
    tokens.reserve(size_t(n_tokens));
    for (const SeqStep& s : steps) tokens.insert(tokens.end(), s.tokens, s.tokens + s.n);
    send({Op::Step, -1, int64_t(steps.size()), n_tokens});
    model_.comm().broadcast(meta.data(), meta.size() * sizeof(int32_t), 0);
    model_.comm().broadcast(tokens.data(), tokens.size() * sizeof(int32_t), 0);
  }
  run_step(steps, logits, specs, sampled);
}

void Lockstep::run_step(std::span<const SeqStep> steps, float* logits, const SampleSpec* specs,
                        int32_t* sampled) {
  if (before_step_) before_step_(steps_);
  model_.forward(cache_, steps, logits, specs, sampled);
  if (++steps_ % verify_every_ == 0) verify();
}

Lockstep::SlotRows Lockstep::export_slot(int slot) {
  send({Op::Export, slot, 0, 0});
  return run_export(slot);
}

std::string Lockstep::import_slot(int slot, int64_t tokens, int64_t offset,
                                  const std::vector<std::vector<uint8_t>>& rows) {
  const int P = model_.comm().size();
  if (int(rows.size()) != P)
    return "rows of " + std::to_string(rows.size()) + " ranks for a group of " + std::to_string(P);
  send({Op::Import, slot, tokens, offset});
  return run_import(slot, tokens, offset, &rows);
}

// Sessions are bounded (sink + window rows), so the rows travel by broadcast, the one host-memory
// collective every communicator has: rank r's rows from root r, rank 0 keeping them.
Lockstep::SlotRows Lockstep::run_export(int slot) {
  Communicator& comm = model_.comm();
  const int P = comm.size(), me = comm.rank();
  SlotRows out;
  out.tokens = cache_.stream_tokens(slot);
  out.offset = cache_.slot_offset(slot);
  std::vector<uint8_t> mine(size_t(cache_.export_bytes_for(out.tokens)));
  cache_.export_slot(slot, mine.data());
  std::vector<uint64_t> info(2 * size_t(P), 0);
  info[2 * size_t(me)] = uint64_t(cache_.kv_dim());
  info[2 * size_t(me) + 1] = mine.size();
  if (P > 1) comm.all_reduce_sum_u64(info.data(), info.size());
  out.rows.resize(size_t(P));
  for (int r = 0; r < P; ++r) {
    out.kv_dims.push_back(int32_t(info[2 * size_t(r)]));
    std::vector<uint8_t>& buf = out.rows[size_t(r)];
    if (r == me) buf = std::move(mine);
    else buf.resize(size_t(info[2 * size_t(r) + 1]));
    if (r != 0 && !buf.empty()) comm.broadcast(buf.data(), buf.size(), r);
  }
  if (me != 0) out.rows.clear();
  return out;
}

std::string Lockstep::run_import(int slot, int64_t tokens, int64_t offset,
                                 const std::vector<std::vector<uint8_t>>* rows) {
  Communicator& comm = model_.comm();
  const int P = comm.size(), me = comm.rank();
  std::vector<uint64_t> expect(size_t(P), 0);
  expect[size_t(me)] = uint64_t(cache_.export_bytes_for(tokens));
  if (P > 1) comm.all_reduce_sum_u64(expect.data(), expect.size());
  std::string why;
  if (me == 0)
    for (int r = 0; r < P && why.empty(); ++r)
      if ((*rows)[size_t(r)].size() != expect[size_t(r)])
        why = "rank " + std::to_string(r) + " keeps " + std::to_string(expect[size_t(r)]) + " bytes of rows for " +
              std::to_string(tokens) + " tokens, the saved rows are " + std::to_string((*rows)[size_t(r)].size());
  uint64_t go = why.empty() ? 1 : 0;
  if (P > 1) comm.broadcast(&go, sizeof go, 0);
  if (!go) return why;
  std::vector<uint8_t> buf;
  for (int r = 1; r < P; ++r) {
    if (expect[size_t(r)] == 0) continue;
    if (me == 0) {
      comm.broadcast(const_cast<uint8_t*>((*rows)[size_t(r)].data()), expect[size_t(r)], 0);
    } else {
      std::vector<uint8_t> section(size_t(expect[size_t(r)]));
      comm.broadcast(section.data(), section.size(), 0);
      if (r == me) buf = std::move(section);
    }
  }
  cache_.import_slot(slot, tokens, offset, me == 0 ? (*rows)[0].data() : buf.data());
  return {};
}

void Lockstep::verify() {
  if (model_.comm().size() > 1) verify_lockstep(model_.comm(), cache_.metadata_hash(), "KV cache metadata");
}

void Lockstep::finish() {
  if (model_.comm().size() == 1 || finished_) return;
  send({Op::Finish, -1, 0, 0});
  finished_ = true;
  verify();
}

void Lockstep::follow() {
  Communicator& comm = model_.comm();
  for (;;) {
    Header h{};
    comm.broadcast(&h, sizeof h, 0);
    switch (h.op) {
      case Op::Acquire: cache_.acquire(); break;
      case Op::Release: cache_.release(h.slot); break;
      case Op::Reset: cache_.reset(h.slot, h.arg); break;
      case Op::Finish: verify(); return;
      case Op::Export: run_export(h.slot); break;
      case Op::Import: run_import(h.slot, h.arg, h.n_tokens, nullptr); break;
      case Op::Step: {
        std::vector<int32_t> meta(size_t(h.arg) * 3), tokens(size_t(h.n_tokens));
        comm.broadcast(meta.data(), meta.size() * sizeof(int32_t), 0);
        comm.broadcast(tokens.data(), tokens.size() * sizeof(int32_t), 0);
        std::vector<SeqStep> steps(size_t(h.arg));
        const int32_t* tok = tokens.data();
        for (size_t i = 0; i < steps.size(); ++i) {
          steps[i] = SeqStep{meta[3 * i], tok, meta[3 * i + 1], meta[3 * i + 2] != 0};
          tok += steps[i].n;
        }
        run_step(steps, nullptr, nullptr, nullptr);  // only the leader needs the results
        break;
      }
      default: throw std::runtime_error("lockstep: unknown operation from rank 0");
    }
  }
}

}  // namespace sinkserve
