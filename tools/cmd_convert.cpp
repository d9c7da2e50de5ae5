// engram convert-llama2c CHECKPOINT TOKENIZER OUT.gguf
#include <cstdio>
#include <memory>

#include "commands.h"
#include "common.h"
#include "convert/llama2c.h"

namespace engram::tools {
namespace {

struct ConvertOptions {
  std::string checkpoint, tokenizer, out;
  int threads = 0;
};

int run(const ConvertOptions& o) {
  auto summary = convert::convert_llama2c(o.checkpoint, o.tokenizer, o.out);
  if (!summary) return fail(summary.error().message);
  std::printf("%s\n", summary->c_str());
  return 0;
}

}  // namespace

Command add_convert_llama2c_command(CLI::App& parent) {
  auto o = std::make_shared<ConvertOptions>();
  CLI::App* app = parent.add_subcommand("convert-llama2c",
                                        "Convert a llama2.c checkpoint and tokenizer.bin to GGUF (architecture llama)");
  app->add_option("checkpoint", o->checkpoint, "llama2.c model .bin (legacy export, as run.c reads)")->required();
  app->add_option("tokenizer", o->tokenizer, "llama2.c tokenizer .bin")->required();
  app->add_option("out", o->out, "Output GGUF file")->required();
  add_threads_option(app, o->threads);  // accepted for uniformity; conversion is a copy
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
