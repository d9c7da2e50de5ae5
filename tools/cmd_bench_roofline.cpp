// engram bench roofline [-m MODEL] [-t N]: this machine's memory read
// bandwidth and compute peaks, and, for a model, how close generation comes
// to the bandwidth limit (weight bytes per token / time per token / bandwidth).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "bench_speed.h"
#include "cmd_bench.h"
#include "kernels/kernels.h"
#include "kernels/peak.h"

namespace engram::tools {
namespace {

struct RooflineOptions {
  std::string model, json;
  int threads = 0, n_gen = 128, reps = 3;
  int buffer_mib = 1024;
  int runs = 5;
  LoadMode load = LoadMode::kAuto;
};

// Touches every word of the buffer from the thread that reads that slice
// later (NUMA-friendly first touch), so no pass pays for page faults.
void touch_slices(ThreadPool& pool, uint64_t* words, size_t n_words) {
  const size_t n_threads = static_cast<size_t>(pool.size());
  pool.parallel_for(n_threads, [&](size_t begin, size_t end, int) {
    for (size_t t = begin; t < end; ++t) {
      const size_t lo = n_words * t / n_threads, hi = n_words * (t + 1) / n_threads;
      for (size_t i = lo; i < hi; ++i) words[i] = i;
    }
  });
}

// Best read bandwidth (bytes/s) over `runs` passes: each thread sums its own
// contiguous slice of `words`, a buffer much larger than the last-level cache.
double measure_bandwidth(ThreadPool& pool, const uint64_t* words, size_t n_words, int runs, uint64_t* checksum) {
  const size_t n_threads = static_cast<size_t>(pool.size());
  std::vector<uint64_t> sums(n_threads, 0);
  double best = 0;
  for (int r = 0; r < runs; ++r) {
    const auto t0 = Clock::now();
    pool.parallel_for(n_threads, [&](size_t begin, size_t end, int) {
      for (size_t t = begin; t < end; ++t) {
        const size_t lo = n_words * t / n_threads, hi = n_words * (t + 1) / n_threads;
        sums[t] = kernels::sum_words(words + lo, hi - lo);
      }
    });
    best = std::max(best, static_cast<double>(n_words * sizeof(uint64_t)) / seconds_since(t0));
  }
  for (uint64_t s : sums) *checksum += s;
  return best;
}

struct Bandwidth {
  double small_pages = 0;  // bytes/s through ordinary (usually 4 KiB) pages
  double huge_pages = 0;   // bytes/s through memory advised as 2 MiB pages
  double best() const { return std::max(small_pages, huge_pages); }
};

// Two read buffers, one per page size (weights loaded with --load mmap see
// the first, --load copy the second), allocated and touched once: the
// paired runs measure again before every generation repetition.
class BandwidthProbe {
 public:
  static Expected<BandwidthProbe> create(ThreadPool& pool, size_t bytes) {
    BandwidthProbe p;
    p.n_words_ = bytes / sizeof(uint64_t);
    p.small_.reset(new uint64_t[p.n_words_]);
    Expected<HugePageBuffer> huge = HugePageBuffer::allocate(p.n_words_ * sizeof(uint64_t));
    if (!huge) return make_error("bench roofline: bandwidth buffer: ", huge.error().message);
    p.huge_ = std::move(*huge);
    touch_slices(pool, p.small_.get(), p.n_words_);
    touch_slices(pool, p.huge_words(), p.n_words_);
    return p;
  }

  Bandwidth measure(ThreadPool& pool, int runs, uint64_t* checksum) const {
    return {measure_bandwidth(pool, small_.get(), n_words_, runs, checksum),
            measure_bandwidth(pool, huge_words(), n_words_, runs, checksum)};
  }

 private:
  uint64_t* huge_words() const { return reinterpret_cast<uint64_t*>(huge_.data()); }

  size_t n_words_ = 0;
  std::unique_ptr<uint64_t[]> small_;
  HugePageBuffer huge_;
};

// Best operations/s of `loop` run on every thread at once, over 3 runs.
template <class Loop>
double measure_peak(ThreadPool& pool, size_t rounds, Loop loop) {
  const size_t n_threads = static_cast<size_t>(pool.size());
  std::vector<double> ops(n_threads, 0);
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    const auto t0 = Clock::now();
    pool.parallel_for(n_threads, [&](size_t begin, size_t end, int) {
      for (size_t t = begin; t < end; ++t) ops[t] = loop(rounds);
    });
    const double s = seconds_since(t0);
    double total = 0;
    for (double o : ops) total += o;
    best = std::max(best, total / s);
  }
  return best;
}

// One generation repetition and the bandwidth measured just before it: on a
// shared machine the bandwidth on offer drifts by a third within minutes, so
// a fraction whose two sides were measured minutes apart says little. Here
// they are seconds apart (measure_speed warms up with one generation first).
struct PairedRun {
  double bandwidth = 0;     // bytes/s, best over both page sizes
  double tokens_per_s = 0;  // generation
  double fraction = 0;      // weight bytes per token * tokens_per_s / bandwidth
};

Expected<std::vector<PairedRun>> measure_paired(Model& model, ThreadPool& pool, const RooflineOptions& o,
                                                const BandwidthProbe& probe, uint64_t bytes_per_token,
                                                uint64_t* checksum) {
  std::vector<PairedRun> runs;
  for (int r = 0; r < o.reps; ++r) {
    const Bandwidth bw = probe.measure(pool, o.runs, checksum);
    auto tests = measure_speed(model, pool, 0, o.n_gen, 1, 1, 42 + static_cast<uint64_t>(r));
    if (!tests) return make_error(tests.error().message);
    PairedRun run;
    run.bandwidth = bw.best();
    run.tokens_per_s = tests->front().median_ts;
    run.fraction = static_cast<double>(bytes_per_token) * run.tokens_per_s / run.bandwidth;
    runs.push_back(run);
  }
  return runs;
}

// Generation against the bandwidth limit: the median repetition against the
// best bandwidth seen at the start, and each repetition against the
// bandwidth measured just before it (the median of those fractions).
struct ModelRoofline {
  SpeedTest tg;
  uint64_t bytes_per_token = 0;
  double achieved = 0;   // bytes/s at the median repetition
  double fraction = 0;   // achieved / the bandwidth measured at the start
  std::vector<PairedRun> paired;
  double paired_fraction = 0, paired_bandwidth = 0;  // medians over `paired`
};

Expected<ModelRoofline> measure_model(Model& model, ThreadPool& pool, const RooflineOptions& o,
                                      const BandwidthProbe& probe, double bandwidth, uint64_t* checksum) {
  auto tests = measure_speed(model, pool, 0, o.n_gen, o.reps, 1, 42);
  if (!tests) return make_error(tests.error().message);
  ModelRoofline m;
  m.tg = tests->front();
  m.bytes_per_token = weight_bytes_per_token(model.file());
  m.achieved = static_cast<double>(m.bytes_per_token) * m.tg.median_ts;
  m.fraction = m.achieved / bandwidth;
  auto paired = measure_paired(model, pool, o, probe, m.bytes_per_token, checksum);
  if (!paired) return make_error(paired.error().message);
  m.paired = std::move(*paired);
  std::vector<double> fractions, bandwidths;
  for (const PairedRun& r : m.paired) {
    fractions.push_back(r.fraction);
    bandwidths.push_back(r.bandwidth);
  }
  m.paired_fraction = median(fractions);
  m.paired_bandwidth = median(bandwidths);
  return m;
}

void print_model(const ModelRoofline& m, Model& model, const std::string& model_path, double bandwidth) {
  const auto bytes = static_cast<double>(m.bytes_per_token);
  std::printf("model:                 %s (%s; weights: %s)\n", model_path.c_str(),
              model_type_name(model.file()).c_str(), load_mode_name(model.file().load_mode()));
  std::printf("weight bytes / token:  %.2f MiB (active parameters %.2f M of %.2f M)\n", bytes / (1024.0 * 1024.0),
              static_cast<double>(model.active_parameter_count()) / 1e6,
              static_cast<double>(model.parameter_count()) / 1e6);
  std::printf("%s:                 %.2f t/s median (%.3f ms/token), %zu repetitions\n", m.tg.name.c_str(),
              m.tg.median_ts, 1e3 / m.tg.median_ts, m.tg.tokens_per_s.size());
  std::printf("bandwidth limit:       %.2f t/s\n", bandwidth / bytes);
  std::printf("achieved:              %.2f GB/s = %.1f%% of the measured bandwidth\n", m.achieved / 1e9,
              100.0 * m.fraction);
  const auto by_fraction = [](const PairedRun& a, const PairedRun& b) { return a.fraction < b.fraction; };
  const auto [lo, hi] = std::minmax_element(m.paired.begin(), m.paired.end(), by_fraction);
  std::printf("paired:                %.1f%% median (%.1f%% .. %.1f%%) of the bandwidth measured before each of %zu "
              "repetitions (median %.2f GB/s)\n",
              100.0 * m.paired_fraction, 100.0 * lo->fraction, 100.0 * hi->fraction, m.paired.size(),
              m.paired_bandwidth / 1e9);
}

void add_model_json(const ModelRoofline& m, Model& model, const std::string& model_path, double bandwidth,
                    nlohmann::json& j) {
  j["model"] = model_path;
  j["model_type"] = model_type_name(model.file());
  j["weights_load"] = load_mode_name(model.file().load_mode());
  j["weight_bytes_per_token"] = m.bytes_per_token;
  j["n_params"] = model.parameter_count();
  j["n_active_params"] = model.active_parameter_count();
  j["test"] = m.tg.name;
  j["tg_median_ts"] = m.tg.median_ts;
  j["tg_samples_ts"] = m.tg.tokens_per_s;
  j["seconds_per_token"] = 1.0 / m.tg.median_ts;
  j["bandwidth_limit_ts"] = bandwidth / static_cast<double>(m.bytes_per_token);
  j["achieved_gbs"] = m.achieved / 1e9;
  j["bandwidth_fraction"] = m.fraction;
  j["paired_bandwidth_fraction"] = m.paired_fraction;
  nlohmann::json& runs = j["paired_runs"] = nlohmann::json::array();
  for (const PairedRun& r : m.paired) {
    runs.push_back({{"read_bandwidth_gbs", r.bandwidth / 1e9}, {"tg_ts", r.tokens_per_s}, {"fraction", r.fraction}});
  }
}

int run(const RooflineOptions& o) {
  if (o.buffer_mib < 1) return fail("bench roofline: --buffer-mib must be >= 1");
  if (o.runs < 1 || o.reps < 1 || o.n_gen < 1) return fail("bench roofline: --runs, -r and -n must be >= 1");
  // The model first, so a bad -m fails before the measurements.
  std::unique_ptr<Model> model;
  std::string model_path;
  if (!o.model.empty()) {
    auto path = resolve_model_path(o.model);
    if (!path) return fail(path.error().message);
    auto loaded = Model::load(*path, o.load);
    if (!loaded) return fail(loaded.error().message);
    model = std::move(*loaded);
    model_path = *path;
  }
  ThreadPool pool(o.threads);

  uint64_t checksum = 0;
  Expected<BandwidthProbe> probe = BandwidthProbe::create(pool, static_cast<size_t>(o.buffer_mib) << 20);
  if (!probe) return fail(probe.error().message);
  const Bandwidth bandwidths = probe->measure(pool, o.runs, &checksum);
  const double bandwidth = bandwidths.best();
  volatile float keep_f = 0;
  volatile int32_t keep_i = 0;
  const double fma = measure_peak(pool, 20'000'000, [&](size_t rounds) {
    double flops = 0;
    keep_f = keep_f + kernels::fma_rounds(rounds, &flops);
    return flops;
  });
  const double int8 = measure_peak(pool, 20'000'000, [&](size_t rounds) {
    double ops = 0;
    keep_i = keep_i + kernels::int8_madd_rounds(rounds, &ops);
    return ops;
  });

  nlohmann::json j;
  j["threads"] = pool.size();
  j["kernel_target"] = kernels::active_target();
  j["buffer_bytes"] = static_cast<uint64_t>(o.buffer_mib) << 20;
  j["read_bandwidth_gbs"] = bandwidth / 1e9;
  j["read_bandwidth_small_pages_gbs"] = bandwidths.small_pages / 1e9;
  j["read_bandwidth_huge_pages_gbs"] = bandwidths.huge_pages / 1e9;
  j["huge_pages_available"] = huge_pages_available();
  j["fp32_fma_gflops"] = fma / 1e9;
  j["int8_madd_gops"] = int8 / 1e9;
  std::printf("threads:              %d (kernels: %s)\n", pool.size(), kernels::active_target());
  std::printf("memory read bandwidth: %.2f GB/s (best of %d passes over %d MiB; checksum %llu)\n", bandwidth / 1e9,
              o.runs, o.buffer_mib, static_cast<unsigned long long>(checksum % 1000));
  std::printf("  by page size:        %.2f GB/s small pages, %.2f GB/s huge pages (transparent huge pages %s)\n",
              bandwidths.small_pages / 1e9, bandwidths.huge_pages / 1e9,
              huge_pages_available() ? "available" : "unavailable");
  std::printf("fp32 FMA peak:         %.1f GFLOP/s\n", fma / 1e9);
  std::printf("int8 multiply-add:     %.1f GOP/s (int16 widening multiply-add, as the quantized dot products)\n",
              int8 / 1e9);

  if (model) {
    auto m = measure_model(*model, pool, o, *probe, bandwidth, &checksum);
    if (!m) return fail(m.error().message);
    print_model(*m, *model, model_path, bandwidth);
    add_model_json(*m, *model, model_path, bandwidth, j);
  }
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    if (!(f << j.dump(2) << "\n")) return fail("--json: cannot write '" + o.json + "'");
  }
  return 0;
}

}  // namespace

Command add_bench_roofline_command(CLI::App& bench) {
  auto o = std::make_shared<RooflineOptions>();
  CLI::App* app = bench.add_subcommand(
      "roofline", "Memory bandwidth and compute peaks; with -m, the fraction of the bandwidth limit tg reaches");
  app->add_option("-m,--model", o->model, "GGUF model whose generation to compare with the bandwidth");
  app->add_option("-n,--n-gen", o->n_gen, "Generated tokens per repetition (with -m)")->capture_default_str();
  app->add_option("-r,--repetitions", o->reps,
                  "Timed generation repetitions (with -m); as many again, each after a bandwidth pass")
      ->capture_default_str();
  app->add_option("--buffer-mib", o->buffer_mib, "Bandwidth buffer (MiB, much larger than the last-level cache)")
      ->capture_default_str();
  add_load_option(app, o->load);
  app->add_option("--runs", o->runs, "Bandwidth passes (the best counts)")->capture_default_str();
  app->add_option("--json", o->json, "Write the results as JSON to this file");
  add_threads_option(app, o->threads);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
