// Helpers shared by the subcommands: the default model path, error printing,
// the options every command takes, token id lists.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "memory/memory.h"
#include "tokenizer/tokenizer.h"
#include "util/mapped_file.h"
#include "util/status.h"

namespace engram::tools {

using Clock = std::chrono::steady_clock;

// Wall-clock seconds from t0 to now, for the speed figures the commands print.
inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// models/engram.gguf in the source tree when it exists.
std::string default_model_path();

// `given` if not empty, else the default model, else an Error saying -m is required.
Expected<std::string> resolve_model_path(const std::string& given);

// Prints "engram: error: <message>" on stderr; returns the exit code 1.
int fail(const std::string& message);

// The whole file at `path` as bytes; the error names `what` (the flag) and the path.
Expected<std::string> read_text_file(const std::string& path, const std::string& what);

// -t/--threads N (0 = all cores).
void add_threads_option(CLI::App* app, int& threads);
// -m/--model FILE.
void add_model_option(CLI::App* app, std::string& model);
// --load auto|mmap|copy: how the weights are brought into memory (LoadMode).
void add_load_option(CLI::App* app, LoadMode& mode);

// "1,2, 3" -> {1, 2, 3}. Error naming the bad item for anything else.
Expected<std::vector<TokenId>> parse_token_ids(const std::string& text);

// Error when an id is outside [0, n_vocab).
Status check_token_ids(const std::vector<TokenId>& ids, int n_vocab);

// "1 2 3"
std::string join_ids(const std::vector<TokenId>& ids);

// The attention-memory flags of run and the benchmarks.
struct MemoryFlags {
  std::string kind;            // --memory: "" = auto (see choose_memory_kind); benches: a comma list
  EngramMemoryOptions options; // --sinks --window --block-size --top-blocks
  std::string budget;          // --memory-budget, e.g. "2GiB" ("" = no cap)
  std::string compression = "fp16";  // --kv-compression
  bool progress = false;       // --progress: show the prefill progress bar even when stderr is no terminal
  bool no_progress = false;    // --no-progress
  bool no_remap = false;       // --no-remap: keys keep their original positions (window, engram)
  // The options behind --sinks, --window, --block-size, --top-blocks,
  // --shared-blocks, --single-query-gap: those
  // not given are fitted to the model's training context.
  CLI::Option* sinks_option = nullptr;
  CLI::Option* window_option = nullptr;
  CLI::Option* block_size_option = nullptr;
  CLI::Option* top_k_option = nullptr;
  CLI::Option* shared_blocks_option = nullptr;
  CLI::Option* single_query_gap_option = nullptr;
  ExplicitMemoryOptions explicit_fields() const;
};

// Adds --memory, --sinks, --window, --block-size, --top-blocks (benches also
// --top-k: run's --top-k is the sampler's), --memory-budget, --kv-compression,
// --spill-file, --progress, --no-progress, --no-remap. `kind_help` describes --memory.
void add_memory_options(CLI::App* app, MemoryFlags& flags, const std::string& kind_help, bool top_k_alias);

// The EngramMemoryOptions the flags ask for; errors name the flag.
Expected<EngramMemoryOptions> memory_options(const MemoryFlags& flags);
// Same, with the layout flags not given fitted to a model trained at
// n_ctx_train positions (fit_memory_options), for prompt chunks of n_batch.
Expected<EngramMemoryOptions> memory_options(const MemoryFlags& flags, int64_t n_ctx_train, int n_batch);

// The memory to use for a context of n_ctx positions: `requested` when set,
// else dense when the context fits the model's training context (exact, and
// nothing is lost), else engram (dense attention beyond the trained length
// leaves the model's distribution, and its KV grows without bound).
std::string choose_memory_kind(const std::string& requested, int64_t n_ctx, int64_t n_ctx_train);

// "dense,engram" -> {"dense", "engram"}; error names an unknown kind.
Expected<std::vector<std::string>> parse_memory_kinds(const std::string& list);

// Whether to draw the prefill progress bar: --progress, or stderr is a terminal (and not --no-progress).
bool show_progress(const MemoryFlags& flags);

}  // namespace engram::tools
