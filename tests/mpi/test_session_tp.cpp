// Saved sessions under tensor parallelism: a stream of this job's ranks is saved (rank 0 gathers
// every rank's rows into one file), restored into a fresh sharded model and cache (another slot,
// scattered back to the ranks), and continued: tokens and logits equal the uninterrupted stream's
// bit for bit, the window wrapped before and after the save. One rank (tp = 1) restores the same
// file with its rows re-sharded and continues with the same tokens, and its capture moved back to
// this job's ranks gives the saved rows byte for byte; where rows cannot move without splitting a
// q8_0 block the file is refused and nothing is loaded.
// Usage: test_session_tp MODEL TEXT KV_TYPE
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "launcher/rank_guard.h"
#include "parallel/communicator_factory.h"
#include "runtime/hf_checkpoint.h"
#include "runtime/llama_model.h"
#include "runtime/lockstep.h"
#include "runtime/session_file.h"
#include "runtime/stream.h"
#include "runtime/tokenizer.h"

using namespace sinkserve;

namespace {

struct Shard {
  std::unique_ptr<Backend> backend = make_cpu_backend(1);
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<KVCache> cache;
  std::unique_ptr<Lockstep> ls;
  Shard(const GGUFFile& f, Communicator& comm, const CacheConfig& cc, int slots) {
    model = std::make_unique<LlamaModel>(f, *backend, comm);
    cache = std::make_unique<KVCache>(*backend, model->config().n_layers, model->local_kv_dim(), cc, slots);
    ls = std::make_unique<Lockstep>(*model, *cache, 16);
  }
};

int argmax(const float* row, int n) { return int(std::max_element(row, row + n) - row); }

struct Trace {
  std::vector<int32_t> tokens;
  std::vector<float> logits;
};

// Greedy decoding from `held`, a chunked prompt with every token's logits, greedy again.
Trace continue_stream(Stream& s, int V, int32_t held, const std::vector<int32_t>& prompt, int decode) {
  Trace t;
  std::vector<float> row(static_cast<size_t>(V));
  int32_t next = held;
  auto decode_n = [&] {
    for (int i = 0; i < decode; ++i) {
      s.feed({&next, 1}, row.data());
      t.logits.insert(t.logits.end(), row.begin(), row.end());
      next = argmax(row.data(), V);
      t.tokens.push_back(next);
    }
  };
  decode_n();
  std::vector<int32_t> feed = {next};
  feed.insert(feed.end(), prompt.begin(), prompt.end());
  std::vector<float> all(feed.size() * size_t(V));
  s.feed(feed, all.data(), true);
  t.logits.insert(t.logits.end(), all.begin(), all.end());
  next = argmax(all.data() + (feed.size() - 1) * size_t(V), V);
  t.tokens.push_back(next);
  decode_n();
  return t;
}

int fail(const std::string& what) {
  std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s MODEL TEXT KV_TYPE\n", argv[0]);
    return 2;
  }
  const std::string model_path = argv[1], text_path = argv[2];
  CacheConfig cc;
  cc.policy = Policy::Sink;
  cc.sink = 4;
  cc.window = 60;
  cc.chunk = 16;
  cc.kv_type = parse_kv_type(argv[3]);
  auto comm = make_communicator("auto");
  return run_ranked("test_session_tp", *comm, [&]() -> int {
    const auto opened = open_model(model_path);
    const GGUFFile& f = *opened;
    Shard a(f, *comm, cc, 1), b(f, *comm, cc, 2);
    if (comm->rank() != 0) {
      a.ls->follow();  // the uninterrupted stream, saved midway
      b.ls->follow();  // the restored stream
      return 0;
    }
    const int V = a.model->config().vocab;
    auto tok = load_tokenizer(f);
    std::string text = [&] {
      std::FILE* in = std::fopen(text_path.c_str(), "rb");
      if (!in) throw std::runtime_error("cannot open " + text_path);
      std::string s(32768, '\0');
      s.resize(std::fread(s.data(), 1, s.size(), in));
      std::fclose(in);
      return s;
    }();
    const std::vector<int32_t> ids = tok->encode(text, true);
    if (ids.size() < 400) return fail("text too short");
    const std::vector<int32_t> opening(ids.begin(), ids.begin() + 300);  // wraps the 80-row ring
    const std::vector<int32_t> later(ids.begin() + 300, ids.begin() + 350);
    const std::string path = (std::filesystem::temp_directory_path() /
                              ("sinkserve_session_tp_" + std::to_string(::getpid()) + ".session")).string();

    SessionIO io_a(*a.ls, f);
    Trace want;
    int32_t held = -1;
    {
      Stream s(*a.ls);
      std::vector<float> row(static_cast<size_t>(V));
      s.feed(opening, row.data());
      held = argmax(row.data(), V);
      const SessionSnapshot saved = io_a.capture(s.slot(), "tp", {held});
      if (int(saved.rows.size()) != comm->size()) return fail("rows of " + std::to_string(saved.rows.size()) + " ranks");
      for (size_t r = 0; r < saved.rows.size(); ++r)
        std::printf("rank %zu: row width %d, %zu bytes of rows\n", r, saved.kv_dims[r], saved.rows[r].size());
      write_session_file(path, saved);
      want = continue_stream(s, V, held, later, 12);
    }
    a.ls->finish();

    int status = 0;
    SessionIO io_b(*b.ls, f);
    const SessionSnapshot loaded = read_session_file(path);
    {
      Stream other(*b.ls);
      std::vector<float> row(static_cast<size_t>(V));
      other.feed(std::vector<int32_t>(ids.begin() + 100, ids.begin() + 190), row.data());
      Stream s(*b.ls, io_b, loaded, path);
      if (s.slot() != 1) status = fail("restored into slot " + std::to_string(s.slot()));
      const Trace got = continue_stream(s, V, loaded.held_tokens.at(0), later, 12);
      if (got.tokens != want.tokens) status = fail("restored tokens differ from the uninterrupted stream's");
      size_t differ = got.logits.size() == want.logits.size() ? 0 : got.logits.size() + 1;
      for (size_t i = 0; i < std::min(got.logits.size(), want.logits.size()); ++i)
        differ += std::memcmp(&got.logits[i], &want.logits[i], sizeof(float)) != 0;
      if (differ) status = fail(std::to_string(differ) + " of " + std::to_string(want.logits.size()) + " logits differ");
      std::printf("tp=%d: %zu tokens and %zu logits after the restore identical to the uninterrupted stream\n",
                  comm->size(), got.tokens.size(), got.logits.size());
    }

    // One rank restores the file (its rows re-sharded into whole heads) and continues as one rank
    // does: the tokens of the tp run, logits within the precision tp = N matches tp = 1 with.
    auto single = make_single_communicator();
    Shard one(f, *single, cc, 1);
    SessionIO io_one(*one.ls, f);
    // Each rank's row must be whole blocks of the cache type: a rank's heads move as one run.
    const int64_t block = dtype_block_values(cc.kv_type), head_dim = one.model->config().head_dim;
    if ((one.model->local_kv_dim() / comm->size()) % block) {
      try {
        Stream s(*one.ls, io_one, loaded, path);
        status = fail("rows of heads of " + std::to_string(head_dim) + " values moved in blocks of " + std::to_string(block));
      } catch (const SessionFileError& e) {
        std::printf("tp=1 refuses it: %s\n", e.what());
      }
      if (one.cache->free_slots() != 1) status = fail("the refused restore kept a slot");
    } else {
      SessionSnapshot at_one;
      {
        Stream s(*one.ls, io_one, loaded, path);
        at_one = io_one.capture(s.slot(), "tp", loaded.held_tokens);
        const Trace got = continue_stream(s, V, loaded.held_tokens.at(0), later, 12);
        float worst = 0;
        for (size_t i = 0; i < std::min(got.logits.size(), want.logits.size()); ++i)
          worst = std::max(worst, std::fabs(got.logits[i] - want.logits[i]));
        const float tol = cc.kv_type == DType::F32 ? 1e-4f : cc.kv_type == DType::F16 ? 0.05f : 0.3f;
        if (got.tokens != want.tokens) status = fail("tokens at tp=1 after the restore differ from the tp run's");
        if (!(worst <= tol)) status = fail("logits at tp=1 differ by " + std::to_string(worst));
        std::printf("tp=1 from the tp=%d file: %zu tokens equal, max |logit diff| %.3g\n", comm->size(),
                    got.tokens.size(), worst);
      }
      // Back to this job's ranks from the one rank's capture: the rows they saved, byte for byte.
      {
        Stream s(*b.ls, io_b, at_one, "the tp=1 capture");
        const SessionSnapshot again = io_b.capture(s.slot());
        if (again.rows != loaded.rows || again.kv_dims != loaded.kv_dims)
          status = fail("rows moved to tp=1 and back differ from the saved ones");
        else
          std::printf("rows moved tp=%d -> 1 -> %d: identical\n", comm->size(), comm->size());
      }
    }
    b.ls->finish();
    std::filesystem::remove(path);
    std::printf(status ? "FAILED\n" : "PASSED\n");
    return status;
  });
}
