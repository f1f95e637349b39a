// llama.cpp's tokenizer test vectors in the shared fixtures (tokenizers/X.gguf with X.gguf.inp and
// X.gguf.out), for the library and the command-line tests alike.
#pragma once
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "tests/fixtures.h"

namespace sinkserve::test {

// The vocabularies that must come with vectors: a fixture folder without one fails the tests
// rather than silently shrinking them.
inline const std::vector<std::string> kVocabulariesWithVectors = {
    "ggml-vocab-deepseek-llm.gguf", "ggml-vocab-falcon.gguf", "ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-bpe.gguf",
    "ggml-vocab-llama-spm.gguf",    "ggml-vocab-mpt.gguf",    "ggml-vocab-phi-3.gguf", "ggml-vocab-qwen2.gguf"};

// Every vocabulary file in tokenizers/ that has both vector files, sorted.
inline std::vector<std::string> vocabularies_with_vectors() {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(fixtures_dir()) / "tokenizers";
  const std::string inp = ".inp";
  std::vector<std::string> v;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() <= inp.size() || name.compare(name.size() - inp.size(), inp.size(), inp) != 0) continue;
    const std::string vocab = name.substr(0, name.size() - inp.size());
    if (fs::exists(dir / vocab) && fs::exists(dir / (vocab + ".out"))) v.push_back(vocab);
  }
  std::sort(v.begin(), v.end());
  return v;
}

// A gtest parameter name for a vocabulary file: ggml-vocab-llama-bpe.gguf -> llama_bpe.
inline std::string vocabulary_label(std::string file) {
  const std::string prefix = "ggml-vocab-", suffix = ".gguf";
  if (file.rfind(prefix, 0) == 0) file.erase(0, prefix.size());
  if (file.size() > suffix.size()) file.erase(file.size() - suffix.size());
  for (char& c : file)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return file;
}

// The test strings of tokenizers/<vocab>.inp (each followed by a line "__ggml_vocab_test__") with
// the ids of the matching line of <vocab>.out (space-separated, encoded without BOS).
inline std::vector<std::pair<std::string, std::vector<int32_t>>> read_vectors(const std::string& vocab) {
  const std::string base = fixture("tokenizers/" + vocab);
  const std::string inp = read_file(base + ".inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t e = inp.find(sep, pos);
    if (e == std::string::npos) {
      ADD_FAILURE() << vocab << ".inp: text after the last separator";
      break;
    }
    texts.push_back(inp.substr(pos, e - pos));
    pos = e + sep.size();
  }
  std::istringstream out(read_file(base + ".out"));
  std::vector<std::pair<std::string, std::vector<int32_t>>> v;
  std::string line;
  for (const std::string& t : texts) {
    if (!std::getline(out, line)) {
      ADD_FAILURE() << vocab << ".out has fewer lines than " << vocab << ".inp has texts";
      break;
    }
    std::istringstream ls(line);
    std::vector<int32_t> ids;
    for (int32_t id; ls >> id;) ids.push_back(id);
    v.emplace_back(t, std::move(ids));
  }
  return v;
}

}  // namespace sinkserve::test
