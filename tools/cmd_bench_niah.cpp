// engram bench niah: needle in a haystack (RULER-style) over a grid of
// context lengths x needle depths, for one or more attention memories.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#ifdef ENGRAM_HAVE_STB
#include <stb_image_write.h>
#endif

#include "cmd_bench.h"
#include "common.h"
#include "model/model.h"
#include "runtime/niah.h"
#include "runtime/progress.h"

namespace engram::tools {
namespace {

struct NiahOptions {
  std::string model;
  std::string haystack;
  std::string keys_file;
  std::string lengths = "4K,32K";
  std::string depths = "0,25,50,75,100";
  std::string task = "single";
  int trials = 5;
  int n_keys = 4;
  int n_values = 4;
  std::string json_out;
  std::string png_out;
  int threads = 0;
  int n_batch = 512;
  uint64_t seed = 2026;
  NiahTemplates templates;
  MemoryFlags memory;
};

// Accumulated results of one (memory, length, depth) cell.
struct Cell {
  std::string memory;          // the kind that ran
  int64_t length = 0;
  double depth = 0;
  int correct = 0, trials = 0;
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  int decoded = 0;
  double decode_seconds = 0;
  double bytes_per_token_sum = 0;
  uint64_t peak_rss = 0;
  std::vector<std::string> failures;  // "key k at token 9000 of 65536: expected 482, got '417.'" (first few)

  double accuracy() const { return trials ? static_cast<double>(correct) / trials : 0; }
  double prefill_tps() const { return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0; }
  double decode_ms() const { return decoded ? 1000.0 * decode_seconds / decoded : 0; }
  double bytes_per_token() const { return trials ? bytes_per_token_sum / trials : 0; }
};

Status write_image(const std::string& path, const RgbImage& img, std::string* written) {
#ifdef ENGRAM_HAVE_STB
  if (!stbi_write_png(path.c_str(), img.width, img.height, 3, img.pixels.data(), img.width * 3)) {
    return make_error("--png: cannot write '", path, "'");
  }
  *written = path;
  return Status::ok();
#else
  // No stb (Debian's libstb-dev): a binary PPM beside the asked name.
  std::string ppm = std::filesystem::path(path).replace_extension(".ppm").string();
  std::ofstream f(ppm, std::ios::binary);
  f << "P6\n" << img.width << " " << img.height << "\n255\n";
  f.write(reinterpret_cast<const char*>(img.pixels.data()), static_cast<std::streamsize>(img.pixels.size()));
  if (!f) return make_error("--png: cannot write '", ppm, "'");
  std::fprintf(stderr, "engram: PNG support needs libstb-dev at build time; wrote a PPM instead: %s\n", ppm.c_str());
  *written = ppm;
  return Status::ok();
#endif
}

int run(NiahOptions& o) {
  auto task = parse_niah_task(o.task);
  if (!task) return fail("--task: " + task.error().message);
  auto lengths = parse_token_counts(o.lengths);
  if (!lengths) return fail("--lengths: " + lengths.error().message);
  auto depths = parse_depths(o.depths);
  if (!depths) return fail("--depths: " + depths.error().message);
  auto setup = load_bench_setup(o.model, o.memory, "engram", o.n_batch);
  if (!setup) return fail(setup.error().message);
  BenchSetup& b = *setup;
  const Tokenizer& tok = b.model->tokenizer();
  const ModelConfig& cfg = b.model->config();

  std::string hay_source;
  auto units = load_text_units(o.haystack, "--haystack", &hay_source);
  if (!units) return fail(units.error().message);
  NiahConfig nc;
  nc.task = *task;
  nc.n_keys = o.n_keys;
  nc.n_values = o.n_values;
  nc.templates = o.templates;
  auto keys = load_niah_keys(o.keys_file, b.model_path, tok, o.n_keys);
  if (!keys) return fail(keys.error().message);
  auto builder = NiahBuilder::create(tok, *units, *keys, nc);
  if (!builder) return fail(builder.error().message);
  std::fprintf(stderr, "niah: %s, task %s, haystack %s (%lld tokens), %zu keys, %d trial(s) per cell\n",
               std::filesystem::path(b.model_path).filename().c_str(), o.task.c_str(), hay_source.c_str(),
               static_cast<long long>(builder->haystack_tokens()), builder->keys().size(), o.trials);

  ThreadPool pool(o.threads);
  const bool bar_on = show_progress(o.memory);
  std::vector<Cell> cells;  // [kind][length][depth]
  for (const std::string& requested : b.kinds) {
    for (size_t li = 0; li < lengths->size(); ++li) {
      const int64_t length = (*lengths)[li];
      const int64_t n_ctx = length + 64;  // room for the answer
      const std::string kind = choose_memory_kind(requested, length, cfg.n_ctx_train);
      auto memory = make_memory(kind, b.model->memory_layout(n_ctx), b.memory);
      if (!memory) return fail("--memory: " + memory.error().message);
      Session session(*b.model, pool, n_ctx, std::move(*memory));
      for (size_t di = 0; di < depths->size(); ++di) {
        Cell cell;
        cell.memory = kind;
        cell.length = length;
        cell.depth = (*depths)[di];
        for (int t = 0; t < o.trials; ++t) {
          auto trial = builder->make_trial(length, cell.depth, niah_trial_seed(o.seed, li, di, t));
          if (!trial) return fail(trial.error().message);
          char label[96];
          std::snprintf(label, sizeof label, "niah %s %s depth %d%% trial %d/%d", kind.c_str(),
                        format_token_count(length).c_str(), static_cast<int>(std::lround(cell.depth * 100)), t + 1,
                        o.trials);
          const bool long_prompt = static_cast<int64_t>(trial->prompt.size()) > o.n_batch;
          ProgressBar bar(label, static_cast<int64_t>(trial->prompt.size()), bar_on && long_prompt);
          auto r = run_niah_trial(session, *trial, o.n_batch, [&](int64_t done, int64_t) {
            bar.update(done, session.memory().bytes_used());
          });
          bar.finish();
          if (!r) return fail(r.error().message);
          ++cell.trials;
          cell.correct += r->correct;
          cell.prompt_tokens += r->n_prompt;
          cell.prefill_seconds += r->prefill_seconds;
          cell.decoded += r->n_decoded;
          cell.decode_seconds += r->decode_seconds;
          cell.bytes_per_token_sum += static_cast<double>(r->memory_bytes) / static_cast<double>(r->n_prompt);
          if (!r->correct && cell.failures.size() < 3) {
            // Where the needle sat (token index of the prompt) tells a
            // retrieval miss from a block boundary cutting the needle.
            cell.failures.push_back("key " + trial->key + " at token " + std::to_string(trial->target_position) +
                                    " of " + std::to_string(r->n_prompt) + ": expected " + trial->answer +
                                    ", got '" + r->generated + "'");
          }
        }
        cell.peak_rss = peak_rss_bytes();
        cells.push_back(cell);
      }
    }
  }

  // Table: one block per memory, depth down, length across.
  const size_t nl = lengths->size(), nd = depths->size();
  std::vector<NiahPanel> panels;
  for (size_t k = 0; k < b.kinds.size(); ++k) {
    const Cell* base = &cells[k * nl * nd];
    std::string title = b.kinds[k];
    std::printf("\nmemory %s, task %s, %d trial(s) per cell: accuracy %% (depth down, length across)\n",
                title.c_str(), o.task.c_str(), o.trials);
    std::printf("%8s", "depth");
    for (size_t l = 0; l < nl; ++l) std::printf(" %8s", format_token_count((*lengths)[l]).c_str());
    std::printf("\n");
    NiahPanel panel;
    panel.title = title;
    for (size_t d = 0; d < nd; ++d) {
      std::printf("%7d%%", static_cast<int>(std::lround((*depths)[d] * 100)));
      std::vector<double> row;
      for (size_t l = 0; l < nl; ++l) {
        const Cell& c = base[l * nd + d];
        std::printf(" %8.1f", 100.0 * c.accuracy());
        row.push_back(c.accuracy());
      }
      std::printf("\n");
      panel.accuracy.push_back(row);
    }
    for (size_t l = 0; l < nl; ++l) {
      int correct = 0, trials = 0;
      int64_t toks = 0;
      double ps = 0, ds = 0, bpt = 0;
      int dec = 0;
      for (size_t d = 0; d < nd; ++d) {
        const Cell& c = base[l * nd + d];
        correct += c.correct;
        trials += c.trials;
        toks += c.prompt_tokens;
        ps += c.prefill_seconds;
        ds += c.decode_seconds;
        dec += c.decoded;
        bpt += c.bytes_per_token_sum;
      }
      std::printf("  %s (%s): accuracy %.1f%% | prefill %.1f tok/s | decode %.2f ms/token | memory %.1f B/token | "
                  "peak RSS %s\n",
                  format_token_count((*lengths)[l]).c_str(), base[l * nd].memory.c_str(),
                  trials ? 100.0 * correct / trials : 0.0, ps > 0 ? static_cast<double>(toks) / ps : 0.0,
                  dec ? 1000.0 * ds / dec : 0.0, trials ? bpt / trials : 0.0,
                  format_bytes(base[l * nd + nd - 1].peak_rss).c_str());
    }
    panels.push_back(std::move(panel));
  }
  std::fflush(stdout);

  if (!o.json_out.empty()) {
    nlohmann::json j;
    j["model"] = b.model_path;
    j["task"] = o.task;
    j["haystack"] = hay_source;
    j["trials_per_cell"] = o.trials;
    j["seed"] = o.seed;
    j["threads"] = pool.size();
    j["n_ctx_train"] = cfg.n_ctx_train;
    j["memory_options"] = memory_options_json(b.memory);
    if (*task == NiahTask::MULTIKEY) j["n_keys"] = o.n_keys;
    if (*task == NiahTask::MULTIVALUE) j["n_values"] = o.n_values;
    j["cells"] = nlohmann::json::array();
    for (const Cell& c : cells) {
      j["cells"].push_back({{"memory", c.memory},
                            {"length", c.length},
                            {"depth", c.depth},
                            {"accuracy", c.accuracy()},
                            {"correct", c.correct},
                            {"trials", c.trials},
                            {"prefill_tokens_per_second", c.prefill_tps()},
                            {"decode_ms_per_token", c.decode_ms()},
                            {"memory_bytes_per_token", c.bytes_per_token()},
                            {"peak_rss_bytes", c.peak_rss},
                            {"failures", c.failures}});
    }
    j["peak_rss_bytes"] = peak_rss_bytes();
    std::ofstream f(o.json_out);
    f << j.dump(1) << "\n";
    if (!f) return fail("--json: cannot write '" + o.json_out + "'");
  }
  if (!o.png_out.empty()) {
    std::string written;
    Status st = write_image(o.png_out, render_niah_heatmap(panels, *depths, *lengths), &written);
    if (!st) return fail(st.message());
  }
  return 0;
}

}  // namespace

Command add_bench_niah_command(CLI::App& bench) {
  auto o = std::make_shared<NiahOptions>();
  CLI::App* app = bench.add_subcommand("niah", "Needle in a haystack (RULER-style): accuracy by length and depth");
  add_model_option(app, o->model);
  app->add_option("--haystack", o->haystack,
                  "Haystack text file, one unit (verse, paragraph) per line (default: the KJV of Debian's bible-kjv)");
  app->add_option("--lengths", o->lengths, "Prompt lengths in tokens (K = 1024, M = 1048576)")->capture_default_str();
  app->add_option("--depths", o->depths, "Depths of the asked needle, percent of the haystack")->capture_default_str();
  app->add_option("--task", o->task, "single, multikey (distractor keys) or multivalue")->capture_default_str();
  app->add_option("--trials", o->trials, "Trials per (length, depth) cell")->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app->add_option("--n-keys", o->n_keys, "multikey: needles (distinct keys), one asked")->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app->add_option("--n-values", o->n_values, "multivalue: values of the asked key")->check(CLI::Range(1, 100))
      ->capture_default_str();
  app->add_option("--keys", o->keys_file,
                  "File of keys, one per line (default: engram-keys.txt beside the model, else built-in nouns)");
  app->add_option("--needle", o->templates.needle, "Needle template ({key}, {value})")->capture_default_str();
  app->add_option("--question", o->templates.question, "Question template ({key}); the answer follows it")
      ->capture_default_str();
  app->add_option("--multi-question", o->templates.multi_question, "Multivalue question template ({key})")
      ->capture_default_str();
  app->add_option("--json", o->json_out, "Write the results as JSON");
  app->add_option("--png", o->png_out, "Write a heatmap (depth x length per memory) as PNG");
  app->add_option("-b,--batch-size", o->n_batch, "Prompt tokens per forward pass")->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("-s,--seed", o->seed, "Seed of the trials (keys, values, haystack offsets)")->capture_default_str();
  add_threads_option(app, o->threads);
  add_memory_options(app, o->memory,
                     "Memories to run side by side, comma-separated: dense, window, engram, auto (default: engram)",
                     /*top_k_alias=*/true);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
