// /metrics in the Prometheus text exposition format (version 0.0.4), with
// the metric names vLLM uses, so dashboards built for vLLM work unchanged:
//   vllm:num_requests_running, vllm:num_requests_waiting        (gauges)
//   vllm:prompt_tokens_total, vllm:generation_tokens_total       (counters)
//   vllm:prefix_cache_queries_total, vllm:prefix_cache_hits_total (counters, tokens)
//   vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds,
//   vllm:request_queue_time_seconds, vllm:e2e_request_latency_seconds (histograms)
// and engram's own: engram:prefix_cache_disk_hits_total, engram:batch_steps_total,
// engram:multi_sequence_steps_total, engram:max_sequences_per_step.
// Every sample carries the label model_name="<served model id>".
#pragma once

#include <string>

#include "server/engine.h"

namespace engram::server {

std::string format_metrics(const EngineMetrics& metrics, const std::string& model_name);

// A label value with \, " and newlines escaped as the format asks.
std::string escape_label_value(const std::string& value);

}  // namespace engram::server
