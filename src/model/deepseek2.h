// DeepSeek-V2/V3 (llama.cpp's `deepseek2` GGUF layout): multi-head latent
// attention (MLA) and a mixture of experts. What other code may ask of such a
// model beyond the Model interface.
#pragma once

#include <cstdint>

#include "model/model.h"

namespace engram {

// How attention is computed for a batch that starts a sequence (the memory
// holds nothing for it yet). Decode always runs ABSORBED.
enum class MlaPrefill {
  // W_UK folded into the queries, attention over the stored latents as one
  // shared KV head (MQA), W_UV applied to the latent output: what the memory
  // stores is all that is read.
  ABSORBED,
  // Keys and values decompressed per head from the batch's latents and
  // attended as ordinary multi-head attention (DeepSeek's reference form);
  // the latents are still what the memory stores.
  DECOMPRESSED,
};

// Sets the prefill mode of a deepseek2 model; an error for other models.
Status set_mla_prefill(Model& model, MlaPrefill mode);

}  // namespace engram
