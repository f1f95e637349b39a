// Tokenizers read from GGUF metadata (tokenizer.ggml.*): SentencePiece-style ("llama") with byte
// fallback and scores, and byte-level BPE ("gpt2") with merges, its text split into words first by
// the pre-tokenizer that tokenizer.ggml.pre names (docs/tokenizers.md).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sinkserve {

class GGUFFile;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of `text`; add_bos prepends BOS when the vocabulary asks for it
  // (tokenizer.ggml.add_bos_token; without it true for "llama" and for the Llama-3 pre-tokenizer,
  // else false). User-defined tokens in the text always become their ids; control tokens
  // ("<|eot_id|>") only with parse_special, else their text is tokenized like any other.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special = true) const {
    return encode_ids(text, add_bos, parse_special);
  }
  // The bytes of one token as they appear in text (byte tokens become their byte, SentencePiece's
  // U+2581 becomes a space, byte-level BPE symbols map back to bytes). Control tokens give "".
  virtual std::string piece(int32_t id) const = 0;
  // The token as the vocabulary stores it (control tokens included, byte-level symbols not mapped).
  virtual std::string_view token_text(int32_t id) const = 0;
  virtual int32_t bos() const = 0;
  virtual int32_t eos() const = 0;  // -1 when none
  // End of a turn (Llama-3's <|eot_id|>, ChatML's <|im_end|>) and end of a message that expects a
  // tool's reply (<|eom_id|>): tokenizer.ggml.eot_token_id / eom_token_id, else found by their
  // usual texts as llama.cpp does, since converters rarely write the keys. -1 when none.
  virtual int32_t eot() const = 0;
  virtual int32_t eom() const = 0;
  // Whether generation stops at `id`: end of text, of a turn or of a message.
  bool ends_generation(int32_t id) const { return id >= 0 && (id == eos() || id == eot() || id == eom()); }
  virtual int32_t vocab_size() const = 0;
  // Id of a token whose text is exactly `text` (e.g. "<|im_end|>"), or -1.
  virtual int32_t find(std::string_view text) const = 0;
  virtual std::string model_name() const = 0;  // "llama" or "gpt2"
  // True when decoding drops one leading space from the first piece of a sequence, undoing the
  // space SentencePiece prepends at encoding (add_space_prefix).
  virtual bool strips_leading_space() const { return false; }
  // Decodes a whole sequence (as a streaming decoder would, joined).
  std::string decode(const std::vector<int32_t>& ids) const;

 private:
  virtual std::vector<int32_t> encode_ids(std::string_view text, bool add_bos, bool parse_special) const = 0;
};

struct TokenizerOptions {
  // A byte-level BPE vocabulary whose tokenizer.ggml.pre names no known pre-tokenizer is refused;
  // with this set it splits words by the 'default' rules instead, after a warning on stderr.
  bool allow_unknown_pretokenizer = false;
};

// Builds the tokenizer a GGUF file describes. Throws GGUFError naming what is missing or unknown.
std::unique_ptr<Tokenizer> load_tokenizer(const GGUFFile& f, const TokenizerOptions& opt = {});

// `bytes` made readable on one line: control characters, backslashes and bytes that are not
// well-formed UTF-8 become escapes (\n, \t, \x1b, \\); everything else is kept.
std::string visible_text(std::string_view bytes);

// Turns token pieces into text for streaming: bytes of an incomplete UTF-8 character are held
// back until the character is whole, so every string returned is valid UTF-8 on its own.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  // Text that became complete with this token (may be empty).
  std::string push(int32_t id);
  // Whatever is still held back (an incomplete character, as U+FFFD), at the end of a stream.
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool first_ = true;
};

}  // namespace sinkserve
