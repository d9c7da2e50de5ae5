// engram bench: benchmarks (niah, ppl, speed, roofline), one cmd_bench_*.cpp each.
#include "cmd_bench.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "common.h"
#include "runtime/niah.h"

namespace engram::tools {
namespace {

// The verses as `bible` lists them; error when bible-kjv is not installed.
Expected<std::string> run_bible_listing() {
  std::error_code ec;
  if (!std::filesystem::exists("/usr/lib/bible.data", ec)) {
    return make_error("Debian's bible-kjv-text is not installed (no /usr/lib/bible.data)");
  }
  std::FILE* p = popen("bible -l 100000 gen1:1-rev22:21 2>/dev/null", "r");
  if (p == nullptr) return make_error("cannot run the `bible` program (Debian's bible-kjv)");
  std::string out;
  char buf[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = pclose(p);
  if (rc != 0 || out.empty()) return make_error("the `bible` program (Debian's bible-kjv) failed or is missing");
  return out;
}

}  // namespace

Expected<BenchSetup> load_bench_setup(const std::string& model_flag, const MemoryFlags& flags,
                                      const std::string& default_kinds, int& n_batch) {
  BenchSetup s;
  auto kinds = parse_memory_kinds(flags.kind.empty() ? default_kinds : flags.kind);
  if (!kinds) return kinds.error();
  auto path = resolve_model_path(model_flag);
  if (!path) return path.error();
  auto model = Model::load(*path);
  if (!model) return model.error();
  const int64_t n_ctx_train = (*model)->config().n_ctx_train;
  if (std::any_of(kinds->begin(), kinds->end(), [](const std::string& k) { return k != "dense"; }))
    n_batch = fit_prompt_batch(n_batch, n_ctx_train);
  auto memory = memory_options(flags, n_ctx_train, n_batch);
  if (!memory) return memory.error();
  s.model_path = *path;
  s.model = std::move(*model);
  s.kinds = std::move(*kinds);
  s.memory = std::move(*memory);
  if (!flags.no_remap) s.memory.rotate_keys = s.model->key_rotator();
  return s;
}

Expected<std::vector<std::string>> load_niah_keys(const std::string& keys_file, const std::string& model_path,
                                                  const Tokenizer& tok, int needed) {
  std::vector<std::string> keys;
  std::string file = keys_file;
  if (file.empty()) {
    auto beside = std::filesystem::path(model_path).parent_path() / "engram-keys.txt";
    std::error_code ec;
    if (std::filesystem::is_regular_file(beside, ec)) file = beside.string();
  }
  if (!file.empty()) {
    std::ifstream f(file);
    if (!f) return make_error("--keys: cannot open '", file, "'");
    std::string line;
    while (std::getline(f, line)) {
      for (std::string w; std::istringstream(line) >> w;) {
        keys.push_back(w);
        break;
      }
    }
  } else {
    keys = default_niah_keys();
  }
  std::vector<std::string> single;
  for (const std::string& k : keys) {
    if (encode_continuation(tok, k).size() == 1) single.push_back(k);
  }
  if (static_cast<int>(single.size()) >= std::max(needed, 8)) return single;
  return keys;
}

Expected<std::vector<std::string>> load_text_units(const std::string& path, const std::string& what,
                                                   std::string* source) {
  if (path.empty()) {
    auto listing = run_bible_listing();
    if (!listing) {
      return make_error("no default ", what, " text: ", listing.error().message,
                        "; run scripts/setup.sh (bible-kjv, bible-kjv-text) or pass ", what, " FILE");
    }
    std::vector<std::string> verses = parse_bible_listing(*listing);
    if (verses.empty()) return make_error("the `bible` program listed no verses; pass ", what, " FILE");
    if (source) *source = "KJV (bible-kjv-text)";
    return verses;
  }
  auto text = read_text_file(path, what);
  if (!text) return text.error();
  std::vector<std::string> units = haystack_units(*text);
  if (units.empty()) return make_error(what, ": '", path, "' has no text");
  if (source) *source = path;
  return units;
}

Command add_bench_command(CLI::App& parent) {
  CLI::App* app = parent.add_subcommand("bench", "Benchmarks: needle in a haystack (niah), perplexity (ppl), speed, roofline");
  app->require_subcommand(1);
  auto subs = std::make_shared<std::vector<Command>>();
  subs->push_back(add_bench_niah_command(*app));
  subs->push_back(add_bench_ppl_command(*app));
  subs->push_back(add_bench_speed_command(*app));
  subs->push_back(add_bench_roofline_command(*app));
  return {app, [subs] {
            for (const Command& c : *subs) {
              if (c.app->parsed()) return c.run();
            }
            return fail("bench: no benchmark given (niah, ppl, speed or roofline)");
          }};
}

nlohmann::json memory_options_json(const EngramMemoryOptions& o) {
  return {{"sinks", o.sinks},
          {"window", o.window},
          {"block_size", o.block_size},
          {"top_k", o.top_k},
          {"shared_blocks", o.shared_blocks},
          {"single_query_gap", o.single_query_gap},
          {"remap", static_cast<bool>(o.rotate_keys)},
          {"compression", block_compression_name(o.compression)},
          {"memory_budget_bytes", o.memory_budget_bytes}};
}

}  // namespace engram::tools
