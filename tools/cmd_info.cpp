// engram info MODEL: metadata, tensor table, parameter count and the memory
// a run needs (weights + KV cache).
#include <algorithm>
#include <cstdio>
#include <memory>

#include "commands.h"
#include "common.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "runtime/generate.h"

namespace engram::tools {
namespace {

struct InfoOptions {
  std::string positional;
  std::string model;
  int64_t ctx_size = 0;
  int threads = 0;
};

// 1536 -> "1.50 KiB"
std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

// 292352 -> "292.35K"
std::string human_count(double n) {
  const char* units[] = {"", "K", "M", "B", "T"};
  int u = 0;
  while (n >= 1000 && u < 4) {
    n /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f%s" : "%.2f%s", n, units[u]);
  return buf;
}

std::string type_text(const gguf::Value& v) {
  if (!v.is_array()) return std::string(gguf::value_type_name(v.type));
  return "arr[" + std::string(gguf::value_type_name(v.array_type)) + "," + std::to_string(v.array_size()) + "]";
}

std::string shape_text(const gguf::TensorInfo& t) {
  std::string s;
  for (int d = 0; d < std::max(t.n_dims, 1); ++d) {
    if (d) s += " x ";
    s += std::to_string(t.ne[static_cast<size_t>(d)]);
  }
  return s;
}

void print_file(const gguf::File& f) {
  std::printf("file: %s (GGUF v%u, %s, alignment %llu)\n", f.path().c_str(), f.version(),
              human_bytes(static_cast<double>(f.file_size())).c_str(),
              static_cast<unsigned long long>(f.alignment()));

  std::printf("\nmetadata: %zu keys\n", f.metadata().size());
  size_t key_w = 10;
  for (const auto& [key, value] : f.metadata()) key_w = std::max(key_w, key.size());
  for (const auto& [key, value] : f.metadata()) {
    std::string text = value.to_string(8);
    if (text.size() > 160) text = text.substr(0, 157) + "...";
    std::printf("  %-*s  %-16s  %s\n", static_cast<int>(key_w), key.c_str(), type_text(value).c_str(), text.c_str());
  }

  std::printf("\ntensors: %zu\n", f.tensors().size());
  size_t name_w = 4;
  for (const auto& t : f.tensors()) name_w = std::max(name_w, t.name.size());
  std::printf("  %-*s  %-6s  %-20s  %12s\n", static_cast<int>(name_w), "name", "type", "shape", "bytes");
  uint64_t params = 0, bytes = 0;
  for (const auto& t : f.tensors()) {
    std::printf("  %-*s  %-6s  %-20s  %12llu\n", static_cast<int>(name_w), t.name.c_str(),
                std::string(type_traits(t.type).name).c_str(), shape_text(t).c_str(),
                static_cast<unsigned long long>(t.n_bytes));
    params += static_cast<uint64_t>(t.n_elements());
    bytes += t.n_bytes;
  }
  std::printf("\nparameters: %llu (%s)\n", static_cast<unsigned long long>(params),
              human_count(static_cast<double>(params)).c_str());
  std::printf("weights:    %s\n", human_bytes(static_cast<double>(bytes)).c_str());
}

int run(const InfoOptions& o) {
  auto path = resolve_model_path(!o.positional.empty() ? o.positional : o.model);
  if (!path) return fail(path.error().message);
  auto file = gguf::File::open(*path);
  if (!file) return fail(file.error().message);
  print_file(*file);
  std::fflush(stdout);

  if (file->tensors().empty()) {
    std::printf("no tensors: a vocabulary-only file\n");
    return 0;
  }
  // The KV cache size depends on the architecture: ask the model.
  auto model = Model::load(*path);
  if (!model) {
    std::printf("memory: unknown, engram cannot load this model: %s\n", model.error().message.c_str());
    return 0;
  }
  const Model& m = **model;
  const int64_t n_ctx = resolve_context(m.config(), o.ctx_size);
  const double per_token = static_cast<double>(m.kv_bytes_per_token());
  const double kv = per_token * static_cast<double>(n_ctx);
  std::printf("architecture: %s, %d layers, n_embd %d, %d heads (%d KV), context %lld (trained %lld)\n",
              m.config().arch.c_str(), m.config().n_layer, m.config().n_embd, m.config().n_head,
              m.config().n_head_kv, static_cast<long long>(n_ctx), static_cast<long long>(m.config().n_ctx_train));
  if (m.active_parameter_count() != m.parameter_count())  // mixture of experts: only routed experts run
    std::printf("active:     %llu (%s) parameters per token, of %llu\n",
                static_cast<unsigned long long>(m.active_parameter_count()),
                human_count(static_cast<double>(m.active_parameter_count())).c_str(),
                static_cast<unsigned long long>(m.parameter_count()));
  std::printf("KV cache:   %s per token, %s at context %lld (f32)\n", human_bytes(per_token).c_str(),
              human_bytes(kv).c_str(), static_cast<long long>(n_ctx));
  // MLA stores one latent per token (values = its first v_dim entries); say
  // what full per-head K/V of the same width would cost.
  const MemoryLayout layout = m.memory_layout(1);
  const double full_per_token = static_cast<double>(m.full_kv_bytes_per_token());
  if (layout.values_in_keys && per_token > 0.0)
    std::printf("            latent: %d values per layer (%d + %d rope); full K/V of %d heads: %s per token (%.1fx)\n",
                layout.n_kv_head * layout.k_dim, layout.v_dim, layout.k_dim - layout.v_dim, m.config().n_head,
                human_bytes(full_per_token).c_str(), full_per_token / per_token);
  std::printf("memory:     %s (weights %s + KV %s)\n",
              human_bytes(static_cast<double>(m.weight_bytes()) + kv).c_str(),
              human_bytes(static_cast<double>(m.weight_bytes())).c_str(), human_bytes(kv).c_str());
  return 0;
}

}  // namespace

Command add_info_command(CLI::App& parent) {
  auto o = std::make_shared<InfoOptions>();
  CLI::App* app = parent.add_subcommand("info", "Show a GGUF file's metadata, tensors and memory needs");
  app->add_option("model", o->positional, "GGUF file");
  add_model_option(app, o->model);
  app->add_option("-c,--ctx-size", o->ctx_size, "Context length for the KV estimate (0: the model's, at most 4096)")
      ->check(CLI::NonNegativeNumber);
  add_threads_option(app, o->threads);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
