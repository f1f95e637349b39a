// `sinkserve synth`: a random-weight GGUF of any family in the architecture table and any size,
// for benchmarks and tests that need shapes of real models without their weights. Metadata keys
// and tensor names follow llama.cpp's converter; which tensors a family has comes from the table.
// Bytes depend only on the options and the seed. With --format hf the same model is written as a
// Hugging Face checkpoint directory (runtime/hf_checkpoint.h) instead.
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
#include "kernels/type_traits.h"
#include "runtime/arch.h"
#include "runtime/gguf.h"
#include "runtime/hf_checkpoint.h"

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
  if (const auto t = dtype_from_name(s)) return *t;
  std::string names;
  for (const TypeTraits& t : all_type_traits()) names += (names.empty() ? "" : ", ") + std::string(t.name);
  throw UsageError("--type must be one of " + names + ", got '" + s + "'");
}

// Llama-3.1's rope_freqs for a head of d rotated dimensions: scaling factor 8 below the low-frequency
// wavelength (original context 8192 / 1), 1 above the high one (8192 / 4), smoothly in between.
std::vector<float> llama3_rope_factors(int d, float base) {
  const double factor = 8, low = 1, high = 4, orig = 8192;
  std::vector<float> f;
  for (int i = 0; i < d / 2; ++i) {
    const double wavelen = 2 * M_PI * std::pow(double(base), 2.0 * i / d);
    if (wavelen < orig / high) f.push_back(1.0f);
    else if (wavelen > orig / low) f.push_back(float(factor));
    else {
      const double smooth = (orig / wavelen - low) / (high - low);
      f.push_back(float(1.0 / ((1 - smooth) / factor + smooth)));
    }
  }
  return f;
}

int run(int argc, char** argv) {
  std::string out, preset, type_name = "F32", tokenizer_from, arch = "llama", qkv_form, residual, format = "gguf";
  int dim = 64, layers = 2, heads = 4, kv_heads = 0, ffn = 192, vocab = 512, rot = -1;
  int64_t shard_mb = 2048;
  int64_t seed = 0, ctx = 2048;
  float clamp_kqv = 0;
  bool tied = false, biases = false, rope_freqs = false;
  ArgParser p("synth", "Writes a GGUF of any supported architecture with random weights (deterministic by seed).");
  p.add("-o,--out", "PATH", "output GGUF file (or checkpoint directory with --format hf)", &out, true)
      .add("--format", "F", "gguf, or hf: a Hugging Face checkpoint directory (config.json, safetensors, "
           "tokenizer.json) of the same model", &format)
      .add("--shard-mb", "N", "with --format hf: safetensors shards of at most N MiB (default 2048)", &shard_mb)
      .add("--preset", "NAME", "tinyllama or llama2-7b (shape options given override it)", &preset)
      .add("--arch", "A", "architecture: " + supported_archs() + " (default llama)", &arch)
      .add("--dim", "N", "embedding width (default 64)", &dim)
      .add("--layers", "N", "transformer blocks (default 2)", &layers)
      .add("--heads", "N", "attention heads (default 4)", &heads)
      .add("--kv-heads", "N", "key/value heads (default: --heads; falcon: 1 is the 7B style, more "
           "the 40B style with a second norm)", &kv_heads)
      .add("--ffn", "N", "feed-forward width (default 192)", &ffn)
      .add("--vocab", "N", "vocabulary size (default 512; >= 259 without --tokenizer-from)", &vocab)
      .add("--rot", "N", "rotated dimensions per head (rope.dimension_count; default: the family's "
           "usual share of the head)", &rot)
      .add("--qkv", "FORM", "fused (attn_qkv) or split (attn_q/k/v); default: the family's converter's",
           &qkv_form)
      .add("--biases", "", "also write the optional biases of the family (MPT, StableLM, ...)", &biases)
      .add("--residual", "KIND", "parallel or sequential, for families whose metadata says "
           "(gptneox, stablelm; default: the family's usual)", &residual)
      .add("--clamp-kqv", "C", "attention.clamp_kqv metadata (mpt)", &clamp_kqv)
      .add("--rope-freqs", "", "write Llama-3.1 style rope_freqs factors", &rope_freqs)
      .add("--type", "T", "matrix type: F32, F16, BF16, Q8_0, Q4_K, ... (default F32; norms and biases stay F32)",
           &type_name)
      .add("--seed", "N", "random seed (default 0)", &seed)
      .add("--tokenizer-from", "GGUF", "copy the tokenizer.* metadata of this file", &tokenizer_from)
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
  const ArchSpec* spec = find_arch(arch);
  if (!spec) throw UsageError("--arch must be one of " + supported_archs() + ", got '" + arch + "'");
  if (format != "gguf" && format != "hf") throw UsageError("--format must be gguf or hf, got '" + format + "'");
  const bool hf = format == "hf";
  if (hf && !spec->hf) throw UsageError("--format hf: sinkserve has no checkpoint layout for " + arch);
  if (hf && type != DType::F32 && type != DType::F16 && type != DType::BF16)
    throw UsageError("--format hf: safetensors checkpoints hold F32, F16 or BF16 weights, not " + type_name);
  if (shard_mb <= 0) throw UsageError("--shard-mb must be positive");
  for (auto [name, v] : {std::pair{"--dim", dim}, {"--layers", layers}, {"--heads", heads},
                         {"--kv-heads", kv_heads}, {"--ffn", ffn}, {"--vocab", vocab}})
    if (v <= 0) throw UsageError(std::string(name) + " must be positive, got " + std::to_string(v));
  if (ctx <= 0) throw UsageError("--ctx must be positive");
  if (dim % heads) throw UsageError("--heads " + std::to_string(heads) + " does not divide --dim " + std::to_string(dim));
  if (heads % kv_heads)
    throw UsageError("--kv-heads " + std::to_string(kv_heads) + " does not divide --heads " + std::to_string(heads));
  const int head_dim = dim / heads;
  if (head_dim % 2) throw UsageError("head dimension --dim/--heads = " + std::to_string(head_dim) + " must be even");
  if (const int64_t bv = dtype_block_values(type); dim % bv || ffn % bv)
    throw UsageError(std::string(dtype_name(type)) + " needs --dim and --ffn to be multiples of " + std::to_string(bv));
  const bool rope = spec->positions == Positions::Rope;
  if (rot < 0) {  // the family's usual rotary share
    const double share = arch == "phi2" ? 0.4 : (arch == "gptneox" || arch == "gptj" || arch == "stablelm") ? 0.25 : 1.0;
    rot = std::max(2, int(head_dim * share) / 2 * 2);
  }
  if (rope && (rot % 2 || rot > head_dim))
    throw UsageError("--rot " + std::to_string(rot) + " must be even and at most the head dimension " +
                     std::to_string(head_dim));
  if (!qkv_form.empty() && qkv_form != "fused" && qkv_form != "split")
    throw UsageError("--qkv must be fused or split, got '" + qkv_form + "'");
  if (clamp_kqv < 0) throw UsageError("--clamp-kqv must be positive");
  if (!residual.empty() && residual != "parallel" && residual != "sequential")
    throw UsageError("--residual must be parallel or sequential, got '" + residual + "'");
  if (!residual.empty() && !spec->parallel_key)
    throw UsageError("--residual: " + arch + " has a fixed block shape");
  const bool fused = qkv_form.empty() ? (arch == "gptneox" || arch == "falcon" || arch == "mpt" || arch == "phi2")
                                      : qkv_form == "fused";

  GGUFWriter w;
  w.set_string("general.architecture", arch);
  w.set_string("general.name", "sinkserve-synth " + std::string(dtype_name(type)) + " seed " + std::to_string(seed));
  w.set_u32("general.file_type", type_traits(type).file_type);
  w.set_u32(arch + ".context_length", uint32_t(std::min<int64_t>(ctx, UINT32_MAX)));
  w.set_u32(arch + ".embedding_length", uint32_t(dim));
  w.set_u32(arch + ".block_count", uint32_t(layers));
  w.set_u32(arch + ".feed_forward_length", uint32_t(ffn));
  w.set_u32(arch + ".attention.head_count", uint32_t(heads));
  w.set_u32(arch + ".attention.head_count_kv", uint32_t(kv_heads));
  const bool rms = spec->norm == NormKind::Rms;
  w.set_f32(arch + (rms ? ".attention.layer_norm_rms_epsilon" : ".attention.layer_norm_epsilon"),
            arch == "qwen2" ? 1e-6f : 1e-5f);
  if (rope) {
    w.set_u32(arch + ".rope.dimension_count", uint32_t(rot));
    w.set_f32(arch + ".rope.freq_base", arch == "qwen2" ? 1e6f : 1e4f);
  } else {
    w.set_f32(arch + ".attention.max_alibi_bias", 8.0f);
  }
  if (clamp_kqv > 0) w.set_f32(arch + ".attention.clamp_kqv", clamp_kqv);
  const bool parallel = residual.empty() ? spec->parallel : residual == "parallel";
  if (spec->parallel_key) w.set(arch + ".use_parallel_residual", {GGUFType::BOOL, parallel});

  if (!tokenizer_from.empty()) {
    const GGUFFile tok(tokenizer_from);
    for (const auto& [k, v] : tok.metadata())
      if (k.rfind("tokenizer.", 0) == 0) w.set(k, v);
    if (hf && tok.find_string("tokenizer.ggml.model").value_or("") != "llama")
      throw UsageError("--format hf writes SentencePiece-style vocabularies only; " + tokenizer_from + " has another");
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
  // unit variance; the embedding uses LLaMA's 0.02 init (the norms rescale it anyway). Norm
  // weights scatter around 1 and biases around 0, so that a norm or bias applied in the wrong place
  // changes the output.
  uint64_t seed_state = uint64_t(seed);
  const uint64_t base = splitmix64(seed_state);
  std::vector<ModelTensor> tensors;
  auto matrix = [&](const std::string& name, int64_t cols, int64_t rows, float sigma) {
    const uint64_t key = base ^ fnv1a(name);
    tensors.push_back({name, type, {cols, rows}, [=](uint8_t* dst, size_t) { fill_rows(dst, type, cols, rows, sigma, key); }});
  };
  auto vec = [&](const std::string& name, int64_t n, float mean, float sigma) {
    const uint64_t key = base ^ fnv1a(name);
    tensors.push_back({name, DType::F32, {n}, [=](uint8_t* dst, size_t) {
      fill_rows(dst, DType::F32, n, 1, sigma, key);
      for (int64_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, dst + 4 * i, 4);
        v += mean;
        std::memcpy(dst + 4 * i, &v, 4);
      }
    }});
  };
  auto norm = [&](const std::string& name) {
    vec(name + ".weight", dim, 1.0f, 0.1f);
    if (!rms) vec(name + ".bias", dim, 0.0f, 0.1f);
  };
  const uint32_t allowed = spec->required | spec->optional;
  using enum LayerTensor;
  // Families whose layers must have some bias (GPT-NeoX, Phi-2, ...) get all the biases they may
  // have; the others only what --biases asks for.
  const uint32_t bias_bits = bit(AttnQkvB) | bit(AttnQB) | bit(AttnKB) | bit(AttnVB) | bit(AttnOutB) |
                             bit(FfnUpB) | bit(FfnDownB);
  const bool all_biases = biases || (spec->required & bias_bits);
  auto want_bias = [&](LayerTensor t) {
    return (spec->required & bit(t)) || (all_biases && (allowed & bit(t)));
  };
  const float s_dim = 1.0f / std::sqrt(float(dim)), s_ffn = 1.0f / std::sqrt(float(ffn));
  const int64_t q_dim = int64_t(heads) * head_dim, kv_dim = int64_t(kv_heads) * head_dim;
  matrix("token_embd.weight", dim, vocab, 0.02f);
  norm("output_norm");
  if (!tied) {
    matrix("output.weight", dim, vocab, s_dim);
    if (spec->output_bias) vec("output.bias", vocab, 0.0f, 0.02f);
  }
  if (rope_freqs) {
    const std::vector<float> f = llama3_rope_factors(rot, arch == "qwen2" ? 1e6f : 1e4f);
    tensors.push_back({"rope_freqs.weight", DType::F32, {int64_t(f.size())},
                       [f](uint8_t* dst, size_t bytes) { std::memcpy(dst, f.data(), bytes); }});
  }
  for (int l = 0; l < layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    auto name = [&](LayerTensor t) { return b + std::string(layer_tensor_name(t)); };
    norm(b + "attn_norm");
    // Falcon-40B style (grouped KV) brings the MLP its own norm; a sequential block needs one.
    if ((allowed & bit(AttnNorm2)) && kv_heads > 1) norm(b + "attn_norm_2");
    else if ((spec->required & bit(FfnNorm)) || ((allowed & bit(FfnNorm)) && !parallel)) norm(b + "ffn_norm");
    if (fused) {
      matrix(name(AttnQkv), dim, q_dim + 2 * kv_dim, s_dim);
      if (want_bias(AttnQkvB)) vec(name(AttnQkvB), q_dim + 2 * kv_dim, 0.0f, 0.5f);
    } else {
      matrix(name(AttnQ), dim, q_dim, s_dim);
      matrix(name(AttnK), dim, kv_dim, s_dim);
      matrix(name(AttnV), dim, kv_dim, s_dim);
      if (want_bias(AttnQB) || want_bias(AttnQkvB)) {
        vec(name(AttnQB), q_dim, 0.0f, 0.5f);
        vec(name(AttnKB), kv_dim, 0.0f, 0.5f);
        vec(name(AttnVB), kv_dim, 0.0f, 0.5f);
      }
    }
    matrix(name(AttnOut), q_dim, dim, 1.0f / std::sqrt(float(q_dim)));
    if (want_bias(AttnOutB)) vec(name(AttnOutB), dim, 0.0f, 0.1f);
    if (spec->gated) matrix(name(FfnGate), dim, ffn, s_dim);
    matrix(name(FfnUp), dim, ffn, s_dim);
    if (want_bias(FfnUpB)) vec(name(FfnUpB), ffn, 0.0f, 0.1f);
    matrix(name(FfnDown), ffn, dim, s_ffn);
    if (want_bias(FfnDownB)) vec(name(FfnDownB), dim, 0.0f, 0.1f);
  }

  const auto t0 = std::chrono::steady_clock::now();
  uint64_t bytes = 0;
  if (hf) {
    const std::map<std::string, GGUFValue> kv(w.metadata().begin(), w.metadata().end());
    write_hf_checkpoint(out, kv, tensors, uint64_t(shard_mb) << 20);
    for (const auto& e : std::filesystem::directory_iterator(out)) bytes += std::filesystem::file_size(e.path());
  } else {
    for (ModelTensor& t : tensors) w.add_tensor(t.name, t.type, t.ne, std::move(t.fill));
    w.write(out);
    bytes = std::filesystem::file_size(out);
  }
  const double secs = seconds_since(t0);
  std::printf("wrote %s: %s, %d layers, dim %d, heads %d/%d, ffn %d, vocab %d, %s, %.2f GB in %.1f s\n",
              out.c_str(), arch.c_str(), layers, dim, heads, kv_heads, ffn, vocab,
              std::string(dtype_name(type)).c_str(), double(bytes) / 1e9, secs);
  return 0;
}

const RegisterCommand reg({"synth", "write a random-weight GGUF or checkpoint of any supported architecture (benchmarks, tests)", &run});

}  // namespace
}  // namespace sinkserve
