// One loader per architecture (one .cpp file each). Model::load reads the
// config, the tokenizer and general.architecture, then hands over here.
// To add an architecture, write <arch>.cpp with a load_<arch> and add it to
// the table in model.cpp (deepseek2.cpp is the one with MLA + MoE).
#pragma once

#include <memory>

#include "model/model.h"

namespace engram {

struct ModelParts {
  std::shared_ptr<const gguf::File> file;
  std::unique_ptr<Tokenizer> tokenizer;
  ModelConfig config;  // hyperparameters; n_vocab is set by the loader
};

Expected<std::unique_ptr<Model>> load_llama(ModelParts parts);
Expected<std::unique_ptr<Model>> load_qwen2(ModelParts parts);
Expected<std::unique_ptr<Model>> load_qwen3(ModelParts parts);
Expected<std::unique_ptr<Model>> load_deepseek2(ModelParts parts);

}  // namespace engram
