// `sinkserve synth`: a random-weight llama-family GGUF of any size, for benchmarks and tests that
// need shapes of real models without their weights. Bytes depend only on the options and the seed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "launcher/args.h"
#include "launcher/command.h"
#include "launcher/measure.h"
#include "runtime/gguf.h"

namespace sinkserve {
namespace {

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Each row has its own stream keyed by (seed, tensor, row), so rows fill in parallel and the
// bytes do not depend on the thread count. Values are triangular (sum of two uniforms) with
// standard deviation sigma: bounded, zero-mean, close enough to normal for random weights.
void fill_rows(uint8_t* dst, DType type, int64_t cols, int64_t rows, float sigma, uint64_t key) {
  const int64_t row_bytes = dtype_row_bytes(type, cols);
  const float scale = sigma * std::sqrt(6.0f) / float(1 << 24);
  auto work = [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      uint64_t s = key ^ (uint64_t(r) * 0xd1b54a32d192ed03ull);
      splitmix64(s);
      for (int64_t c = 0; c < cols; ++c) {
        const uint64_t x = splitmix64(s);
        const int64_t u = int64_t(x >> 40) + int64_t((x >> 16) & 0xffffff) - (int64_t(1) << 24);
        row[size_t(c)] = float(u) * scale;
      }
      quantize_row(type, row.data(), dst + r * row_bytes, cols);
    }
  };
  const int64_t n_threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 16);
  const int64_t chunk = (rows + n_threads - 1) / n_threads;
  if (rows * cols < (1 << 16) || n_threads == 1) return work(0, rows);
  std::vector<std::thread> pool;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) pool.emplace_back(work, r0, std::min(rows, r0 + chunk));
  for (auto& t : pool) t.join();
}

GGUFValue str_value(std::string s) { return {GGUFType::STRING, std::move(s)}; }

// A self-contained SentencePiece-style vocabulary: the three specials, the 256 byte-fallback
// tokens, then word-like filler pieces so that text sampled from random weights is readable.
void add_byte_vocab(GGUFWriter& w, int vocab) {
  GGUFArray tokens{GGUFType::STRING, {}}, scores{GGUFType::FLOAT32, {}}, types{GGUFType::INT32, {}};
  auto add = [&](std::string piece, double score, int64_t type) {
    tokens.items.push_back(str_value(std::move(piece)));
    scores.items.push_back({GGUFType::FLOAT32, score});
    types.items.push_back({GGUFType::INT32, type});
  };
  // Token types as llama.cpp numbers them: 1 normal, 2 unknown, 3 control, 6 byte.
  add("<unk>", 0, 2);
  add("<s>", 0, 3);
  add("</s>", 0, 3);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    add(name, 0, 6);
  }
  for (int i = 0; int(tokens.items.size()) < vocab; ++i) {
    std::string word;
    for (int n = i;; n = n / 26 - 1) {
      word.insert(word.begin(), char('a' + n % 26));
      if (n < 26) break;
    }
    add("\xe2\x96\x81" + word, -double(i + 1), 1);  // U+2581 marks a word start
  }
  w.set_string("tokenizer.ggml.model", "llama");
  w.set("tokenizer.ggml.tokens", {GGUFType::ARRAY, std::move(tokens)});
  w.set("tokenizer.ggml.scores", {GGUFType::ARRAY, std::move(scores)});
  w.set("tokenizer.ggml.token_type", {GGUFType::ARRAY, std::move(types)});
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
}

DType parse_type(const std::string& s) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0})
    if (s == dtype_name(t)) return t;
  throw UsageError("--type must be F32, F16, BF16 or Q8_0, got '" + s + "'");
}

uint32_t file_type(DType t) {  // llama.cpp's general.file_type (LLAMA_FTYPE_*)
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q8_0: return 7;
    case DType::BF16: return 32;
  }
  return 0;
}

int run(int argc, char** argv) {
  std::string out, preset, type_name = "F32", tokenizer_from, arch = "llama";
  int dim = 64, layers = 2, heads = 4, kv_heads = 0, ffn = 192, vocab = 512;
  int64_t seed = 0, ctx = 2048;
  bool tied = false;
  ArgParser p("synth", "Writes a llama-family GGUF with random weights (deterministic by seed).");
  p.add("-o,--out", "FILE", "output GGUF path", &out, true)
      .add("--preset", "NAME", "tinyllama or llama2-7b (shape options given override it)", &preset)
      .add("--dim", "N", "embedding width (default 64)", &dim)
      .add("--layers", "N", "transformer blocks (default 2)", &layers)
      .add("--heads", "N", "attention heads (default 4)", &heads)
      .add("--kv-heads", "N", "key/value heads (default: --heads)", &kv_heads)
      .add("--ffn", "N", "feed-forward width (default 192)", &ffn)
      .add("--vocab", "N", "vocabulary size (default 512; >= 259 without --tokenizer-from)", &vocab)
      .add("--type", "T", "matrix type: F32, F16, BF16 or Q8_0 (default F32; norms stay F32)", &type_name)
      .add("--seed", "N", "random seed (default 0)", &seed)
      .add("--tokenizer-from", "GGUF", "copy the tokenizer.* metadata of this file", &tokenizer_from)
      .add("--arch", "A", "llama, mistral or qwen2 (qwen2 adds q/k/v biases; default llama)", &arch)
      .add("--ctx", "N", "context_length metadata (default 2048)", &ctx)
      .add("--tied", "", "no output.weight: the embedding doubles as the output head", &tied);
  if (!p.parse(argc, argv)) return 0;

  if (!preset.empty()) {
    struct Shape { int dim, layers, heads, kv_heads, ffn, vocab; };
    Shape s;
    if (preset == "tinyllama") s = {2048, 22, 32, 4, 5632, 32000};
    else if (preset == "llama2-7b") s = {4096, 32, 32, 32, 11008, 32000};
    else throw UsageError("--preset must be tinyllama or llama2-7b, got '" + preset + "'");
    if (!p.given("--dim")) dim = s.dim;
    if (!p.given("--layers")) layers = s.layers;
    if (!p.given("--heads")) heads = s.heads;
    if (!p.given("--kv-heads")) kv_heads = s.kv_heads;
    if (!p.given("--ffn")) ffn = s.ffn;
    if (!p.given("--vocab")) vocab = s.vocab;
  }
  if (!p.given("--kv-heads") && kv_heads == 0) kv_heads = heads;
  const DType type = parse_type(type_name);
  if (arch != "llama" && arch != "mistral" && arch != "qwen2")
    throw UsageError("--arch must be llama, mistral or qwen2, got '" + arch + "'");
  for (auto [name, v] : {std::pair{"--dim", dim}, {"--layers", layers}, {"--heads", heads},
                         {"--kv-heads", kv_heads}, {"--ffn", ffn}, {"--vocab", vocab}})
    if (v <= 0) throw UsageError(std::string(name) + " must be positive, got " + std::to_string(v));
  if (ctx <= 0) throw UsageError("--ctx must be positive");
  if (dim % heads) throw UsageError("--heads " + std::to_string(heads) + " does not divide --dim " + std::to_string(dim));
  if (heads % kv_heads)
    throw UsageError("--kv-heads " + std::to_string(kv_heads) + " does not divide --heads " + std::to_string(heads));
  const int head_dim = dim / heads;
  if (head_dim % 2) throw UsageError("head dimension --dim/--heads = " + std::to_string(head_dim) + " must be even");
  if (type == DType::Q8_0 && (dim % kQ8Block || ffn % kQ8Block))
    throw UsageError("Q8_0 needs --dim and --ffn to be multiples of 32");

  GGUFWriter w;
  w.set_string("general.architecture", arch);
  w.set_string("general.name", "sinkserve-synth " + std::string(dtype_name(type)) + " seed " + std::to_string(seed));
  w.set_u32("general.file_type", file_type(type));
  w.set_u32(arch + ".context_length", uint32_t(std::min<int64_t>(ctx, UINT32_MAX)));
  w.set_u32(arch + ".embedding_length", uint32_t(dim));
  w.set_u32(arch + ".block_count", uint32_t(layers));
  w.set_u32(arch + ".feed_forward_length", uint32_t(ffn));
  w.set_u32(arch + ".attention.head_count", uint32_t(heads));
  w.set_u32(arch + ".attention.head_count_kv", uint32_t(kv_heads));
  w.set_u32(arch + ".rope.dimension_count", uint32_t(head_dim));
  w.set_f32(arch + ".attention.layer_norm_rms_epsilon", arch == "qwen2" ? 1e-6f : 1e-5f);
  w.set_f32(arch + ".rope.freq_base", arch == "qwen2" ? 1e6f : 1e4f);

  if (!tokenizer_from.empty()) {
    const GGUFFile tok(tokenizer_from);
    for (const auto& [k, v] : tok.metadata())
      if (k.rfind("tokenizer.", 0) == 0) w.set(k, v);
    const int n = int(tok.get_array("tokenizer.ggml.tokens").items.size());
    if (p.given("--vocab") && vocab != n)
      throw UsageError("--vocab " + std::to_string(vocab) + " contradicts the " + std::to_string(n) +
                       " tokens of " + tokenizer_from);
    vocab = n;
  } else {
    if (vocab < 259) throw UsageError("--vocab must be at least 259 (3 specials + 256 bytes) without --tokenizer-from");
    add_byte_vocab(w, vocab);
  }

  // Projections get sigma = 1/sqrt(fan_in) so that each layer maps unit-variance activations to
  // unit variance; the embedding uses LLaMA's 0.02 init (the RMSNorms rescale it anyway).
  uint64_t seed_state = uint64_t(seed);
  const uint64_t base = splitmix64(seed_state);
  auto matrix = [&](const std::string& name, int64_t cols, int64_t rows, float sigma) {
    const uint64_t key = base ^ fnv1a(name);
    w.add_tensor(name, type, {cols, rows}, [=](uint8_t* dst, size_t) { fill_rows(dst, type, cols, rows, sigma, key); });
  };
  auto ones = [&](const std::string& name, int64_t n) {
    w.add_tensor(name, DType::F32, {n}, [](uint8_t* dst, size_t bytes) {
      const float one = 1.0f;
      for (size_t i = 0; i < bytes; i += 4) std::memcpy(dst + i, &one, 4);
    });
  };
  auto bias = [&](const std::string& name, int64_t n) {
    const uint64_t key = base ^ fnv1a(name);
    w.add_tensor(name, DType::F32, {n}, [=](uint8_t* dst, size_t) { fill_rows(dst, DType::F32, n, 1, 0.02f, key); });
  };
  const float s_dim = 1.0f / std::sqrt(float(dim)), s_ffn = 1.0f / std::sqrt(float(ffn));
  const int64_t q_dim = int64_t(heads) * head_dim, kv_dim = int64_t(kv_heads) * head_dim;
  matrix("token_embd.weight", dim, vocab, 0.02f);
  ones("output_norm.weight", dim);
  if (!tied) matrix("output.weight", dim, vocab, s_dim);
  for (int l = 0; l < layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    ones(b + "attn_norm.weight", dim);
    matrix(b + "attn_q.weight", dim, q_dim, s_dim);
    matrix(b + "attn_k.weight", dim, kv_dim, s_dim);
    matrix(b + "attn_v.weight", dim, kv_dim, s_dim);
    if (arch == "qwen2") {
      bias(b + "attn_q.bias", q_dim);
      bias(b + "attn_k.bias", kv_dim);
      bias(b + "attn_v.bias", kv_dim);
    }
    matrix(b + "attn_output.weight", q_dim, dim, 1.0f / std::sqrt(float(q_dim)));
    ones(b + "ffn_norm.weight", dim);
    matrix(b + "ffn_gate.weight", dim, ffn, s_dim);
    matrix(b + "ffn_up.weight", dim, ffn, s_dim);
    matrix(b + "ffn_down.weight", ffn, dim, s_ffn);
  }

  const auto t0 = std::chrono::steady_clock::now();
  w.write(out);
  const double secs = seconds_since(t0);
  std::printf("wrote %s: %s, %d layers, dim %d, heads %d/%d, ffn %d, vocab %d, %s, %.2f GB in %.1f s\n",
              out.c_str(), arch.c_str(), layers, dim, heads, kv_heads, ffn, vocab,
              std::string(dtype_name(type)).c_str(), double(std::filesystem::file_size(out)) / 1e9, secs);
  return 0;
}

const RegisterCommand reg({"synth", "write a random-weight llama-family GGUF (benchmarks, tests)", &run});

}  // namespace
}  // namespace sinkserve
