// The subcommands of the `engram` binary. Each lives in its own cmd_*.cpp:
// add_*_command registers the subcommand's options on the parent app and
// returns the action to run if that subcommand was chosen.
#pragma once

#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

namespace engram::tools {

struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;  // returns the process exit code
};

Command add_run_command(CLI::App& parent);
Command add_logits_command(CLI::App& parent);
Command add_tokenize_command(CLI::App& parent);
Command add_info_command(CLI::App& parent);
Command add_quantize_command(CLI::App& parent);
Command add_convert_llama2c_command(CLI::App& parent);
Command add_bench_command(CLI::App& parent);
Command add_usage_command(CLI::App& parent);
Command add_demo_command(CLI::App& parent);
Command add_serve_command(CLI::App& parent);
Command add_gen_model_command(CLI::App& parent);

}  // namespace engram::tools
