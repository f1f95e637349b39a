// `sinkserve quantize IN.gguf OUT.gguf TYPE`: an F32/F16/BF16 model rewritten with quantized
// matrices, a pure type or a llama-quantize style K-quant mixture (runtime/quantize.h).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "launcher/args.h"
#include "launcher/command.h"
#include "launcher/measure.h"
#include "runtime/quantize.h"

namespace sinkserve {
namespace {

std::string shape(const std::vector<int64_t>& ne) {
  std::string s;
  for (int64_t d : ne) s += (s.empty() ? "" : " x ") + std::to_string(d);
  return s;
}

int run(int argc, char** argv) {
  std::vector<std::string> names;
  for (const std::string& n : quant_target_names()) names.push_back(n);
  std::string list;
  for (const std::string& n : names) list += (list.empty() ? "" : ", ") + n;

  // IN, OUT and TYPE are positional; everything else goes to the option parser.
  std::vector<char*> opts = {argv[0]};
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    const bool takes_value = !std::strcmp(argv[i], "-t") || !std::strcmp(argv[i], "--threads");
    if (argv[i][0] == '-' && argv[i][1] != '\0') {
      opts.push_back(argv[i]);
      if (takes_value && i + 1 < argc) opts.push_back(argv[++i]);
    } else {
      pos.emplace_back(argv[i]);
    }
  }
  QuantizeOptions o;
  ArgParser p("quantize IN.gguf OUT.gguf TYPE",
              "Writes OUT.gguf: the F32/F16/BF16 model IN.gguf with its matrices quantized to TYPE, one of " + list +
                  ". The K-quant mixtures (Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q2_K) give the output head, attn_v, "
                  "ffn_down and attn_output more bits as llama-quantize does; rows that are not whole blocks fall "
                  "back to a 32-value type (or F16). Norms and biases stay F32; metadata is copied.");
  p.add("-t,--threads", "N", "threads (default: one per core)", &o.threads)
      .add("--pure", "", "every matrix the base type: no mixture rules, no Q6_K output head", &o.pure);
  if (!p.parse(int(opts.size()), opts.data())) return 0;
  if (pos.size() != 3) throw UsageError("quantize needs IN.gguf OUT.gguf TYPE (see: sinkserve quantize --help)");
  const auto target = parse_quant_target(pos[2]);
  if (!target) throw UsageError("TYPE must be one of " + list + ", got '" + pos[2] + "'");
  if (o.threads < 0) throw UsageError("--threads must be positive");
  o.target = *target;

  const auto t0 = std::chrono::steady_clock::now();
  uint64_t in_bytes = 0, out_bytes = 0, values = 0;
  int n = 0;
  quantize_gguf(pos[0], pos[1], o, [&](const QuantizedTensor& t) {
    in_bytes += t.bytes_in;
    out_bytes += t.bytes_out;
    uint64_t e = 1;
    for (int64_t d : t.ne) e *= uint64_t(d);
    values += e;
    std::printf("[%4d] %-32s %-22s %-5s -> %-6s %10.2f MiB\n", ++n, t.name.c_str(), shape(t.ne).c_str(),
                std::string(dtype_name(t.from)).c_str(), std::string(dtype_name(t.to)).c_str(),
                double(t.bytes_out) / (1 << 20));
  });
  std::printf("wrote %s: %s, %d tensors, %.2f MiB -> %.2f MiB (%.2f bits per value) in %.1f s\n", pos[1].c_str(),
              o.target.name.c_str(), n, double(in_bytes) / (1 << 20), double(out_bytes) / (1 << 20),
              values ? 8.0 * double(out_bytes) / double(values) : 0.0, seconds_since(t0));
  return 0;
}

const RegisterCommand reg({"quantize", "quantize an F32/F16/BF16 GGUF to Q4_0, Q4_K_M, Q6_K, ... (llama-quantize types)", &run});

}  // namespace
}  // namespace sinkserve
