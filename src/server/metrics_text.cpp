#include "server/metrics_text.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace engram::server {
namespace {

// Shortest text that reads back as the same double: "0.001", "12", "1234",
// "100.203" (integers in full, never "1e+01").
std::string format_number(double v) {
  char buf[40];
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) return buf;
  }
  return buf;
}

class Writer {
 public:
  explicit Writer(const std::string& model_name) : label_("model_name=\"" + escape_label_value(model_name) + "\"") {}

  void header(const char* name, const char* type, const char* help) {
    out_ += std::string("# HELP ") + name + " " + help + "\n";
    out_ += std::string("# TYPE ") + name + " " + type + "\n";
  }
  void sample(const std::string& name, double value, const std::string& extra_label = "") {
    out_ += name + "{" + label_ + (extra_label.empty() ? "" : "," + extra_label) + "} " + format_number(value) + "\n";
  }
  void gauge(const char* name, const char* help, double value) {
    header(name, "gauge", help);
    sample(name, value);
  }
  void counter(const char* name, const char* help, double value) {
    header(name, "counter", help);
    sample(name, value);
  }
  // Prometheus buckets are cumulative; Histogram keeps per-bucket counts.
  void histogram(const char* name, const char* help, const Histogram& h) {
    header(name, "histogram", help);
    const std::string base = name;
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.bounds.size(); ++i) {
      cumulative += i < h.counts.size() ? h.counts[i] : 0;
      sample(base + "_bucket", static_cast<double>(cumulative), "le=\"" + format_number(h.bounds[i]) + "\"");
    }
    sample(base + "_bucket", static_cast<double>(h.count), "le=\"+Inf\"");
    sample(base + "_sum", h.sum);
    sample(base + "_count", static_cast<double>(h.count));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string label_;
  std::string out_;
};

}  // namespace

std::string escape_label_value(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string format_metrics(const EngineMetrics& m, const std::string& model_name) {
  Writer w(model_name);
  w.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", m.requests_running);
  w.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", m.requests_waiting);
  w.counter("vllm:request_success_total", "Count of finished requests.", static_cast<double>(m.requests_finished));
  w.counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.",
            static_cast<double>(m.prompt_tokens_total));
  w.counter("vllm:generation_tokens_total", "Number of generation tokens processed.",
            static_cast<double>(m.generation_tokens_total));
  w.counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.",
            static_cast<double>(m.prefix_cache_queries));
  w.counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
            static_cast<double>(m.prefix_cache_hits));
  w.counter("engram:prefix_cache_disk_hits_total", "Of the prefix cache hits, tokens loaded from the disk cache.",
            static_cast<double>(m.prefix_cache_disk_hits));
  w.counter("engram:batch_steps_total", "Forward passes of the scheduler.", static_cast<double>(m.batch_steps));
  w.counter("engram:multi_sequence_steps_total", "Forward passes that ran more than one sequence together.",
            static_cast<double>(m.multi_sequence_steps));
  w.gauge("engram:max_sequences_per_step", "The most sequences one forward pass has run.", m.max_sequences_per_step);
  w.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
              m.time_to_first_token);
  w.histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
              m.inter_token_latency);
  w.histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", m.queue_time);
  w.histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", m.request_latency);
  return w.take();
}

}  // namespace engram::server
