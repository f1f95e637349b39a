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
