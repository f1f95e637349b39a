// `sinkserve inspect`: what a GGUF file or a checkpoint directory holds, without loading any
// weights.
#include <cinttypes>
#include <cstdio>
#include <map>
#include <string>

#include "launcher/args.h"
#include "launcher/command.h"
#include "runtime/hf_checkpoint.h"
#include "runtime/model_config.h"

namespace sinkserve {
namespace {

std::string human_bytes(uint64_t b) {
  char buf[64];
  if (b >= (uint64_t(1) << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(1 << 30));
  else if (b >= (uint64_t(1) << 20)) std::snprintf(buf, sizeof buf, "%.2f MiB", double(b) / double(1 << 20));
  else if (b >= 1024) std::snprintf(buf, sizeof buf, "%.2f KiB", double(b) / 1024.0);
  else std::snprintf(buf, sizeof buf, "%" PRIu64 " B", b);
  return buf;
}

// A token's text for display, with control characters escaped.
std::string token_text(const GGUFFile& f, int64_t id) {
  const GGUFValue* toks = f.find("tokenizer.ggml.tokens");
  if (!toks || toks->type != GGUFType::ARRAY) return "";
  const auto& items = std::get<GGUFArray>(toks->v).items;
  if (id < 0 || id >= int64_t(items.size()) || items[size_t(id)].type != GGUFType::STRING) return "";
  std::string out;
  for (unsigned char ch : std::get<std::string>(items[size_t(id)].v)) {
    if (ch < 0x20 || ch == 0x7f) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\x%02x", ch);
      out += esc;
    } else {
      out += char(ch);
    }
  }
  return " '" + out + "'";
}

void print_tokenizer(const GGUFFile& f) {
  const auto model = f.find_string("tokenizer.ggml.model");
  if (!model) {
    std::printf("tokenizer:      none in the file\n");
    return;
  }
  const GGUFValue* toks = f.find("tokenizer.ggml.tokens");
  const size_t n = toks && toks->type == GGUFType::ARRAY ? std::get<GGUFArray>(toks->v).items.size() : 0;
  std::printf("tokenizer:      %s, %zu tokens\n", model->c_str(), n);
  for (const char* which : {"bos", "eos"}) {
    const auto id = f.find_int(std::string("tokenizer.ggml.") + which + "_token_id");
    if (id) std::printf("  %s:           %" PRId64 "%s\n", which, *id, token_text(f, *id).c_str());
    else std::printf("  %s:           none\n", which);
  }
  const auto tmpl = f.find_string("tokenizer.chat_template");
  std::printf("  chat template: %s\n", tmpl ? ("yes (" + std::to_string(tmpl->size()) + " chars)").c_str() : "no");
}

void print_config(const ModelConfig& c) {
  const ArchSpec& a = *c.spec;
  std::printf("architecture:   %s%s\n", c.arch.c_str(), c.name.empty() ? "" : (" (" + c.name + ")").c_str());
  std::printf("  layers %d, dim %d, heads %d, kv heads %d, head dim %d, ffn %d, vocab %d\n", c.n_layers,
              c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn, c.vocab);
  std::printf("  %s (eps %g), %s%s, %s residual\n", a.norm == NormKind::Rms ? "RMSNorm" : "LayerNorm",
              double(c.norm_eps), std::string(activation_name(a.act)).c_str(), a.gated ? " gated" : "",
              c.parallel_residual ? "parallel" : "sequential");
  if (a.positions == Positions::Alibi) {
    std::printf("  positions ALiBi (max bias %g)", double(c.alibi_bias_max));
  } else {
    std::printf("  positions RoPE %s over %d of %d dims, base %g, scale %g%s", c.rope.neox ? "neox" : "normal",
                c.rope.rotated(c.head_dim), c.head_dim, double(c.rope.freq_base), double(c.rope.freq_scale),
                c.rope.freq_factors.empty() ? "" : ", rope_freqs factors");
  }
  if (c.clamp_kqv > 0) std::printf(", clamp_kqv %g", double(c.clamp_kqv));
  std::printf("\n  context (trained) %" PRId64 ", output head %s", c.ctx_train,
              c.tied_output ? "tied to token_embd" : "separate");
  if (c.sliding_window) std::printf(", sliding window %" PRId64 " (not enforced)", c.sliding_window);
  // What a session costs: the default sink cache (4 sinks, the rest of the trained context up to
  // 4096 as the window, 64 rows of prefill chunk) in each storage type.
  const int64_t window = std::min<int64_t>(c.ctx_train, 4096) - 4, rows = 4 + window + 64;
  std::printf("\n  KV cache per token / per slot of 4 + %" PRId64 " (+64 chunk rows):", window);
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0}) {
    if ((int64_t(c.n_kv_heads) * c.head_dim) % dtype_block_values(t)) continue;
    const int64_t b = kv_token_bytes(c, t);
    std::printf(" %s %s / %s;", std::string(dtype_name(t)).c_str(), human_bytes(uint64_t(b)).c_str(),
                human_bytes(uint64_t(b * rows)).c_str());
  }
  std::printf("\n");
}

int run(int argc, char** argv) {
  std::string model;
  bool tensors = false;
  ArgParser p("inspect", "Prints a model's format, hyper-parameters, tokenizer and weight sizes.");
  p.add("-m,--model", "PATH", "GGUF model file, or Hugging Face checkpoint directory", &model, true)
      .add("--tensors", "", "also list every tensor (name, type, shape, bytes)", &tensors);
  if (!p.parse(argc, argv)) return 0;

  const auto opened = open_model(model);
  const GGUFFile& f = *opened;
  if (f.format() == ModelFormat::HfCheckpoint) {
    std::printf("checkpoint:     %s (%s in %zu safetensors file%s), Hugging Face layout\n", f.path().c_str(),
                human_bytes(f.file_size()).c_str(), f.sources().size(), f.sources().size() == 1 ? "" : "s");
  } else {
    std::printf("file:           %s (%s), GGUF v%u, alignment %" PRIu64 ", %zu metadata keys\n",
                f.path().c_str(), human_bytes(f.file_size()).c_str(), f.version(), f.alignment(),
                f.metadata().size());
  }
  if (!f.tensors().empty()) print_config(read_model_config(f));
  else std::printf("architecture:   %s (vocabulary-only file, no tensors)\n",
                   f.find_string("general.architecture").value_or("unknown").c_str());
  print_tokenizer(f);

  std::map<std::string, std::pair<int, uint64_t>> by_type;
  uint64_t total = 0;
  for (const GGUFTensorInfo& t : f.tensors()) {
    auto& e = by_type[std::string(dtype_name(t.type))];
    ++e.first;
    e.second += t.bytes;
    total += t.bytes;
  }
  std::printf("weights:        %zu tensors, %s\n", f.tensors().size(), human_bytes(total).c_str());
  for (const auto& [type, e] : by_type)
    std::printf("  %-5s %4d tensors %12s\n", type.c_str(), e.first, human_bytes(e.second).c_str());

  if (tensors) {
    std::printf("\n%-40s %-5s %-24s %14s\n", "tensor", "type", "shape (ne0 first)", "bytes");
    for (const GGUFTensorInfo& t : f.tensors()) {
      std::string shape;
      for (size_t i = 0; i < t.ne.size(); ++i) shape += (i ? " x " : "") + std::to_string(t.ne[i]);
      std::printf("%-40s %-5s %-24s %14" PRIu64 "%s%s\n", t.name.c_str(), std::string(dtype_name(t.type)).c_str(),
                  shape.c_str(), t.bytes, t.origin.empty() ? "" : "  ", t.origin.c_str());
    }
  }
  return 0;
}

const RegisterCommand reg({"inspect", "show a model's metadata, hyper-parameters and tensors", &run});

}  // namespace
}  // namespace sinkserve
