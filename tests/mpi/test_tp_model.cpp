// Tensor parallelism end to end: the model sharded over this job's ranks must stream the same
// greedy tokens as one unsharded rank, with the same logits and perplexity, while the sink cache
// evicts. Rank 0 also runs the unsharded model (a single-rank communicator) in-process as the
// reference. MODEL is a GGUF file or a checkpoint directory.
// Usage: test_tp_model MODEL TEXT SINK WINDOW GREEDY_TOKENS PPL_TOKENS [KV_TYPE]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "launcher/rank_guard.h"
#include "parallel/communicator_factory.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"
#include "runtime/stream.h"
#include "runtime/tokenizer.h"

using namespace sinkserve;

namespace {

// The model sharded over `comm`'s ranks, built the way the commands build it.
std::unique_ptr<Engine> open_shard(const std::string& path, Communicator& comm, const CacheConfig& cc) {
  EngineOptions o;
  o.model = path;
  o.threads = 1;
  o.policy = cc.policy;
  o.sink = cc.sink;
  o.window = cc.window;
  o.chunk = cc.chunk;
  o.kv_type = cc.kv_type;
  o.verify_every = 16;
  return open_engine(o, comm);
}

int argmax(const std::vector<float>& v) {
  int best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[size_t(best)]) best = int(i);
  return best;
}

double nll(const std::vector<float>& logits, int target) {
  double mx = logits[0], z = 0;
  for (float v : logits) mx = std::max(mx, double(v));
  for (float v : logits) z += std::exp(double(v) - mx);
  return std::log(z) + mx - logits[size_t(target)];
}

int fail(const std::string& what) {
  std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 7 && argc != 8) {
    std::fprintf(stderr, "usage: %s MODEL TEXT SINK WINDOW GREEDY_TOKENS PPL_TOKENS [KV_TYPE]\n", argv[0]);
    return 2;
  }
  const std::string model_path = argv[1], text_path = argv[2];
  CacheConfig cc;
  cc.policy = Policy::Sink;
  cc.sink = std::atoi(argv[3]);
  cc.window = std::atoi(argv[4]);
  cc.chunk = 64;
  cc.kv_type = argc == 8 ? parse_kv_type(argv[7]) : DType::F32;
  const int greedy_n = std::atoi(argv[5]), ppl_n = std::atoi(argv[6]);
  auto comm = make_communicator("auto");
  return run_ranked("test_tp_model", *comm, [&]() -> int {
    auto tp = open_shard(model_path, *comm, cc);
    if (comm->rank() != 0) {
      tp->lockstep->follow();  // greedy stream
      tp->lockstep->follow();  // perplexity stream
      tp->lockstep->follow();  // sampled stream
      return 0;
    }
    auto single = make_single_communicator();
    auto ref = open_shard(model_path, *single, cc);
    const GGUFFile& f = *ref->file;
    const int V = tp->model->config().vocab;
    std::printf("tp=%d model %s: vocab %d, weights read per token %lld of %lld bytes on rank 0\n",
                comm->size(), model_path.c_str(), V, (long long)tp->model->streamed_bytes(),
                (long long)ref->model->streamed_bytes());
    int status = 0;
    // Each rank reads only its shard, plus what every rank holds whole: the norms and biases (1-D
    // tensors, counted whole: an upper bound) and, with fewer KV heads than ranks, the one KV head
    // each rank keeps of its group.
    const ModelConfig& mc = ref->model->config();
    const int R = comm->size();
    double vectors = 0, ffn_bytes = 0;
    int64_t ffn_block = 1;
    for (const GGUFTensorInfo& t : f.tensors()) {
      if (t.ne.size() == 1) vectors += double(t.bytes);
      else if (t.name.find(".ffn_") != std::string::npos) ffn_bytes += double(t.bytes);
      if (t.name.find(".ffn_down.weight") != std::string::npos)
        ffn_block = std::max(ffn_block, dtype_block_values(t.type));
    }
    // The FFN splits on whole blocks of ffn_down's type; when they do not divide by the ranks,
    // rank 0 is one of those holding a block more.
    const int64_t ffn_blocks = mc.ffn / ffn_block;
    const double ffn_share = double((ffn_blocks + R - 1) / R * ffn_block) / mc.ffn;
    const double kv_rows = mc.n_kv_heads < R ? 2.0 * mc.n_layers * mc.head_dim * (1.0 - double(mc.n_kv_heads) / R) : 0;
    const double expected = (double(ref->model->streamed_bytes()) - vectors - ffn_bytes) / R + ffn_bytes * ffn_share + vectors +
                            kv_rows * double(dtype_row_bytes(f.tensor("token_embd.weight").type, mc.dim));
    const double share = double(tp->model->streamed_bytes()) / expected;
    if (std::fabs(share - 1.0) > 0.10)
      status = fail("rank 0 reads " + std::to_string(share) + " x its expected share (total/N + replicated)");

    const Tokenizer& tok = *ref->tokenizer;
    std::vector<float> a(static_cast<size_t>(V)), b(static_cast<size_t>(V));
    float worst = 0;
    {
      Stream s_tp(*tp->lockstep), s_ref(*ref->lockstep);
      int32_t t = tok.bos();
      for (int i = 0; i < greedy_n; ++i) {
        s_tp.feed({&t, 1}, a.data());
        s_ref.feed({&t, 1}, b.data());
        for (int j = 0; j < V; ++j) worst = std::max(worst, std::fabs(a[size_t(j)] - b[size_t(j)]));
        const int ta = argmax(a), tb = argmax(b);
        if (ta != tb) {
          status = fail("greedy token " + std::to_string(i) + " differs: tp " + std::to_string(ta) +
                        " vs single " + std::to_string(tb));
          break;
        }
        t = ta;
      }
    }
    tp->lockstep->finish();
    std::printf("greedy: %d tokens identical to tp=1, max |logit diff| %.3g\n", greedy_n, worst);
    // A key that the ranks' all-reduce sums within 1e-7 of the single rank's may still round to the
    // neighbouring value of a narrower cache type: then single logits move by about that type's
    // precision, while the tokens and the perplexity stay equal.
    const float tol = cc.kv_type == DType::F32 ? 1e-4f : cc.kv_type == DType::F16 ? 0.05f : 0.3f;
    if (worst > tol) status = fail("logits differ by more than " + std::to_string(tol));

    std::ifstream in(text_path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::vector<int32_t> ids = tok.encode(ss.str().substr(0, size_t(ppl_n) * 8), true);
    if (int(ids.size()) < ppl_n + 1) return fail("text too short for " + std::to_string(ppl_n) + " tokens");
    double sum_tp = 0, sum_ref = 0;
    {
      Stream s_tp(*tp->lockstep), s_ref(*ref->lockstep);
      for (int i = 0; i < ppl_n; ++i) {
        s_tp.feed({&ids[size_t(i)], 1}, a.data());
        s_ref.feed({&ids[size_t(i)], 1}, b.data());
        sum_tp += nll(a, ids[size_t(i + 1)]);
        sum_ref += nll(b, ids[size_t(i + 1)]);
      }
    }
    tp->lockstep->finish();

    // Tokens drawn on the backend from the gathered vocabulary slices, with every sampling
    // option on: the same draws as one rank.
    SamplingParams sp;
    sp.temperature = 0.9f;
    sp.top_k = 40;
    sp.top_p = 0.9f;
    sp.min_p = 0.02f;
    sp.repeat_penalty = 1.1f;
    sp.seed = 42;
    Sampler samp_tp(sp), samp_ref(sp);
    const int sampled_n = greedy_n / 4;
    {
      Stream s_tp(*tp->lockstep, SampleOn::Backend), s_ref(*ref->lockstep, SampleOn::Backend);
      int32_t t = tok.bos();
      for (int i = 0; i < sampled_n; ++i) {
        samp_tp.accept(t);
        samp_ref.accept(t);
        const int32_t ta = s_tp.feed_and_sample({&t, 1}, samp_tp), tb = s_ref.feed_and_sample({&t, 1}, samp_ref);
        if (ta != tb) {
          status = fail("sampled token " + std::to_string(i) + " differs: tp " + std::to_string(ta) +
                        " vs single " + std::to_string(tb));
          break;
        }
        t = ta;
      }
    }
    tp->lockstep->finish();
    std::printf("sampled on the backend: %d tokens identical to tp=1\n", sampled_n);
    const double ppl_tp = std::exp(sum_tp / ppl_n), ppl_ref = std::exp(sum_ref / ppl_n);
    std::printf("perplexity over %d tokens: tp %.6f, single %.6f, relative diff %.3g\n", ppl_n,
                ppl_tp, ppl_ref, std::fabs(ppl_tp / ppl_ref - 1));
    if (std::fabs(ppl_tp / ppl_ref - 1) > 1e-4) status = fail("perplexity differs by more than 1e-4 relative");
    std::printf(status ? "FAILED\n" : "PASSED\n");
    return status;
  });
}
