// Saved sessions under tensor parallelism: a stream of this job's ranks is saved (rank 0 gathers
// every rank's rows into one file), restored into a fresh sharded model and cache (another slot,
// scattered back to the ranks), and continued: tokens and logits equal the uninterrupted stream's
// bit for bit, the window wrapped before and after the save. The same file offered to one rank
// (tp = 1) is refused as saved from another setup, and nothing is loaded.
// Usage: test_session_tp MODEL TEXT KV_TYPE
#include <unistd.h>

#include <algorithm>
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
    {
      Stream other(*b.ls);
      std::vector<float> row(static_cast<size_t>(V));
      other.feed(std::vector<int32_t>(ids.begin() + 100, ids.begin() + 190), row.data());
      const SessionSnapshot loaded = read_session_file(path);
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
    b.ls->finish();

    // One rank of the same model and cache is another setup: its rows would be the whole heads.
    auto single = make_single_communicator();
    Shard one(f, *single, cc, 1);
    SessionIO io_one(*one.ls, f);
    try {
      Stream s(*one.ls, io_one, read_session_file(path), path);
      status = fail("a tp=" + std::to_string(comm->size()) + " session restored at tp=1");
    } catch (const SessionFileError& e) {
      const std::string want_msg = "tensor-parallel size " + std::to_string(comm->size()) + " (this engine: 1)";
      if (std::string(e.what()).find(want_msg) == std::string::npos) status = fail(std::string("wrong refusal: ") + e.what());
      else std::printf("tp=1 refuses it: %s\n", e.what());
    }
    if (one.cache->free_slots() != 1) status = fail("the refused restore kept a slot");
    std::filesystem::remove(path);
    std::printf(status ? "FAILED\n" : "PASSED\n");
    return status;
  });
}
