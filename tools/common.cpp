#include "common.h"

#include <charconv>
#include <cstdio>
#include <filesystem>

namespace engram::tools {

std::string default_model_path() {
#ifdef ENGRAM_SOURCE_DIR
  const std::filesystem::path p = std::filesystem::path(ENGRAM_SOURCE_DIR) / "models" / "engram.gguf";
  std::error_code ec;
  if (std::filesystem::is_regular_file(p, ec)) return p.string();
#endif
  return "";
}

Expected<std::string> resolve_model_path(const std::string& given) {
  if (!given.empty()) return given;
  std::string def = default_model_path();
  if (!def.empty()) return def;
  return make_error("-m/--model is required (no default models/engram.gguf in the source tree)");
}

int fail(const std::string& message) {
  std::fprintf(stderr, "engram: error: %s\n", message.c_str());
  return 1;
}

void add_threads_option(CLI::App* app, int& threads) {
  app->add_option("-t,--threads", threads, "Threads to use (0 = all cores)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
}

void add_model_option(CLI::App* app, std::string& model) {
  app->add_option("-m,--model", model, "Model file (GGUF); default: models/engram.gguf in the source tree");
}

Expected<std::vector<TokenId>> parse_token_ids(const std::string& text) {
  std::vector<TokenId> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string item = text.substr(pos, comma - pos);
    const size_t b = item.find_first_not_of(" \t");
    const size_t e = item.find_last_not_of(" \t");
    item = b == std::string::npos ? "" : item.substr(b, e - b + 1);
    TokenId id = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size()) {
      return make_error("malformed token id list '", text, "': '", item,
                        "' is not a token id (expected comma-separated integers, e.g. 1,403,407)");
    }
    ids.push_back(id);
    pos = comma + 1;
  }
  return ids;
}

Status check_token_ids(const std::vector<TokenId>& ids, int n_vocab) {
  for (TokenId id : ids) {
    if (id < 0 || id >= n_vocab) {
      return make_error("token id ", std::to_string(id), " is out of range: the vocabulary has ",
                        std::to_string(n_vocab), " tokens (ids 0..", std::to_string(n_vocab - 1), ")");
    }
  }
  return Status::ok();
}

std::string join_ids(const std::vector<TokenId>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(ids[i]);
  }
  return s;
}

}  // namespace engram::tools
