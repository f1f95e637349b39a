// Each rank reads only its slices. Per rank and per source file (a GGUF, or each shard of a
// checkpoint), the bytes the loader read while it built the model must be this rank's share
// within 10%: its rows or columns of every sharded matrix (1/N of it), plus what every rank holds
// whole (norms, the embedding table every rank looks tokens up in, the KV heads each rank keeps
// when there are fewer than ranks) and the row-parallel biases rank 0 adds. The share is worked
// out here from the tensor list alone. The kernel's count of bytes this process read (rchar in
// /proc/self/io) must agree, so nothing else was read; a checkpoint's shards are not even mapped,
// so nothing can reach their bytes but these reads. Usage: test_load_slices MODEL
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "launcher/rank_guard.h"
#include "parallel/communicator_factory.h"
#include "runtime/hf_checkpoint.h"
#include "runtime/llama_model.h"
#include "runtime/mapped_file.h"

using namespace sinkserve;

namespace {

uint64_t rchar() {
  std::ifstream in("/proc/self/io");
  std::string key;
  uint64_t v = 0;
  while (in >> key >> v)
    if (key == "rchar:") return v;
  return 0;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The bytes of tensor t that rank r of R reads.
double share(const GGUFTensorInfo& t, const ModelConfig& c, int r, int R) {
  const double bytes = double(t.bytes);
  if (t.name == "rope_freqs.weight") return 0;  // read in place by the config, not loaded
  const bool norm = t.name.find("norm") != std::string::npos;
  if (norm) return bytes;  // every rank normalises the whole residual
  const int64_t vocab_local = (c.vocab + R - 1) / R;
  const double vocab_rows = double(std::max<int64_t>(0, std::min<int64_t>(c.vocab - int64_t(r) * vocab_local, vocab_local)));
  if (t.name == "token_embd.weight") return bytes * (1.0 + (c.tied_output ? vocab_rows / c.vocab : 0.0));
  if (t.name == "output.weight" || t.name == "output.bias") return bytes * vocab_rows / c.vocab;
  if (ends_with(t.name, "attn_output.bias") || ends_with(t.name, "ffn_down.bias")) return r == 0 ? bytes : 0;
  // This rank's KV heads: a 1/R share, or one head of its group when there are fewer heads than ranks.
  const double kv_share = c.n_kv_heads % R == 0 ? 1.0 / R : 1.0 / c.n_kv_heads;
  if (t.name.find("attn_k.") != std::string::npos || t.name.find("attn_v.") != std::string::npos) return bytes * kv_share;
  if (t.name.find("attn_qkv.") != std::string::npos) {
    const double q = double(c.n_heads), kv = double(c.n_kv_heads);
    return bytes * (q / R + 2 * kv * kv_share) / (q + 2 * kv);
  }
  return bytes / R;  // q, gate, up (rows) and attn_output, down (columns)
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  auto comm = make_communicator("auto");
  return run_ranked("test_load_slices", *comm, [&]() -> int {
    const int r = comm->rank(), R = comm->size();
    const auto f = open_model(path);
    const ModelConfig c = read_model_config(*f);
    const auto& sources = f->sources();
    std::vector<uint64_t> before;
    for (const auto& s : sources) before.push_back(s->bytes_read());
    const auto backend = make_cpu_backend(1);
    const uint64_t rchar0 = rchar();
    LlamaModel model(*f, *backend, *comm);
    const uint64_t rchar1 = rchar();

    std::vector<double> expected(sources.size(), 0), whole(sources.size(), 0);
    for (const GGUFTensorInfo& t : f->tensors()) {
      if (t.source < 0) continue;  // converted at open (BF16 norms), held in memory
      expected[size_t(t.source)] += share(t, c, r, R);
      whole[size_t(t.source)] += double(t.bytes);
    }
    int status = 0;
    uint64_t total = 0;
    std::string report;
    for (size_t s = 0; s < sources.size(); ++s) {
      const uint64_t got = sources[s]->bytes_read() - before[s];
      total += got;
      const double ratio = expected[s] > 0 ? double(got) / expected[s] : (got ? 1e9 : 1.0);
      char line[512];
      std::snprintf(line, sizeof line, "rank %d/%d %s: read %llu of %.0f bytes, expected share %.0f (x%.4f)\n", r, R,
                    sources[s]->path().c_str(), (unsigned long long)got, whole[s], expected[s], ratio);
      report += line;
      if (std::fabs(ratio - 1) > 0.10) status = 1;
    }
    // The process read (read/pread syscalls) what the loader counted, and little else: small
    // reads by the MPI runtime's own threads may fall in the window.
    const uint64_t sys = rchar1 - rchar0;
    char line[256];
    std::snprintf(line, sizeof line, "rank %d/%d: the kernel counted %llu bytes read, the loader %llu\n", r, R,
                  (unsigned long long)sys, (unsigned long long)total);
    report += line;
    if (sys < total || sys > total + (64 << 10)) status = 1;
    std::fputs(report.c_str(), stdout);
    if (status) std::fprintf(stderr, "FAIL: rank %d read more or less than its share\n", r);
    return status;
  });
}
