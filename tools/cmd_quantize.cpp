// engram quantize IN OUT TYPE: re-encode a model's weights (llama-quantize's rules).
#include <cstdio>
#include <memory>

#include "commands.h"
#include "common.h"
#include "quant/quant.h"

namespace engram::tools {
namespace {

struct QuantizeOptions {
  std::string in, out, type;
  int threads = 0;
};

int run(const QuantizeOptions& o) {
  auto target = parse_quantize_target(o.type);
  if (!target) return fail(target.error().message);
  auto summary = quantize_model(o.in, o.out, *target, o.threads);
  if (!summary) return fail(summary.error().message);
  std::printf("%s\n", summary->c_str());
  return 0;
}

}  // namespace

Command add_quantize_command(CLI::App& parent) {
  auto o = std::make_shared<QuantizeOptions>();
  CLI::App* app = parent.add_subcommand("quantize", "Quantize a GGUF model: engram quantize IN OUT TYPE");
  app->add_option("in", o->in, "Input GGUF model")->required();
  app->add_option("out", o->out, "Output GGUF file")->required();
  app->add_option("type", o->type, "Target: q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k, f16, bf16")
      ->required();
  add_threads_option(app, o->threads);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
