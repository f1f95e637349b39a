// `sinkserve tokenize`: the token ids of a text under a model's vocabulary. Only the tokenizer is
// built (no weights, no backend), so vocabulary-only GGUF files work too, and checkpoint
// directories of families sinkserve does not run.
#include <cstdio>
#include <string>

#include "launcher/args.h"
#include "launcher/command.h"
#include "runtime/hf_checkpoint.h"
#include "runtime/tokenizer.h"

namespace sinkserve {
namespace {

int run(int argc, char** argv) {
  std::string model, text, file;
  bool ids_only = false, no_bos = false, parse_special = false;
  TokenizerOptions opt;
  ArgParser p("tokenize", "Prints the tokens of a text: one 'id piece' per line, or with --ids the ids alone.");
  p.add("-m,--model", "PATH", "GGUF file with a vocabulary, or checkpoint directory with a tokenizer.json "
        "(weights are not read)", &model, true)
      .add("--text", "TEXT", "the text to tokenize", &text)
      .add("--file", "FILE", "read the text from FILE instead", &file)
      .add("--ids", "", "print only the ids, space-separated on one line", &ids_only)
      .add("--no-bos", "", "do not add BOS, even where the vocabulary asks for it", &no_bos)
      .add("--parse-special", "", "control-token texts in the input (<|eot_id|>) become their ids", &parse_special)
      .add("--allow-unknown-pretokenizer", "",
           "split words of a vocabulary with an unknown tokenizer.ggml.pre by the 'default' rules",
           &opt.allow_unknown_pretokenizer);
  p.epilog("Pieces are the text each token stands for, quoted, with control characters and bytes that are\n"
           "not whole UTF-8 characters escaped (\\n, \\x0b); control tokens show as their name.");
  if (!p.parse(argc, argv)) return 0;
  if (p.given("--text") == p.given("--file")) throw UsageError("give exactly one of --text and --file");
  if (p.given("--file")) text = read_option_file("--file", file);

  const auto f = open_model(model, ModelParts::Vocabulary);
  const auto tok = load_tokenizer(*f, opt);
  const std::vector<int32_t> ids = tok->encode(text, !no_bos, parse_special);
  std::string out;
  for (const int32_t id : ids) {
    if (ids_only) {
      if (!out.empty()) out += ' ';
      out += std::to_string(id);
      continue;
    }
    std::string piece = tok->piece(id);
    if (piece.empty()) piece = tok->token_text(id);
    out += std::to_string(id) + " '" + visible_text(piece) + "'\n";
  }
  if (ids_only) out += '\n';
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

const RegisterCommand reg({"tokenize", "print the token ids of a text (reads only the vocabulary)", &run});

}  // namespace
}  // namespace sinkserve
