// Hugging Face checkpoint directories, served as they are: config.json, the weights in
// model.safetensors or in the shards model.safetensors.index.json lists, and tokenizer.json (with
// tokenizer_config.json and generation_config.json). The directory is presented as the GGUF view
// the engine already reads (runtime/gguf.h): metadata under GGUF's keys, tensors under GGUF's names
// whose bytes stay in the shards, read slice by slice as each rank needs them (safetensors'
// row-major [out][in] is GGUF's ne = {in, out}, so nothing is transposed or copied whole).
// docs/checkpoints.md describes what is read and what is refused.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/gguf.h"

namespace sinkserve {

enum class ModelParts : uint8_t {
  All,         // hyper-parameters, weights and tokenizer
  Vocabulary,  // the tokenizer only: a checkpoint of a family sinkserve does not run still tokenizes
};

// Opens a checkpoint directory. Throws GGUFError naming the file and the key or tensor at fault.
std::unique_ptr<GGUFFile> open_hf_checkpoint(const std::string& dir, ModelParts parts = ModelParts::All);

// A model given on the command line: a GGUF file, or a checkpoint directory.
std::unique_ptr<GGUFFile> open_model(const std::string& path, ModelParts parts = ModelParts::All);

// A tensor under its GGUF name, with the bytes a GGUF file would hold, produced on demand.
struct ModelTensor {
  std::string name;
  DType type;
  std::vector<int64_t> ne;
  std::function<void(uint8_t* dst, size_t bytes)> fill;
};

// Writes the model that GGUF metadata and tensors describe as a checkpoint directory, the way the
// family's checkpoints hold it (`synth --format hf`): config.json; the weights in safetensors
// shards of at most shard_bytes listed by model.safetensors.index.json, or one model.safetensors;
// and, for a SentencePiece vocabulary, tokenizer.json with its companions. Rows move to the
// checkpoint's layout (llama's and mistral's q/k rows, fused QKV regrouped or split), so that the
// directory computes what the GGUF computes. Throws std::runtime_error naming what it cannot write.
void write_hf_checkpoint(const std::string& dir, const std::map<std::string, GGUFValue>& kv,
                         const std::vector<ModelTensor>& tensors, uint64_t shard_bytes);

}  // namespace sinkserve
