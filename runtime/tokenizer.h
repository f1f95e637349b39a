// Tokenizers read from GGUF metadata (tokenizer.ggml.*): SentencePiece-style ("llama") with byte
// fallback and scores, and byte-level BPE ("gpt2") with merges and the GPT-2 pre-tokenizer split.
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
  // (tokenizer.ggml.add_bos_token, default true for "llama", false for "gpt2").
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos) const = 0;
  // The bytes of one token as they appear in text (byte tokens become their byte, SentencePiece's
  // U+2581 becomes a space, byte-level BPE symbols map back to bytes). Control tokens give "".
  virtual std::string piece(int32_t id) const = 0;
  virtual int32_t bos() const = 0;
  virtual int32_t eos() const = 0;  // -1 when none
  virtual int32_t vocab_size() const = 0;
  // Id of a token whose text is exactly `text` (e.g. "<|im_end|>"), or -1.
  virtual int32_t find(std::string_view text) const = 0;
  virtual std::string model_name() const = 0;  // "llama" or "gpt2"
  // True when decoding drops one leading space from the first piece of a sequence, undoing the
  // space SentencePiece prepends at encoding (add_space_prefix).
  virtual bool strips_leading_space() const { return false; }
  // Decodes a whole sequence (as a streaming decoder would, joined).
  std::string decode(const std::vector<int32_t>& ids) const;
};

// Builds the tokenizer a GGUF file describes. Throws GGUFError naming what is missing.
std::unique_ptr<Tokenizer> load_tokenizer(const GGUFFile& f);

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
