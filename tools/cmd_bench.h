// Shared pieces of `engram bench niah` and `engram bench ppl`.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "common.h"
#include "memory/memory.h"
#include "model/model.h"
#include "util/status.h"

namespace engram::tools {

// What both benches start from: the model, the memory kinds to compare and the
// memory options (with the model's key rotator unless --no-remap).
struct BenchSetup {
  std::string model_path;
  std::unique_ptr<Model> model;
  std::vector<std::string> kinds;
  EngramMemoryOptions memory;
};
// n_batch (the prompt chunk) is lowered to fit_prompt_batch when a kind
// other than dense runs; memory options not given by flags are fitted to the
// model's training context for that chunk.
Expected<BenchSetup> load_bench_setup(const std::string& model_flag, const MemoryFlags& flags,
                                      const std::string& default_kinds, int& n_batch);

// The memory layout a bench ran with, for its --json output.
nlohmann::json memory_options_json(const EngramMemoryOptions& options);

// Needle keys: keys_file, else engram-keys.txt beside the model, else the
// training code's candidates; the single-token ones are preferred when there
// are at least max(needed, 8) of them. Error names an unreadable file.
Expected<std::vector<std::string>> load_niah_keys(const std::string& keys_file, const std::string& model_path,
                                                  const Tokenizer& tok, int needed);

Command add_bench_niah_command(CLI::App& bench);
Command add_bench_ppl_command(CLI::App& bench);
Command add_bench_speed_command(CLI::App& bench);
Command add_bench_roofline_command(CLI::App& bench);

// Text units (lines) of `path`, or, when path is empty, the King James Bible
// verses of Debian's bible-kjv (`bible` program, bible-kjv-text data) - the
// haystack engram's model is trained on. `what` names the flag in errors.
Expected<std::vector<std::string>> load_text_units(const std::string& path, const std::string& what,
                                                   std::string* source);

}  // namespace engram::tools
