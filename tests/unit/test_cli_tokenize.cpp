// `sinkserve tokenize`: every reference vector through the command line (GPT-2's also from the
// tokenizer.json of a checkpoint directory), its output forms, and its errors; and
// --allow-unknown-pretokenizer on a command that runs a model.
#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/gguf.h"
#include "runtime/tokenizer.h"
#include "tests/fixtures.h"
#include "tests/tokenizer_vectors.h"

using namespace sinkserve;
using sinkserve::test::CliResult;
namespace fs = std::filesystem;

namespace {

fs::path dir() {
  static const fs::path d = sinkserve::test::make_temp_dir("test_cli_tokenize");
  return d;
}

CliResult run(const std::string& args) { return sinkserve::test::run_sinkserve(dir(), args); }

std::string quoted(const std::string& s) { return "'" + s + "'"; }

std::string vocab_path(const std::string& name) {
  return quoted(sinkserve::test::fixture("tokenizers/ggml-vocab-" + name + ".gguf"));
}

std::string ids_line(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s += ' ';
    s += std::to_string(id);
  }
  return s + "\n";
}

// Digits only, with a pre-tokenizer name nobody knows: "123123" is token 5 merged whole, 4 4 when
// the 'default' rules cut the digits into threes.
std::string write_unknown_pre_vocab() {
  auto strings = [](const std::vector<std::string>& v) {
    GGUFArray a{GGUFType::STRING, {}};
    for (const auto& s : v) a.items.push_back({GGUFType::STRING, s});
    return GGUFValue{GGUFType::ARRAY, a};
  };
  GGUFWriter w;
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "x-unknown");
  w.set("tokenizer.ggml.tokens", strings({"1", "2", "3", "12", "123", "123123"}));
  w.set("tokenizer.ggml.merges", strings({"1 2", "12 3", "123 123"}));
  const std::string path = (dir() / "unknown_pre.gguf").string();
  w.write(path);
  return path;
}

}  // namespace

// Each text goes through its own process, as a user would run it; the runs are spread over a few
// threads, each with its own folder, since loading a large vocabulary dominates.
TEST(CliTokenize, EveryReferenceVectorGivesTheExactIds) {
  struct Case {
    std::string model, text, want;
  };
  std::vector<Case> cases;
  const std::vector<std::string> vocabs = sinkserve::test::vocabularies_with_vectors();
  for (const std::string& v : sinkserve::test::kVocabulariesWithVectors)
    EXPECT_NE(std::find(vocabs.begin(), vocabs.end(), v), vocabs.end()) << v << " has no vectors";
  for (const std::string& v : vocabs)
    for (const auto& [text, ids] : sinkserve::test::read_vectors(v))
      cases.push_back({sinkserve::test::fixture("tokenizers/" + v), text, ids_line(ids)});
  // A Hugging Face checkpoint directory: GPT-2's tokenizer.json gives GPT-2's vectors.
  for (const auto& [text, ids] : sinkserve::test::read_vectors("ggml-vocab-gpt-2.gguf"))
    cases.push_back({sinkserve::test::fixture("models/hf-fake-gpt2"), text, ids_line(ids)});
  ASSERT_FALSE(cases.empty());

  const unsigned n_threads = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
  std::vector<std::vector<std::string>> failures(n_threads);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < n_threads; ++t) {
    threads.emplace_back([&, t] {
      const fs::path d = dir() / ("worker" + std::to_string(t));
      fs::create_directories(d);
      for (size_t i = t; i < cases.size(); i += n_threads) {
        const Case& c = cases[i];
        sinkserve::test::write_bytes(d / "text.txt", c.text);
        const CliResult r = sinkserve::test::run_sinkserve(
            d, "tokenize --ids --no-bos --model " + quoted(c.model) + " --file " + quoted((d / "text.txt").string()));
        if (r.code != 0 || r.out != c.want)
          failures[t].push_back(c.model + " on '" + visible_text(c.text) + "': exit " + std::to_string(r.code) +
                                ", got '" + r.out + "' want '" + c.want + "' " + r.err);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  size_t n_failed = 0;
  for (const auto& f : failures)
    for (const std::string& msg : f) {
      ADD_FAILURE() << msg;
      ++n_failed;
    }
  std::printf("%zu vectors of %zu vocabularies through the CLI, %zu failed\n", cases.size(), vocabs.size(),
              n_failed);
}

TEST(CliTokenize, PrintsOneReadablePiecePerLine) {
  sinkserve::test::write_bytes(dir() / "pieces.txt", "Hi\n\tthere \xE6\x97\xA5");
  const std::string file = " --file " + quoted((dir() / "pieces.txt").string());
  CliResult r = run("tokenize --model " + vocab_path("llama-bpe") + file);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "128000 '<|begin_of_text|>'\n13347 'Hi'\n198 '\\n'\n197 '\\t'\n19041 'there'\n"
            "76502 ' \xE6\x97\xA5'\n");
  // GPT-2 spells the character with three byte tokens: none is a whole character on its own.
  r = run("tokenize --model " + vocab_path("gpt-2") + file);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("10545 ' \\xe6'\n245 '\\x97'\n98 '\\xa5'\n"), std::string::npos) << r.out;
}

TEST(CliTokenize, BosAndSpecialTokens) {
  // Llama-3 adds BOS by default; --no-bos drops it; Qwen2 adds none.
  EXPECT_EQ(run("tokenize --ids --text Hi --model " + vocab_path("llama-bpe")).out, "128000 13347\n");
  EXPECT_EQ(run("tokenize --ids --no-bos --text Hi --model " + vocab_path("llama-bpe")).out, "13347\n");
  EXPECT_EQ(run("tokenize --ids --text Hello --model " + vocab_path("qwen2")).out, "9707\n");
  // Control-token texts are plain text unless --parse-special.
  const std::string eot = " --text 'Hi<|eot_id|>' --model " + vocab_path("llama-bpe");
  EXPECT_EQ(run("tokenize --ids --no-bos --parse-special" + eot).out, "13347 128009\n");
  const CliResult plain = run("tokenize --ids --no-bos" + eot);
  EXPECT_EQ(plain.code, 0);
  EXPECT_EQ(plain.out.find("128009"), std::string::npos) << plain.out;
  EXPECT_EQ(run("tokenize --ids --text '' --model " + vocab_path("llama-spm")).out, "1\n");
}

// A checkpoint directory's tokenizer.json: BOS from its TemplateProcessing, the same ids as the
// GGUF of the same model; a directory without one is named.
TEST(CliTokenize, CheckpointDirectories) {
  const std::string hf = quoted(sinkserve::test::fixture("models/gutenberg-1m-hf"));
  const std::string gguf = quoted(sinkserve::test::fixture("models/gutenberg-1m.gguf"));
  const std::string text = " --text 'It is a truth universally acknowledged, that a single man'";
  const CliResult a = run("tokenize --model " + hf + text), b = run("tokenize --model " + gguf + text);
  EXPECT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.out.rfind("1 '<s>'\n", 0), 0u) << a.out;
  fs::create_directories(dir() / "empty_checkpoint");
  const CliResult r = run("tokenize --text hi --model " + quoted((dir() / "empty_checkpoint").string()));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("empty_checkpoint: no tokenizer.json"), std::string::npos) << r.err;
}

TEST(CliTokenize, UnknownPreTokenizer) {
  const std::string vocab = write_unknown_pre_vocab();
  CliResult r = run("tokenize --ids --text 123123 --model " + quoted(vocab));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("sinkserve tokenize: error: " + vocab + ": unknown pre-tokenizer 'x-unknown'"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("--allow-unknown-pretokenizer"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");

  r = run("tokenize --ids --allow-unknown-pretokenizer --text 123123 --model " + quoted(vocab));
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "4 4\n");
  EXPECT_NE(r.err.find("warning: " + vocab + ": unknown pre-tokenizer 'x-unknown'"), std::string::npos) << r.err;
}

TEST(CliTokenize, BadArgumentsAndFiles) {
  const std::string m = " --model " + vocab_path("gpt-2");
  // Usage errors exit 2, as for every command.
  for (const auto& [args, needle] : std::vector<std::pair<std::string, std::string>>{
           {"tokenize --text hi", "--model"},
           {"tokenize" + m, "give exactly one of --text and --file"},
           {"tokenize --text a --file b" + m, "give exactly one of --text and --file"},
           {"tokenize --bogus --text a" + m, "unknown argument '--bogus'"},
           {"tokenize --file /nonexistent/text.txt" + m, "cannot read --file '/nonexistent/text.txt'"}}) {
    const CliResult r = run(args);
    EXPECT_TRUE(r.exited) << args;
    EXPECT_EQ(r.code, 2) << args << ": " << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << " stderr: " << r.err;
  }
  // Files that cannot be read as a vocabulary exit 1, naming the file and the problem.
  sinkserve::test::write_bytes(dir() / "not_gguf.txt", "hello, world\n");
  GGUFWriter no_vocab;
  no_vocab.set_string("general.name", "no vocabulary");
  no_vocab.write((dir() / "no_vocab.gguf").string());
  for (const auto& [file, needle] : std::vector<std::pair<std::string, std::string>>{
           {(dir() / "missing.gguf").string(), "cannot open"},
           {(dir() / "not_gguf.txt").string(), "not a GGUF file"},
           {(dir() / "no_vocab.gguf").string(), "metadata key 'tokenizer.ggml.model' is missing"}}) {
    const CliResult r = run("tokenize --text hi --model " + quoted(file));
    EXPECT_TRUE(r.exited) << file;
    EXPECT_EQ(r.code, 1) << file << ": " << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << file << " stderr: " << r.err;
    EXPECT_NE(r.err.find(file), std::string::npos) << "the message should name the file: " << r.err;
  }
}

// The flag reaches the tokenizer of a command that runs a model: a random model with the
// unknown-pre-tokenizer vocabulary is refused, and generates once the flag is given.
TEST(CliTokenize, ModelCommandsAcceptAllowUnknownPretokenizer) {
  const std::string vocab = write_unknown_pre_vocab();
  const std::string model = (dir() / "unknown_pre_model.gguf").string();
  CliResult r = run("synth --out " + quoted(model) + " --tokenizer-from " + quoted(vocab) +
                    " --dim 16 --layers 1 --heads 2 --ffn 32");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string gen = "generate -n 2 --threads 1 --prompt 123123 --model " + quoted(model);
  r = run(gen);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown pre-tokenizer 'x-unknown'"), std::string::npos) << r.err;
  r = run(gen + " --allow-unknown-pretokenizer");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: "), std::string::npos) << r.err;
}
