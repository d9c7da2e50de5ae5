// A deepseek2 file with a next-n (MTP) layer, for tests: no reference file
// has one, so this rewrites a tiny reference model with block_count + 1 and
// nextn_predict_layers 1, the extra block (a copy of the last layer's tensor
// names and shapes) filled with seeded random weights plus the nextn.*
// tensors, laid out as llama.cpp's converter writes DeepSeek-V3 / GLM-4 MoE.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "util/status.h"

namespace engram::test {

// Writes `out` from the deepseek2 file `src`. With shared_head, also the
// optional nextn.shared_head_norm / shared_head_head tensors.
inline Status write_mtp_model(const std::string& src, const std::string& out, uint32_t seed = 7,
                              bool shared_head = true) {
  auto file = gguf::File::open(src);
  if (!file) return file.error();
  auto n_layer = file->get_int("deepseek2.block_count");
  if (!n_layer) return n_layer.error();
  auto n_embd = file->get_int("deepseek2.embedding_length");
  if (!n_embd) return n_embd.error();
  const int64_t L = *n_layer, D = *n_embd;
  gguf::Writer w;
  w.copy_metadata(*file);
  w.set_u32("deepseek2.block_count", static_cast<uint32_t>(L + 1));
  w.set_u32("deepseek2.nextn_predict_layers", 1);

  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  // Random weights of the scale the reference models use; norms around 1.
  auto random_tensor = [&](const std::string& name, std::vector<int64_t> ne, bool norm) -> Status {
    int64_t count = 1;
    for (int64_t d : ne) count *= d;
    std::vector<float> data(static_cast<size_t>(count));
    const float scale = norm ? 0.1f : 1.f / std::sqrt(static_cast<float>(ne[0]));
    for (float& x : data) x = (norm ? 1.f : 0.f) + scale * normal(rng);
    return w.add_tensor_f32(name, std::move(ne), data);
  };

  const std::string last = "blk." + std::to_string(L - 1) + ".", extra = "blk." + std::to_string(L) + ".";
  for (const gguf::TensorInfo& t : file->tensors()) {
    const uint8_t* data = file->tensor_data(t);
    std::vector<int64_t> ne(t.ne.begin(), t.ne.begin() + std::max(t.n_dims, 1));
    ENGRAM_RETURN_IF_ERROR(w.add_tensor(t.name, t.type, ne, std::vector<uint8_t>(data, data + t.n_bytes)));
  }
  for (const gguf::TensorInfo& t : file->tensors()) {
    if (!t.name.starts_with(last)) continue;
    std::vector<int64_t> ne(t.ne.begin(), t.ne.begin() + std::max(t.n_dims, 1));
    const bool norm = t.name.find("norm") != std::string::npos;
    ENGRAM_RETURN_IF_ERROR(random_tensor(extra + t.name.substr(last.size()), ne, norm));
  }
  ENGRAM_RETURN_IF_ERROR(random_tensor(extra + "nextn.eh_proj.weight", {2 * D, D}, false));
  ENGRAM_RETURN_IF_ERROR(random_tensor(extra + "nextn.enorm.weight", {D}, true));
  ENGRAM_RETURN_IF_ERROR(random_tensor(extra + "nextn.hnorm.weight", {D}, true));
  if (shared_head) ENGRAM_RETURN_IF_ERROR(random_tensor(extra + "nextn.shared_head_norm.weight", {D}, true));
  return w.write(out);
}

}  // namespace engram::test
