// engram bench speed -m MODEL [-p 512] [-n 128] [-t N] [-r 5] [--json OUT] [--markdown]:
// prompt-processing and generation tokens/s as llama-bench measures them.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <random>

#include <nlohmann/json.hpp>

#include "bench_speed.h"
#include "cmd_bench.h"
#include "kernels/kernels.h"
#include "runtime/generate.h"

namespace engram::tools {
namespace {

void summarize(SpeedTest& t) {
  const std::vector<double>& ts = t.tokens_per_s;
  if (ts.empty()) return;
  const size_t n = ts.size();
  t.median_ts = median(ts);
  t.min_ts = *std::min_element(ts.begin(), ts.end());
  t.max_ts = *std::max_element(ts.begin(), ts.end());
  double sum = 0, sq = 0;
  for (double v : ts) sum += v;
  t.mean_ts = sum / static_cast<double>(n);
  for (double v : ts) sq += (v - t.mean_ts) * (v - t.mean_ts);
  t.stddev_ts = n > 1 ? std::sqrt(sq / static_cast<double>(n - 1)) : 0.0;
}

// Empties the memory, then fills it with `depth` random tokens (untimed).
Status start_at_depth(Session& s, int depth, int n_batch, std::mt19937_64& rng) {
  s.reset();
  if (depth == 0) return Status::ok();
  std::uniform_int_distribution<TokenId> pick(0, s.n_vocab() - 1);
  std::vector<TokenId> tokens(static_cast<size_t>(depth));
  for (TokenId& t : tokens) t = pick(rng);
  return s.decode(tokens, n_batch);
}

// One pp run: n random tokens after `depth` others. Returns seconds.
Expected<double> run_prompt(Session& s, int n, int depth, int n_batch, std::mt19937_64& rng) {
  std::uniform_int_distribution<TokenId> pick(0, s.n_vocab() - 1);
  std::vector<TokenId> tokens(static_cast<size_t>(n));
  for (TokenId& t : tokens) t = pick(rng);
  ENGRAM_RETURN_IF_ERROR(start_at_depth(s, depth, n_batch, rng));
  const auto t0 = Clock::now();
  ENGRAM_RETURN_IF_ERROR(s.decode(tokens, n_batch));
  return seconds_since(t0);
}

// One tg run: n tokens one at a time after `depth` others. Returns seconds.
Expected<double> run_generation(Session& s, int n, int depth, int n_batch, std::mt19937_64& rng) {
  std::uniform_int_distribution<TokenId> pick(0, s.n_vocab() - 1);
  const TokenId bos = s.tokenizer().bos();
  TokenId token = bos >= 0 && depth == 0 ? bos : pick(rng);
  ENGRAM_RETURN_IF_ERROR(start_at_depth(s, depth, n_batch, rng));
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    ENGRAM_RETURN_IF_ERROR(s.decode(std::span<const TokenId>(&token, 1), 1));
    token = pick(rng);
  }
  return seconds_since(t0);
}

struct SpeedOptions {
  std::string model, json;
  int n_prompt = 512, n_gen = 128, reps = 5, threads = 0, n_batch = 512, n_depth = 0;
  uint64_t seed = 42;
  bool markdown = false;
  std::string kv = "fp16";
  LoadMode load = LoadMode::kAuto;
};

std::string human_size(uint64_t bytes) {
  char buf[32];
  const double mib = static_cast<double>(bytes) / (1024.0 * 1024.0);
  if (mib >= 1024.0) std::snprintf(buf, sizeof buf, "%.2f GiB", mib / 1024.0);
  else std::snprintf(buf, sizeof buf, "%.2f MiB", mib);
  return buf;
}

std::string human_count(uint64_t n) {
  char buf[32];
  if (n >= 1000000000ull) std::snprintf(buf, sizeof buf, "%.2f B", static_cast<double>(n) / 1e9);
  else std::snprintf(buf, sizeof buf, "%.2f M", static_cast<double>(n) / 1e6);
  return buf;
}

uint64_t file_weight_bytes(const gguf::File& f) {
  uint64_t n = 0;
  for (const auto& t : f.tensors()) n += t.n_bytes;
  return n;
}

int run(const SpeedOptions& o) {
  if (o.n_prompt < 0 || o.n_gen < 0) return fail("bench speed: -p and -n must be >= 0");
  if (o.n_prompt == 0 && o.n_gen == 0) return fail("bench speed: nothing to measure (-p 0 and -n 0)");
  if (o.reps < 1) return fail("bench speed: -r must be >= 1");
  if (o.n_batch < 1) return fail("bench speed: --batch must be >= 1");
  if (o.n_depth < 0) return fail("bench speed: -d must be >= 0");
  auto path = resolve_model_path(o.model);
  if (!path) return fail(path.error().message);
  auto model = Model::load(*path, o.load);
  if (!model) return fail(model.error().message);
  ThreadPool pool(o.threads);
  auto kv = parse_block_compression(o.kv);
  if (!kv || *kv == BlockCompression::INT8) return fail("bench speed: --kv: expected fp16 or f32, got '" + o.kv + "'");
  auto tests = measure_speed(**model, pool, o.n_prompt, o.n_gen, o.reps, o.n_batch, o.seed, o.n_depth, *kv);
  if (!tests) return fail(tests.error().message);

  const gguf::File& file = (*model)->file();
  const std::string name = (*model)->config().name.empty() ? *path : (*model)->config().name;
  const std::string type = model_type_name(file);
  const uint64_t size = file_weight_bytes(file);
  const uint64_t params = (*model)->parameter_count();

  if (!o.json.empty()) {
    nlohmann::json j;
    j["model_filename"] = *path;
    j["model_name"] = name;
    j["model_arch"] = (*model)->config().arch;
    j["model_type"] = type;
    j["model_size"] = size;
    j["weights_load"] = load_mode_name(file.load_mode());
    j["model_n_params"] = params;
    j["model_n_active_params"] = (*model)->active_parameter_count();
    j["n_threads"] = pool.size();
    j["n_batch"] = o.n_batch;
    j["kv_type"] = o.kv;
    j["kernel_target"] = kernels::active_target();
    j["tests"] = nlohmann::json::array();
    for (const SpeedTest& t : *tests) {
      nlohmann::json jt;
      jt["test"] = t.name;
      jt["n_prompt"] = t.n_prompt;
      jt["n_gen"] = t.n_gen;
      jt["n_depth"] = t.n_depth;
      jt["samples_s"] = t.seconds;
      jt["samples_ts"] = t.tokens_per_s;
      jt["median_ts"] = t.median_ts;
      jt["mean_ts"] = t.mean_ts;
      jt["stddev_ts"] = t.stddev_ts;
      jt["min_ts"] = t.min_ts;
      jt["max_ts"] = t.max_ts;
      j["tests"].push_back(jt);
    }
    const std::string text = j.dump(2) + "\n";
    if (o.json == "-") {
      std::fputs(text.c_str(), stdout);
    } else {
      std::ofstream f(o.json);
      if (!(f << text)) return fail("--json: cannot write '" + o.json + "'");
    }
  }
  if (o.json != "-" || o.markdown) {
    std::printf("| model | type | size | params | threads | test | t/s (median ± stddev) | min | max |\n");
    std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (const SpeedTest& t : *tests)
      std::printf("| %s | %s | %s | %s | %d | %s | %.2f ± %.2f | %.2f | %.2f |\n", name.c_str(), type.c_str(),
                  human_size(size).c_str(), human_count(params).c_str(), pool.size(), t.name.c_str(), t.median_ts,
                  t.stddev_ts, t.min_ts, t.max_ts);
  }
  return 0;
}

}  // namespace

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 != 0 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

Expected<std::vector<SpeedTest>> measure_speed(Model& model, ThreadPool& pool, int n_prompt, int n_gen, int reps,
                                               int n_batch, uint64_t seed, int n_depth, BlockCompression kv) {
  const int64_t n_ctx = static_cast<int64_t>(n_depth) + std::max(n_prompt, n_gen) + 1;
  const std::string at_depth = n_depth > 0 ? " @ d" + std::to_string(n_depth) : "";
  Session session(model, pool, n_ctx, make_dense_memory(model.memory_layout(resolve_context(model.config(), n_ctx)), kv));
  std::mt19937_64 rng(seed);
  std::vector<SpeedTest> tests;
  if (n_prompt > 0) {
    SpeedTest t;
    t.name = "pp" + std::to_string(n_prompt) + at_depth;
    t.n_prompt = n_prompt;
    t.n_depth = n_depth;
    auto warm = run_prompt(session, n_prompt, n_depth, n_batch, rng);  // also faults in every weight page
    if (!warm) return warm.error();
    for (int r = 0; r < reps; ++r) {
      auto s = run_prompt(session, n_prompt, n_depth, n_batch, rng);
      if (!s) return s.error();
      t.seconds.push_back(*s);
      t.tokens_per_s.push_back(n_prompt / std::max(*s, 1e-12));
    }
    summarize(t);
    tests.push_back(std::move(t));
  }
  if (n_gen > 0) {
    SpeedTest t;
    t.name = "tg" + std::to_string(n_gen) + at_depth;
    t.n_gen = n_gen;
    t.n_depth = n_depth;
    auto warm = run_generation(session, n_gen, n_depth, n_batch, rng);
    if (!warm) return warm.error();
    for (int r = 0; r < reps; ++r) {
      auto s = run_generation(session, n_gen, n_depth, n_batch, rng);
      if (!s) return s.error();
      t.seconds.push_back(*s);
      t.tokens_per_s.push_back(n_gen / std::max(*s, 1e-12));
    }
    summarize(t);
    tests.push_back(std::move(t));
  }
  return tests;
}

uint64_t weight_bytes_per_token(const gguf::File& file) {
  const std::string arch = file.get_string("general.architecture") ? *file.get_string("general.architecture") : "";
  const auto n_expert = file.get_int_or(arch + ".expert_count", 0);
  const auto n_used = file.get_int_or(arch + ".expert_used_count", 0);
  const bool moe = n_expert && n_used && *n_expert > 0 && *n_used > 0;
  const bool tied = file.find_tensor("output.weight") == nullptr;
  uint64_t bytes = 0;
  for (const gguf::TensorInfo& t : file.tensors()) {
    if (t.name == "token_embd.weight" && !tied) {
      const int64_t rows = t.ne[0] > 0 ? t.n_elements() / t.ne[0] : 1;
      bytes += t.n_bytes / static_cast<uint64_t>(std::max<int64_t>(rows, 1));  // one row: the token's embedding
    } else if (moe && t.name.ends_with("_exps.weight")) {
      bytes += t.n_bytes / static_cast<uint64_t>(*n_expert) * static_cast<uint64_t>(*n_used);
    } else {
      bytes += t.n_bytes;
    }
  }
  return bytes;
}

std::string model_type_name(const gguf::File& file) {
  static const std::pair<int64_t, const char*> kFileTypes[] = {
      {0, "f32"},     {1, "f16"},     {2, "q4_0"},    {3, "q4_1"},    {7, "q8_0"},    {8, "q5_0"},
      {9, "q5_1"},    {10, "q2_k"},   {11, "q3_k_s"}, {12, "q3_k_m"}, {13, "q3_k_l"}, {14, "q4_k_s"},
      {15, "q4_k_m"}, {16, "q5_k_s"}, {17, "q5_k_m"}, {18, "q6_k"},   {32, "bf16"}};
  if (auto ft = file.get_int("general.file_type"))
    for (const auto& [id, name] : kFileTypes)
      if (id == *ft) return name;
  std::map<GgmlType, uint64_t> bytes;
  for (const auto& t : file.tensors()) bytes[t.type] += t.n_bytes;
  GgmlType most = GgmlType::F32;
  uint64_t best = 0;
  for (const auto& [type, n] : bytes)
    if (n > best) best = n, most = type;
  return std::string(type_traits(most).name);
}

Command add_bench_speed_command(CLI::App& bench) {
  auto o = std::make_shared<SpeedOptions>();
  CLI::App* app = bench.add_subcommand("speed", "Prompt-processing and generation tokens/s (as llama-bench)");
  add_model_option(app, o->model);
  app->add_option("-p,--n-prompt", o->n_prompt, "Prompt tokens of the pp test (0: skip)")->capture_default_str();
  app->add_option("-n,--n-gen", o->n_gen, "Generated tokens of the tg test (0: skip)")->capture_default_str();
  app->add_option("-r,--repetitions", o->reps, "Timed repetitions of each test")->capture_default_str();
  app->add_option("-b,--batch", o->n_batch, "Prompt tokens per forward call")->capture_default_str();
  app->add_option("--kv", o->kv, "KV cache storage: fp16 (as llama-bench's default) or f32")->capture_default_str();
  app->add_option("-d,--n-depth", o->n_depth, "Tokens already in the context (untimed) when each test starts")
      ->capture_default_str();
  app->add_option("--seed", o->seed, "Seed of the random token ids")->capture_default_str();
  app->add_option("--json", o->json, "Write every repetition as JSON to this file ('-': stdout)");
  app->add_flag("--markdown", o->markdown, "Print the markdown table (the default unless --json -)");
  add_load_option(app, o->load);
  add_threads_option(app, o->threads);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
