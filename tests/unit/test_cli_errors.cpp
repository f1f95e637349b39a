// The sinkserve executable on bad input: corrupt model files and bad arguments end in a clear
// message and a non-zero exit status, never a crash.
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/gguf.h"
#include "tests/fixtures.h"
#include "tests/gguf_bytes.h"

using namespace sinkserve;
using sinkserve::test::CliResult;
using sinkserve::test::GGUFBytes;
namespace fs = std::filesystem;

namespace {

fs::path dir() {
  static const fs::path d = sinkserve::test::make_temp_dir("test_cli_errors");
  return d;
}

CliResult run(const std::string& args) { return sinkserve::test::run_sinkserve(dir(), args); }

std::string write_model(const std::string& name, const std::string& bytes) {
  const fs::path p = dir() / name;
  sinkserve::test::write_bytes(p, bytes);
  return p.string();
}

// A valid two-tensor file, built by hand so that tests can break single fields.
GGUFBytes valid_model(uint64_t dim0 = 8, uint64_t offset_b = 32) {
  GGUFBytes g = GGUFBytes::header(2, 1);
  g.kv_string("general.architecture", "llama");
  g.tensor_info("a", {dim0}, 0, 0).tensor_info("b", {8}, 0, offset_b).pad(32);
  g.b.append(64, '\0');
  return g;
}

// Every command that opens a model refuses the file the same way.
void expect_failure(const std::string& model, const std::string& needle) {
  for (const char* cmd : {"inspect --model ", "generate -n 4 --threads 1 --model "}) {
    const CliResult r = run(cmd + model);
    EXPECT_TRUE(r.exited) << "killed by a signal: " << cmd << model;
    EXPECT_EQ(r.code, 1) << cmd << ": " << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << cmd << " stderr: " << r.err;
    EXPECT_NE(r.err.find(model), std::string::npos) << "the message should name the file: " << r.err;
  }
}

}  // namespace

TEST(CliErrors, CorruptModelFiles) {
  const std::string valid = valid_model().b;
  // The container is sound; only the hyper-parameters are missing, which inspect also reports.
  expect_failure(write_model("no_config.gguf", valid), "metadata key 'llama.block_count' is missing");

  expect_failure(write_model("truncated.gguf", valid.substr(0, 40)), "truncated");
  std::string magic = valid;
  magic[0] = 'X';
  expect_failure(write_model("magic.gguf", magic), "not a GGUF file: magic is 'XGUF'");
  expect_failure(write_model("huge_dims.gguf", valid_model(1ull << 40).b), "lies outside");
  expect_failure(write_model("zero_dim.gguf", valid_model(0).b), "dimension 0 = 0");
  expect_failure(write_model("bad_offset.gguf", valid_model(8, 1ull << 40).b), "tensor 'b' data");
  expect_failure(write_model("misaligned.gguf", valid_model(8, 36).b), "not a multiple of the alignment");
  expect_failure(write_model("empty.gguf", ""), "empty file");
  expect_failure((dir() / "does_not_exist.gguf").string(), "cannot open");
}

TEST(CliErrors, UnsupportedArchitectureAndTensorType) {
  GGUFBytes g = GGUFBytes::header(1, 1);
  g.kv_string("general.architecture", "bloom").tensor_info("t", {32}, 0, 0).pad(32).b.append(128, '\0');
  expect_failure(write_model("bloom.gguf", g.b), "architecture 'bloom' is not supported");
  GGUFBytes q = GGUFBytes::header(1, 1);
  q.kv_string("general.architecture", "llama").tensor_info("t", {256}, 16, 0).pad(32).b.append(128, '\0');
  expect_failure(write_model("iq2.gguf", q.b), "which sinkserve does not support");
}

TEST(CliErrors, TruncatedRealModel) {
  const std::string real = sinkserve::test::read_file(sinkserve::test::fixture("models/stories260K.gguf"));
  expect_failure(write_model("stories_cut.gguf", real.substr(0, real.size() / 2)), "truncated");
}

TEST(CliErrors, BadGenerateArguments) {
  const std::string m = " --model " + sinkserve::test::fixture("models/stories260K.gguf");
  for (const auto& [args, needle] : std::vector<std::pair<std::string, std::string>>{
           {"generate -n -5" + m, "-n must be -1"},
           {"generate --top-p 2" + m, "--top-p must be in (0, 1]"},
           {"generate --temp -1" + m, "--temp must be >= 0"},
           {"generate --policy lru" + m, "unknown cache policy 'lru'"},
           {"generate --device tpu" + m, "--device must be cpu or cuda"},
           {"generate --sampler gpu" + m, "--sampler must be auto, host or backend"},
           {"generate --threads x" + m, "--threads expects an integer, got 'x'"},
           {"generate --threads 100000" + m, "--threads must be in 0..1024"},
           {"generate --window 2147483000" + m, "are limited to"},
           {"generate --chunk 0" + m, "--chunk must be in 1..65536"},
           {"generate --window 0" + m, "--window must be >= 1"},
           {"generate --window -1" + m, "--window must be >= 1"},
           {"generate -f " + dir().string() + m, "cannot read --prompt-file '" + dir().string() + "': it is a directory"},
           {"perplexity --text /nonexistent/file" + m, "cannot read --text"},
           {"generate --kv-type f8" + m, "--kv-type: unknown KV cache type 'f8'"},
           {"generate --kv-type fp8" + m, "fp8 KV storage is not implemented"},
           {"serve --kv-memory lots" + m, "--kv-memory must be a size like 2GiB"},
           {"serve --kv-memory 1GiB --sessions 4" + m, "give --sessions or --kv-memory, not both"},
           {"perplexity --tokens 0 --text " + sinkserve::test::fixture("texts/tinyshakespeare_input.txt") + m,
            "--tokens must be >= 1"},
           {"serve --read-timeout 0" + m, "--read-timeout must be in (0, 3600] seconds"},
           {"serve --admin-port 70000" + m, "--admin-port must be in 0..65535"},
           {"serve --stall-timeout -1" + m, "--stall-timeout must be in [0, 86400] seconds"},
           {"serve --max-prompt-tokens 0" + m, "--max-prompt-tokens must be >= 1"},
           {"serve --itl-factor 0.5" + m, "--itl-factor must be 0 (off) or in [1, 1000]"},
           {"serve --session-dir-max 1GiB" + m, "--session-dir-max needs --session-dir"},
           {"serve --session-dir d --session-dir-max many" + m, "--session-dir-max must be a size like 2GiB"},
           {"serve --session-dir d --policy recompute" + m, "--session-dir needs a policy that keeps cache rows"},
           {"bogus-command", "unknown command 'bogus-command'"}}) {
    const CliResult r = run(args);
    EXPECT_TRUE(r.exited) << args;
    EXPECT_EQ(r.code, 2) << args << ": " << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << " stderr: " << r.err;
  }
}

// Values that parse but do not fit the model: exit 1 with the numbers.
TEST(CliErrors, KvStorageThatDoesNotFit) {
  const std::string stories = " --model " + sinkserve::test::fixture("models/stories260K.gguf");
  CliResult r = run("serve --port 0 --kv-memory 1000" + stories);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("--kv-memory 1000 bytes holds no slot: one slot of"), std::string::npos) << r.err;
  // A model whose cache rows (2 KV heads x 12) are not whole Q8_0 blocks.
  const std::string small = (dir() / "small.gguf").string();
  ASSERT_EQ(run("synth --dim 48 --heads 4 --kv-heads 2 --ffn 64 --out " + small).code, 0);
  r = run("generate -n 2 --kv-type q8_0 --model " + small);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("Q8_0 stores rows in blocks of 32 values, but this rank's rows hold 24"), std::string::npos)
      << r.err;
}

TEST(CliErrors, BadArguments) {
  CliResult r = run("inspect --bogus");
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown argument '--bogus'"), std::string::npos) << r.err;

  r = run("inspect");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--model"), std::string::npos) << r.err;

  r = run("synth --out " + (dir() / "x.gguf").string() + " --dim abc");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--dim expects an integer, got 'abc'"), std::string::npos) << r.err;
}

TEST(CliErrors, InspectRealModel) {
  const CliResult r = run("inspect --tensors --model " + sinkserve::test::fixture("models/stories260K.gguf"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("GGUF v3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layers 5, dim 64, heads 8, kv heads 4, head dim 8, ffn 172, vocab 512"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("bos:           1 '<s>'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("48 tensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("blk.4.ffn_down.weight"), std::string::npos) << r.out;
}
