// Model::load: map the file, pick the architecture, read hyperparameters and
// the tokenizer, and let the architecture's loader check its tensors.
#include <string_view>

#include "model/architectures.h"
#include "model/transformer.h"

namespace engram {
namespace {

struct Architecture {
  std::string_view name;
  Expected<std::unique_ptr<Model>> (*load)(ModelParts);
};

constexpr Architecture kArchitectures[] = {
    {"llama", load_llama},  // Llama 2/3, Mistral, TinyLlama, llama2.c conversions
    {"qwen2", load_qwen2},  // QKV biases, NeoX RoPE
    {"qwen3", load_qwen3},  // per-head Q/K RMSNorm, NeoX RoPE
    {"deepseek2", load_deepseek2},  // DeepSeek-V2/V3: MLA latent attention, mixture of experts
};

std::string supported_list() {
  std::string s;
  for (const Architecture& a : kArchitectures) s += (s.empty() ? "" : ", ") + std::string(a.name);
  return s;
}

}  // namespace

Expected<std::unique_ptr<Model>> Model::load(const std::string& path, LoadMode mode) {
  Expected<gguf::File> opened = gguf::File::open(path, mode);
  if (!opened) return opened.error();
  auto file = std::make_shared<const gguf::File>(std::move(opened).value());

  Expected<std::string> arch = file->get_string("general.architecture");
  if (!arch) return arch.error();
  const Architecture* found = nullptr;
  for (const Architecture& a : kArchitectures)
    if (a.name == *arch) found = &a;
  if (!found)
    return make_error("unsupported architecture '", *arch, "' in ", path, " (supported: ", supported_list(), ")");

  Expected<ModelConfig> config = transformer::read_config(*file);
  if (!config) return config.error();
  Expected<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::from_gguf(*file);
  if (!tokenizer) return make_error(path, ": ", tokenizer.error().message);

  return found->load(ModelParts{file, std::move(tokenizer).value(), std::move(config).value()});
}

MemoryLayout Model::memory_layout(int64_t n_ctx, int n_seq) const {
  MemoryLayout m;
  m.n_layer = config_.n_layer;
  m.n_kv_head = config_.n_head_kv;
  m.k_dim = config_.head_dim;
  m.v_dim = config_.head_dim_v;
  m.n_ctx = n_ctx;
  m.n_seq = n_seq;
  return m;
}

Status Model::forward_batch(std::span<const TokenId> tokens, std::span<const BatchSegment> segments,
                            Memory& memory, float* logits, ThreadPool& pool) {
  ENGRAM_RETURN_IF_ERROR(transformer::check_batch_args(config_, tokens, segments, memory));
  const size_t n_vocab = static_cast<size_t>(config_.n_vocab);
  size_t first = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const BatchSegment& s = segments[i];
    ENGRAM_RETURN_IF_ERROR(forward(tokens.subspan(first, static_cast<size_t>(s.n)), s.pos0, s.seq, memory,
                                   logits ? logits + i * n_vocab : nullptr, /*all_logits=*/false, pool));
    first += static_cast<size_t>(s.n);
  }
  return Status::ok();
}

uint64_t Model::weight_bytes() const {
  uint64_t bytes = 0;
  for (const gguf::TensorInfo& t : file_->tensors()) bytes += t.n_bytes;
  return bytes;
}

uint64_t Model::parameter_count() const {
  uint64_t n = 0;
  for (const gguf::TensorInfo& t : file_->tensors()) n += static_cast<uint64_t>(t.n_elements());
  return n;
}

size_t Model::kv_bytes_per_token() const {
  // Float32 keys of every kv head in every layer, and values unless the
  // memory reads them from the keys (MLA latents).
  const MemoryLayout m = memory_layout(1);
  const size_t per_head = static_cast<size_t>(m.k_dim) + (m.values_in_keys ? 0 : static_cast<size_t>(m.v_dim));
  return static_cast<size_t>(m.n_layer) * static_cast<size_t>(m.n_kv_head) * per_head * sizeof(float);
}

size_t Model::full_kv_bytes_per_token() const {
  return static_cast<size_t>(config_.n_layer) * config_.n_head * (config_.head_dim + config_.head_dim_v) *
         sizeof(float);
}

}  // namespace engram
