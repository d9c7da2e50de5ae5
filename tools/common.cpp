#include "common.h"

#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "runtime/progress.h"

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

Expected<std::string> read_text_file(const std::string& path, const std::string& what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error(what, ": cannot open '", path, "'");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return make_error(what, ": cannot read '", path, "'");
  return ss.str();
}

void add_threads_option(CLI::App* app, int& threads) {
  app->add_option("-t,--threads", threads, "Threads to use (0 = all cores)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
}

void add_model_option(CLI::App* app, std::string& model) {
  app->add_option("-m,--model", model, "Model file (GGUF); default: models/engram.gguf in the source tree");
}

void add_load_option(CLI::App* app, LoadMode& mode) {
  app->add_option_function<std::string>(
         "--load",
         [&mode](const std::string& text) {
           Expected<LoadMode> parsed = parse_load_mode(text);
           if (!parsed) throw CLI::ValidationError("--load", parsed.error().message);
           mode = *parsed;
         },
         "How weights are brought into memory: mmap (shared page cache), copy (private copy in 2 MiB huge "
         "pages: faster generation), auto (copy for models of 256 MiB or more that fit in half the available RAM)")
      ->default_str("auto");
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

void add_memory_options(CLI::App* app, MemoryFlags& f, const std::string& kind_help, bool top_k_alias) {
  app->add_option("--memory", f.kind, kind_help);
  f.sinks_option = app->add_option("--sinks", f.options.sinks, "First positions always attended exactly (window, engram; default fitted to the model's training context)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  f.window_option = app->add_option("--window", f.options.window, "Most recent positions always attended exactly (window, engram; default fitted to the training context)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  f.block_size_option = app->add_option("--block-size", f.options.block_size, "Positions per retrievable block (engram; default fitted to the training context)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  f.top_k_option = app->add_option(top_k_alias ? "--top-blocks,--top-k" : "--top-blocks", f.options.top_k,
                  "Blocks attended per layer and KV head (engram; default fitted to the training context)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  f.shared_blocks_option = app->add_option("--shared-blocks", f.options.shared_blocks,
                  "More blocks per KV head for a single query: the best blocks of the layer's other KV heads "
                  "(engram; 0 = off; default fitted to the training context)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  f.single_query_gap_option = app->add_option("--single-query-gap", f.options.single_query_gap,
                  "Positions left free between the retrieved blocks and the window for a single query (decode), "
                  "so that it sees them as far back as a prompt chunk's last query (engram; default fitted: the "
                  "prompt chunk - 1)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app->add_option("--summary-rows", f.options.summary_rows,
                  "Keys per min/max bound when one query scores blocks (decode); 1 = exact max q.k (engram)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app->add_option("--index-candidates", f.options.index_candidates,
                  "Blocks a single query scores exactly after ranking all by their min/max bound; 0 = every block "
                  "(engram)")
      ->check(CLI::Range(0, 1 << 30))
      ->capture_default_str();
  app->add_option("--rescan-every", f.options.rescan_interval,
                  "Decode steps per full scan of the key index; the steps between score only the blocks the last "
                  "scan ranked best (--rescan-keep) and new ones; 0 = every step (engram)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app->add_option("--rescan-keep", f.options.rescan_keep, "Blocks per KV head a full scan keeps for --rescan-every")
      ->check(CLI::Range(1, 1 << 30))
      ->capture_default_str();
  app->add_option("--memory-budget", f.budget,
                  "RAM cap of the attention memory, e.g. 2GiB; older blocks spill to a file (engram; default: no cap)");
  app->add_option("--kv-compression", f.compression, "Storage of keys and values: fp16 or f32 (dense); of retrievable blocks: f32, fp16 or int8 (engram)")
      ->capture_default_str();
  app->add_option("--spill-file", f.options.spill_path, "Spill file for --memory-budget (default: a temp file)");
  app->add_flag("--progress", f.progress, "Show the prefill progress bar even when stderr is not a terminal");
  app->add_flag("--no-progress", f.no_progress, "Never show the prefill progress bar");
  app->add_flag("--no-remap", f.no_remap,
                "Attend sinks and retrieved blocks at their original positions instead of moving them next to "
                "the window (window, engram)");
}

Expected<EngramMemoryOptions> memory_options(const MemoryFlags& f) {
  EngramMemoryOptions o = f.options;
  auto c = parse_block_compression(f.compression);
  if (!c) return make_error("--kv-compression: ", c.error().message);
  o.compression = *c;
  if (!f.budget.empty()) {
    auto b = parse_byte_size(f.budget);
    if (!b) return make_error("--memory-budget: ", b.error().message);
    o.memory_budget_bytes = static_cast<size_t>(*b);
  }
  return o;
}

ExplicitMemoryOptions MemoryFlags::explicit_fields() const {
  auto given = [](const CLI::Option* o) { return o != nullptr && o->count() > 0; };
  ExplicitMemoryOptions e;
  e.sinks = given(sinks_option);
  e.window = given(window_option);
  e.block_size = given(block_size_option);
  e.top_k = given(top_k_option);
  e.shared_blocks = given(shared_blocks_option);
  e.single_query_gap = given(single_query_gap_option);
  return e;
}

Expected<EngramMemoryOptions> memory_options(const MemoryFlags& flags, int64_t n_ctx_train, int n_batch) {
  auto o = memory_options(flags);
  if (!o) return o;
  return fit_memory_options(*o, flags.explicit_fields(), n_ctx_train, n_batch);
}

std::string choose_memory_kind(const std::string& requested, int64_t n_ctx, int64_t n_ctx_train) {
  if (!requested.empty() && requested != "auto") return requested;
  return (n_ctx_train <= 0 || n_ctx <= n_ctx_train) ? "dense" : "engram";
}

Expected<std::vector<std::string>> parse_memory_kinds(const std::string& list) {
  std::vector<std::string> kinds;
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t comma = list.find(',', pos);
    if (comma == std::string::npos) comma = list.size();
    std::string k = list.substr(pos, comma - pos);
    if (k != "dense" && k != "window" && k != "engram" && k != "auto") {
      return make_error("--memory: unknown memory '", k, "' in '", list, "' (expected dense, window, engram or auto)");
    }
    kinds.push_back(k);
    pos = comma + 1;
  }
  return kinds;
}

bool show_progress(const MemoryFlags& f) {
  if (f.no_progress) return false;
  return f.progress || stderr_is_tty();
}

}  // namespace engram::tools
