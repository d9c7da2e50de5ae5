// The OpenAI wire format: parsing and validating request bodies of
// /v1/chat/completions and /v1/completions, errors in OpenAI's shape, and the
// JSON of responses, stream chunks and usage.
//
// Request fields (both endpoints unless marked):
//   model (required), messages (chat: string content or [{type:"text",text}]),
//   prompt (completions: a string, an array of one string, or an array of
//   token ids), max_tokens / max_completion_tokens, temperature, top_p, seed,
//   stop (string or array of at most 4), stream, stream_options.include_usage,
//   n (only 1), presence_penalty (SamplerParams::presence_penalty: subtracted
//   once from the logit of every token in the last 64), frequency_penalty
//   (only 0: the sampler has no per-count penalty), user, logprobs (only
//   false/0/null). llama.cpp extensions: top_k, min_p, repeat_penalty,
//   ignore_eos. Other fields are ignored, as llama.cpp and vLLM do, except
//   tools, response_format and images, which are refused with 400 naming them.
// Sampling fields left out keep SamplerParams' defaults (temperature 0.8,
// top_k 40, top_p 0.95, min_p 0.05), as llama.cpp's server does.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/sampler.h"
#include "server/chat_template.h"
#include "server/pricing.h"

namespace engram::server {

// An error answered as {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;                                         // "" -> null
  std::string code;                                          // "" -> null
  std::vector<std::pair<std::string, std::string>> headers;  // Retry-After, x-ratelimit-*
  nlohmann::json to_json() const;
};

ApiError invalid_request(std::string message, std::string param = "", std::string code = "");

// Parses a request body as a JSON object. The error gives the position of a
// syntax error (line, column and byte) or says that the body is not an object.
std::optional<ApiError> parse_json_body(const std::string& body, nlohmann::json& out);

enum class Endpoint { CHAT, COMPLETIONS };
const char* endpoint_path(Endpoint e);  // "/v1/chat/completions" | "/v1/completions"

struct CompletionParams {
  Endpoint endpoint = Endpoint::CHAT;
  std::string model;
  std::vector<ChatMessage> messages;   // CHAT
  std::string prompt_text;             // COMPLETIONS, unless prompt_is_tokens
  std::vector<TokenId> prompt_tokens;  // COMPLETIONS with prompt_is_tokens (range checked by the caller)
  bool prompt_is_tokens = false;
  int64_t max_tokens = -1;  // < 0: not given (until a stop or a full context)
  SamplerParams sampler;
  bool seed_given = false;  // else the caller draws a random seed
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;
  std::string user;
};

// Reads and validates a request body; errors name the field ("messages[1].content[0].type").
std::optional<ApiError> parse_completion_request(const nlohmann::json& body, Endpoint endpoint, CompletionParams& out);

// JSON text that never throws on invalid UTF-8 in generated text (replaced by U+FFFD).
std::string dump_json(const nlohmann::json& j);

// One Server-Sent Event carrying a JSON object: "data: {...}\n\n".
std::string sse_event(const nlohmann::json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";
inline constexpr const char* kSseKeepAlive = ": keep-alive\n\n";

// The usage object: prompt_tokens, completion_tokens, total_tokens,
// prompt_tokens_details.cached_tokens, completion_tokens_details.reasoning_tokens,
// DeepSeek's prompt_cache_hit_tokens / prompt_cache_miss_tokens, and (an
// engram extension) cost: {usd, multiplier, window, batch}.
nlohmann::json usage_json(const Usage& usage, const Cost* cost = nullptr, bool batch = false);

// Identity shared by a response and all its chunks.
struct ResponseMeta {
  std::string id;       // "chatcmpl-..." | "cmpl-..."
  int64_t created = 0;  // unix seconds
  std::string model;
};

// A whole chat.completion object (non-streaming).
nlohmann::json chat_completion_json(const ResponseMeta& meta, const std::string& content, const std::string& reasoning,
                                    const std::string& finish_reason, const nlohmann::json& usage);
// A chat.completion.chunk with one choice; finish_reason "" -> null. With
// include_usage every chunk carries "usage": null, as OpenAI sends them.
nlohmann::json chat_chunk_json(const ResponseMeta& meta, const nlohmann::json& delta, const std::string& finish_reason,
                               bool include_usage);
// The final usage chunk: "choices": [] and the usage object.
nlohmann::json chat_usage_chunk_json(const ResponseMeta& meta, const nlohmann::json& usage);

// A whole text_completion object, and its stream chunks.
nlohmann::json text_completion_json(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                                    const nlohmann::json& usage);
nlohmann::json text_chunk_json(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                               bool include_usage);
nlohmann::json text_usage_chunk_json(const ResponseMeta& meta, const nlohmann::json& usage);

}  // namespace engram::server
