// engram: command-line front end. One subcommand per cmd_*.cpp file.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "common.h"
#include "kernels/kernels.h"

int main(int argc, char** argv) {
  using namespace engram::tools;
  CLI::App app{"engram: LLM inference on the CPU (GGUF models)", "engram"};
  app.require_subcommand(1);
  // Accepted before or after the subcommand (fallthrough), like a global flag.
  app.fallthrough();
  std::string kernel_cap;
  app.add_option("--kernels", kernel_cap,
                 "Cap the SIMD kernels at this target, e.g. AVX2 on an AVX-512 CPU (default: the best the CPU has)")
      ->envname("ENGRAM_KERNELS");
  std::vector<Command> commands = {
      add_run_command(app),     add_logits_command(app),   add_tokenize_command(app),
      add_info_command(app),    add_quantize_command(app), add_convert_llama2c_command(app),
      add_bench_command(app),   add_demo_command(app),
      add_usage_command(app),
      add_serve_command(app),
      add_gen_model_command(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);  // prints the problem (or --help) and gives the exit code
  }
  if (engram::Status capped = engram::kernels::limit_targets(kernel_cap); !capped) return fail(capped.message());
  try {
    for (const Command& c : commands) {
      if (c.app->parsed()) return c.run();
    }
  } catch (const std::bad_alloc&) {
    return fail("out of memory");
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  return fail("no command given");
}
