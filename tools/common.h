// Helpers shared by the subcommands: the default model path, error printing,
// the options every command takes, token id lists.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "tokenizer/tokenizer.h"
#include "util/status.h"

namespace engram::tools {

// models/engram.gguf in the source tree when it exists.
std::string default_model_path();

// `given` if not empty, else the default model, else an Error saying -m is required.
Expected<std::string> resolve_model_path(const std::string& given);

// Prints "engram: error: <message>" on stderr; returns the exit code 1.
int fail(const std::string& message);

// -t/--threads N (0 = all cores).
void add_threads_option(CLI::App* app, int& threads);
// -m/--model FILE.
void add_model_option(CLI::App* app, std::string& model);

// "1,2, 3" -> {1, 2, 3}. Error naming the bad item for anything else.
Expected<std::vector<TokenId>> parse_token_ids(const std::string& text);

// Error when an id is outside [0, n_vocab).
Status check_token_ids(const std::vector<TokenId>& ids, int n_vocab);

// "1 2 3"
std::string join_ids(const std::vector<TokenId>& ids);

}  // namespace engram::tools
