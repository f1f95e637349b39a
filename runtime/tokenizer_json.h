// Hugging Face tokenizers (tokenizer.json, with tokenizer_config.json, generation_config.json and
// config.json beside it) as tokenizer metadata: the GGUF keys a converter would write
// (tokenizer.ggml.tokens, token_type, the special ids, add_bos_token, tokenizer.chat_template) and,
// for what GGUF has no key for, tokenizer.hf.* keys that the BPE tokenizer reads (docs/tokenizers.md).
// The existing tokenizer classes are then built from that metadata, as from a GGUF file.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "runtime/gguf.h"

namespace sinkserve {

// Adds the metadata of dir/tokenizer.json to kv; nothing when the file is absent. vocab_rows (0:
// unknown) is the model's embedding rows: ids the tokenizer leaves unused up to it are filled
// with unused tokens, as converters do. Throws GGUFError naming the file and the component that
// sinkserve does not implement.
void add_tokenizer_json(const std::string& dir, int64_t vocab_rows, std::map<std::string, GGUFValue>& kv);

// Writes dir/tokenizer.json, tokenizer_config.json and generation_config.json for the
// SentencePiece-style vocabulary (tokenizer.ggml.model llama) of `vocab`, as transformers'
// LlamaConverter converts one: a BPE model with <0xNN> byte fallback whose merges are each piece's
// splits into two pieces, ordered by the piece's score. Throws std::runtime_error for another kind
// of vocabulary.
void write_tokenizer_json(const std::string& dir, const GGUFFile& vocab);

}  // namespace sinkserve
