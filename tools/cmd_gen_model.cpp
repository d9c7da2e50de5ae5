// engram gen-model -o OUT.gguf --arch llama|deepseek2 [--preset P] [shape flags] [--type T] [--seed N]:
// a random-weight model for benchmarks (see model/random_model.h).
#include <chrono>
#include <cstdio>
#include <memory>

#include "commands.h"
#include "common.h"
#include "model/random_model.h"
#include "util/thread_pool.h"

namespace engram::tools {
namespace {

struct GenModelOptions {
  std::string out, arch = "llama", preset = "tiny", type = "f32", name;
  uint64_t seed = 1;
  int threads = 0;
  // Overrides of the preset's shape; unset (< 0) keeps the preset's value.
  int n_embd = -1, n_layer = -1, n_head = -1, n_head_kv = -1, n_ff = -1, n_vocab = -1;
  int n_expert = -1, n_expert_used = -1, n_expert_shared = -1, n_ff_exp = -1, n_dense_lead = -1;
  int q_lora_rank = -1, kv_lora_rank = -1, rope_dims = -1;
  int64_t n_ctx = -1;
};

template <class T>
void override(T& field, T value) {
  if (value >= 0) field = value;
}

std::string millions(uint64_t n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fM", static_cast<double>(n) / 1e6);
  return buf;
}

int run(const GenModelOptions& o) {
  auto spec = random_model_preset(o.arch, o.preset);
  if (!spec) return fail(spec.error().message);
  RandomModelSpec& s = *spec;
  override(s.n_embd, o.n_embd);
  override(s.n_layer, o.n_layer);
  override(s.n_head, o.n_head);
  override(s.n_head_kv, o.n_head_kv);
  override(s.n_ff, o.n_ff);
  override(s.n_vocab, o.n_vocab);
  override(s.n_ctx, o.n_ctx);
  override(s.n_expert, o.n_expert);
  override(s.n_expert_used, o.n_expert_used);
  override(s.n_expert_shared, o.n_expert_shared);
  override(s.n_ff_exp, o.n_ff_exp);
  override(s.n_dense_lead, o.n_dense_lead);
  override(s.q_lora_rank, o.q_lora_rank);
  override(s.kv_lora_rank, o.kv_lora_rank);
  override(s.rope_dims, o.rope_dims);
  if (!o.name.empty()) s.name = o.name;
  if (Status ok = check_random_model_spec(s); !ok) return fail(ok.message());

  ThreadPool pool(o.threads);
  const auto t0 = Clock::now();
  auto summary = write_random_model(s, o.type, o.seed, o.out, pool);
  if (!summary) return fail(summary.error().message);
  const double seconds = seconds_since(t0);
  std::printf("wrote %s: %s %s, %d tensors, %s parameters (%s active), %.1f MiB of weights, %.1f s\n",
              o.out.c_str(), s.arch.c_str(), summary->type.c_str(), summary->n_tensors,
              millions(summary->n_params).c_str(), millions(summary->n_active).c_str(),
              static_cast<double>(summary->weight_bytes) / (1024.0 * 1024.0), seconds);
  return 0;
}

}  // namespace

Command add_gen_model_command(CLI::App& parent) {
  auto o = std::make_shared<GenModelOptions>();
  CLI::App* app = parent.add_subcommand("gen-model", "Write a random-weight model (benchmarks, tests)");
  app->add_option("-o,--output", o->out, "Output GGUF file")->required();
  app->add_option("--arch", o->arch, "Architecture: llama or deepseek2")->capture_default_str();
  app->add_option("--preset", o->preset, "Shape: llama tiny|125m|1b, deepseek2 tiny|ds500m")->capture_default_str();
  app->add_option("--type", o->type, "Weights: f32, f16, bf16, q8_0, q4_0, q4_k_m, ... (as engram quantize)")
      ->capture_default_str();
  app->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  app->add_option("--name", o->name, "general.name");
  app->add_option("--n-embd", o->n_embd, "Embedding width");
  app->add_option("--n-layer", o->n_layer, "Layers");
  app->add_option("--n-head", o->n_head, "Attention heads");
  app->add_option("--n-head-kv", o->n_head_kv, "Key/value heads (llama)");
  app->add_option("--n-ff", o->n_ff, "FFN hidden size (deepseek2: the dense layers)");
  app->add_option("--n-vocab", o->n_vocab, "Vocabulary size (>= 260)");
  app->add_option("--n-ctx", o->n_ctx, "Training context (context_length)");
  app->add_option("--n-expert", o->n_expert, "Routed experts (deepseek2)");
  app->add_option("--n-expert-used", o->n_expert_used, "Experts per token (deepseek2)");
  app->add_option("--n-expert-shared", o->n_expert_shared, "Shared experts (deepseek2)");
  app->add_option("--n-ff-exp", o->n_ff_exp, "Expert hidden size (deepseek2)");
  app->add_option("--n-dense-lead", o->n_dense_lead, "Leading dense layers (deepseek2)");
  app->add_option("--q-lora-rank", o->q_lora_rank, "Query LoRA rank, 0 = none (deepseek2)");
  app->add_option("--kv-lora-rank", o->kv_lora_rank, "Latent KV size (deepseek2)");
  app->add_option("--rope-dims", o->rope_dims, "Decoupled RoPE dims per head (deepseek2)");
  add_threads_option(app, o->threads);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
