// Random-weight models for benchmarks and tests (`engram gen-model`).
//
// A model is described by its hyperparameters (RandomModelSpec), written
// with the project's GGUF writer tensor by tensor (memory stays bounded by
// one tensor, so a 1B model in F16 is written without holding 2 GB), and
// quantized row by row with the project's quantizers, each tensor getting the
// type `engram quantize` / llama-quantize would give it. Weights are uniform
// with standard deviation `weight_std`, norms are 1, so activations stay
// finite. Every file carries a byte-level SentencePiece vocabulary of n_vocab
// tokens, so engram and llama.cpp both load and run it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "util/status.h"
#include "util/thread_pool.h"

namespace engram {

struct RandomModelSpec {
  std::string arch = "llama";  // "llama" | "deepseek2"
  std::string name;            // general.name ("" = "random-<arch>")
  int n_vocab = 512;
  int n_embd = 256;
  int n_layer = 2;
  int n_head = 4;
  int n_head_kv = 2;           // llama only (deepseek2's MLA file form has one KV head)
  int n_ff = 512;              // llama: every layer; deepseek2: the leading dense layers
  int64_t n_ctx = 2048;        // {arch}.context_length
  float rope_freq_base = 10000.f;
  float norm_eps = 1e-5f;
  float weight_std = 0.02f;    // standard deviation of every matrix entry
  // deepseek2 (MLA + MoE, the V2-Lite layout: softmax routing, no groups).
  int q_lora_rank = 0;         // 0: attn_q directly; else attn_q_a / attn_q_b
  int kv_lora_rank = 64;       // latent size
  int rope_dims = 16;          // decoupled RoPE part of each query/key head
  int qk_nope_dim = 32;        // per-head key size without RoPE
  int v_head_dim = 32;         // per-head value size
  int n_dense_lead = 1;        // leading layers with a dense FFN
  int n_expert = 8;            // routed experts
  int n_expert_used = 2;       // experts per token
  int n_expert_shared = 1;     // shared experts (one FFN of n_expert_shared * n_ff_exp)
  int n_ff_exp = 32;           // hidden size of one expert
};

// Named shapes: llama "tiny" (1.4M parameters), "125m" (n_embd 768, 12
// layers), "1b" (n_embd 2048, 16 layers, 32 heads, 8 KV heads); deepseek2
// "tiny" (the reference tiny model's shape) and "ds500m" (~590M parameters,
// ~175M active: 64 experts, 6 used, 2 shared, MLA with kv_lora_rank 512).
// Error names the preset and lists the known ones.
Expected<RandomModelSpec> random_model_preset(const std::string& arch, const std::string& preset);
std::vector<std::string> random_model_presets(const std::string& arch);

// Error naming the first hyperparameter that is out of range or inconsistent.
Status check_random_model_spec(const RandomModelSpec& spec);

// The tensors of a model of this shape (names and shapes as llama.cpp reads
// them; type F32, the source type before quantization), in file order;
// empty when check_random_model_spec fails.
std::vector<gguf::TensorInfo> random_model_tensors(const RandomModelSpec& spec);

// What a written model holds.
struct RandomModelSummary {
  std::string type;           // canonical type name ("f32", "q4_k_m", ...)
  int n_tensors = 0;
  uint64_t n_params = 0;      // all weights
  uint64_t n_active = 0;      // weights one token reads (routed experts: n_used of n_expert)
  uint64_t weight_bytes = 0;  // tensor data in the file
};

// Writes the model to `path`. `type`: "f32" or a target of engram quantize
// ("f16", "bf16", "q8_0", "q4_0", "q4_k_m", ...). Same seed, spec and type:
// the same file, whatever n_threads (rows are seeded by tensor and row).
Expected<RandomModelSummary> write_random_model(const RandomModelSpec& spec, const std::string& type, uint64_t seed,
                                                const std::string& path, ThreadPool& pool);

// The vocabulary every random model carries: <unk> <s> </s>, the 256 byte
// tokens <0x00>..<0xFF>, then pieces ("▁", ASCII characters, "▁"+letter,
// letter pairs and triples with and without "▁") ranked by score, then
// <unused_N> tokens up to n_vocab (>= 260).
void set_random_vocab(gguf::Writer& writer, int n_vocab);

}  // namespace engram
