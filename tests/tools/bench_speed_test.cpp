// engram gen-model, bench speed and bench roofline end to end (tiny models only).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "gguf/gguf.h"
#include "run_engram.h"
#include "test_support.h"

namespace engram {
namespace {

namespace fs = std::filesystem;

using test::run_engram;

// One tiny llama model per test process (q8_0: exercises the quantized path).
const fs::path& tiny_model() {
  static const fs::path path = [] {
    const fs::path p = test::temp_dir("bench-cli") / "tiny-q8_0.gguf";
    auto r = run_engram({"gen-model", "-o", p.string(), "--arch", "llama", "--preset", "tiny", "--type", "q8_0"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return p;
  }();
  return path;
}

TEST(GenModel, WritesModelsThatRun) {
  const fs::path dir = test::temp_dir("bench-cli");
  for (const char* arch : {"llama", "deepseek2"}) {
    const fs::path p = dir / (std::string(arch) + ".gguf");
    auto r = run_engram({"gen-model", "-o", p.string(), "--arch", arch, "--preset", "tiny", "--type", "q4_k_m",
                         "--seed", "3", "-t", "2"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("wrote " + p.string()), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("q4_k_m"), std::string::npos) << r.out;
    auto run = run_engram({"run", "-m", p.string(), "-p", "Once upon a time", "-n", "8", "--temp", "0", "-t", "2"});
    EXPECT_EQ(run.exit_code, 0) << arch << ": " << run.err;
    EXPECT_NE(run.err.find("generated: 8 tokens"), std::string::npos) << run.err;
  }
}

TEST(GenModel, ShapeFlagsOverrideThePreset) {
  const fs::path p = test::temp_dir("bench-cli") / "custom.gguf";
  auto r = run_engram({"gen-model", "-o", p.string(), "--n-embd", "128", "--n-layer", "3", "--n-head", "4",
                       "--n-head-kv", "1", "--n-ff", "256", "--n-vocab", "300", "--n-ctx", "512"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto f = gguf::File::open(p.string());
  ASSERT_TRUE(f.has_value()) << f.error().message;
  EXPECT_EQ(f->get_int("llama.embedding_length").value(), 128);
  EXPECT_EQ(f->get_int("llama.block_count").value(), 3);
  EXPECT_EQ(f->get_int("llama.attention.head_count_kv").value(), 1);
  EXPECT_EQ(f->get_int("llama.feed_forward_length").value(), 256);
  EXPECT_EQ(f->get_int("llama.context_length").value(), 512);
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").value().size(), 300u);
  EXPECT_EQ(f->find_tensor("token_embd.weight")->ne[1], 300);
}

TEST(GenModel, BadFlagsAreClearErrors) {
  const fs::path p = test::temp_dir("bench-cli") / "bad.gguf";
  auto preset = run_engram({"gen-model", "-o", p.string(), "--preset", "huge"});
  EXPECT_EQ(preset.exit_code, 1);
  EXPECT_NE(preset.err.find("unknown preset 'huge'"), std::string::npos) << preset.err;
  auto type = run_engram({"gen-model", "-o", p.string(), "--type", "q3_x"});
  EXPECT_EQ(type.exit_code, 1);
  EXPECT_NE(type.err.find("unknown quantization type 'q3_x'"), std::string::npos) << type.err;
  auto arch = run_engram({"gen-model", "-o", p.string(), "--arch", "mamba"});
  EXPECT_EQ(arch.exit_code, 1);
  EXPECT_NE(arch.err.find("mamba"), std::string::npos) << arch.err;
  auto shape = run_engram({"gen-model", "-o", p.string(), "--n-head", "5"});
  EXPECT_EQ(shape.exit_code, 1);
  EXPECT_NE(shape.err.find("n_head"), std::string::npos) << shape.err;
  auto no_out = run_engram({"gen-model"});
  EXPECT_NE(no_out.exit_code, 0);
  EXPECT_NE(no_out.err.find("--output"), std::string::npos) << no_out.err;
  EXPECT_FALSE(fs::exists(p));
}

TEST(BenchSpeed, PrintsTheTableAndJsonWithEveryRepetition) {
  const fs::path json = test::temp_dir("bench-cli") / "speed.json";
  auto r = run_engram({"bench", "speed", "-m", tiny_model().string(), "-p", "16", "-n", "4", "-r", "3", "-t", "2",
                       "--json", json.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| model | type | size | params | threads | test |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| pp16 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| tg4 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| q8_0 |"), std::string::npos) << r.out;

  const auto j = nlohmann::json::parse(test::read_text_file(json));
  EXPECT_EQ(j["n_threads"], 2);
  EXPECT_EQ(j["model_type"], "q8_0");
  ASSERT_EQ(j["tests"].size(), 2u);
  for (const auto& t : j["tests"]) {
    ASSERT_EQ(t["samples_ts"].size(), 3u) << t.dump();
    ASSERT_EQ(t["samples_s"].size(), 3u) << t.dump();
    double lo = 1e300, hi = 0;
    for (const auto& v : t["samples_ts"]) {
      EXPECT_GT(v.get<double>(), 0.0);
      lo = std::min(lo, v.get<double>());
      hi = std::max(hi, v.get<double>());
    }
    EXPECT_DOUBLE_EQ(t["min_ts"].get<double>(), lo);
    EXPECT_DOUBLE_EQ(t["max_ts"].get<double>(), hi);
    EXPECT_GE(t["median_ts"].get<double>(), lo);
    EXPECT_LE(t["median_ts"].get<double>(), hi);
  }
  EXPECT_EQ(j["tests"][0]["test"], "pp16");
  EXPECT_EQ(j["tests"][0]["n_prompt"], 16);
  EXPECT_EQ(j["tests"][1]["test"], "tg4");
  EXPECT_EQ(j["tests"][1]["n_gen"], 4);
}

TEST(BenchSpeed, JsonOnStdoutAndErrors) {
  auto r = run_engram({"bench", "speed", "-m", tiny_model().string(), "-p", "0", "-n", "2", "-r", "1", "--json", "-"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);  // only JSON on stdout
  ASSERT_EQ(j["tests"].size(), 1u);
  EXPECT_EQ(j["tests"][0]["test"], "tg2");

  auto missing = run_engram({"bench", "speed", "-m", "/no/such/model.gguf"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("/no/such/model.gguf"), std::string::npos) << missing.err;
  auto reps = run_engram({"bench", "speed", "-m", tiny_model().string(), "-r", "0"});
  EXPECT_EQ(reps.exit_code, 1);
  EXPECT_NE(reps.err.find("-r"), std::string::npos) << reps.err;
}

TEST(BenchSpeed, KernelsFlagCapsTheSimdTarget) {
  // An unknown target is refused with the list of those this CPU can use.
  auto bad = run_engram({"bench", "speed", "-m", tiny_model().string(), "-r", "1", "--kernels", "PDP11"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("PDP11"), std::string::npos) << bad.err;
  const size_t open = bad.err.rfind('('), close = bad.err.rfind(')');
  ASSERT_TRUE(open != std::string::npos && close != std::string::npos && open < close) << bad.err;
  const std::string list = bad.err.substr(open + 1, close - open - 1);
  const size_t last_comma = list.rfind(", ");
  const std::string worst = last_comma == std::string::npos ? list : list.substr(last_comma + 2);
  // The worst one, given before or after the subcommand, is what the JSON reports.
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--kernels", worst, "bench", "speed"},
        std::vector<std::string>{"bench", "speed", "--kernels", worst}}) {
    std::vector<std::string> full = args;
    for (const char* a : {"-p", "0", "-n", "2", "-r", "1", "--json", "-"}) full.push_back(a);
    full.insert(full.end(), {"-m", tiny_model().string()});
    auto r = run_engram(full);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["kernel_target"], worst);
  }
}

TEST(BenchRoofline, MeasuresPositivePeaksAndTheModelsBandwidthFraction) {
  const fs::path json = test::temp_dir("bench-cli") / "roofline.json";
  auto r = run_engram({"bench", "roofline", "-m", tiny_model().string(), "-t", "2", "--buffer-mib", "64", "--runs",
                       "2", "-n", "4", "-r", "2", "--json", json.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("memory read bandwidth"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("measured before each of 2 repetitions"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("% of the measured bandwidth"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(test::read_text_file(json));
  EXPECT_GT(j["read_bandwidth_gbs"].get<double>(), 0.1);
  EXPECT_GT(j["fp32_fma_gflops"].get<double>(), 0.1);
  EXPECT_GT(j["int8_madd_gops"].get<double>(), 0.1);
  EXPECT_GT(j["bandwidth_fraction"].get<double>(), 0.0);
  EXPECT_GT(j["tg_median_ts"].get<double>(), 0.0);

  // Bytes per token, computed here from the file: all tensors but token_embd,
  // plus one row of it.
  auto f = gguf::File::open(tiny_model().string());
  ASSERT_TRUE(f.has_value());
  uint64_t expected = 0;
  for (const auto& t : f->tensors())
    expected += t.name == "token_embd.weight" ? t.n_bytes / static_cast<uint64_t>(t.ne[1]) : t.n_bytes;
  EXPECT_EQ(j["weight_bytes_per_token"].get<uint64_t>(), expected);

  // Each repetition against the bandwidth measured just before it; the
  // reported fraction is the median (of two: their mean).
  const auto& runs = j["paired_runs"];
  ASSERT_EQ(runs.size(), 2u);
  double sum = 0;
  for (const auto& run : runs) {
    const double fraction = static_cast<double>(expected) * run["tg_ts"].get<double>() /
                            (run["read_bandwidth_gbs"].get<double>() * 1e9);
    EXPECT_NEAR(run["fraction"].get<double>(), fraction, 1e-9 * fraction);
    sum += fraction;
  }
  EXPECT_NEAR(j["paired_bandwidth_fraction"].get<double>(), sum / 2, 1e-9 * sum);
}

TEST(BenchRoofline, MoeModelsCountOnlyTheActiveExperts) {
  const fs::path dir = test::temp_dir("bench-cli");
  const fs::path p = dir / "ds.gguf";
  ASSERT_EQ(run_engram({"gen-model", "-o", p.string(), "--arch", "deepseek2", "--preset", "tiny"}).exit_code, 0);
  const fs::path json = dir / "roofline-ds.json";
  auto r = run_engram({"bench", "roofline", "-m", p.string(), "--buffer-mib", "16", "--runs", "1", "-n", "2", "-r",
                       "1", "--json", json.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto f = gguf::File::open(p.string());
  ASSERT_TRUE(f.has_value());
  const uint64_t n_expert = static_cast<uint64_t>(f->get_int("deepseek2.expert_count").value());
  const uint64_t n_used = static_cast<uint64_t>(f->get_int("deepseek2.expert_used_count").value());
  uint64_t expected = 0, total = 0;
  for (const auto& t : f->tensors()) {
    total += t.n_bytes;
    if (t.name == "token_embd.weight") expected += t.n_bytes / static_cast<uint64_t>(t.ne[1]);
    else if (t.name.find("_exps.") != std::string::npos) expected += t.n_bytes / n_expert * n_used;
    else expected += t.n_bytes;
  }
  const auto j = nlohmann::json::parse(test::read_text_file(json));
  EXPECT_EQ(j["weight_bytes_per_token"].get<uint64_t>(), expected);
  EXPECT_LT(expected, total);
}

TEST(BenchRoofline, MissingModelIsAnError) {
  auto r = run_engram({"bench", "roofline", "-m", "/no/such/model.gguf"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/no/such/model.gguf"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace engram
