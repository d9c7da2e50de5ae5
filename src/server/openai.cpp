#include "server/openai.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace engram::server {

using nlohmann::json;

// ---------------------------------------------------------------- errors

json ApiError::to_json() const {
  json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return json{{"error", e}};
}

ApiError invalid_request(std::string message, std::string param, std::string code) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

std::optional<ApiError> parse_json_body(const std::string& body, json& out) {
  try {
    out = json::parse(body);
  } catch (const json::parse_error& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 9: ..." -> drop the library's tag.
    std::string what = e.what();
    const size_t tag_end = what.find("] ");
    if (what.rfind("[json.exception", 0) == 0 && tag_end != std::string::npos) what = what.substr(tag_end + 2);
    return invalid_request("Invalid JSON body: " + what + " (byte " + std::to_string(e.byte) + ")", "", "invalid_json");
  }
  if (!out.is_object()) {
    return invalid_request(std::string("The request body must be a JSON object, got ") + out.type_name(), "",
                           "invalid_json");
  }
  return std::nullopt;
}

const char* endpoint_path(Endpoint e) { return e == Endpoint::CHAT ? "/v1/chat/completions" : "/v1/completions"; }

// ---------------------------------------------------------------- request fields

namespace {

// A value for an error message: scalars as JSON, containers by their kind
// (dumping a deeply nested one could exhaust the stack).
std::string short_dump(const json& v) {
  if (v.is_array()) return "an array of " + std::to_string(v.size());
  if (v.is_object()) return "an object";
  std::string s = dump_json(v);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

ApiError wrong_type(const std::string& field, const std::string& expected, const json& got) {
  return invalid_request(
      "Invalid type for '" + field + "': expected " + expected + ", got " + got.type_name() + " " + short_dump(got),
      field, "invalid_type");
}

ApiError out_of_range(const std::string& field, const std::string& range, const json& got) {
  return invalid_request("Invalid value for '" + field + "': expected " + range + ", got " + short_dump(got), field,
                         "invalid_value");
}

ApiError unsupported(const std::string& field, const std::string& why) {
  return invalid_request("Unsupported value for '" + field + "': " + why, field, "unsupported_value");
}

// A present, non-null field, or nullptr.
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

// Reads an optional number within [lo, hi] into `out`.
std::optional<ApiError> read_number(const json& body, const char* name, double lo, double hi, float& out) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) return wrong_type(name, "a number", *v);
  const double d = v->get<double>();
  if (!std::isfinite(d) || d < lo || d > hi) {
    return out_of_range(name, "a number from " + short_dump(lo) + " to " + short_dump(hi), *v);
  }
  out = static_cast<float>(d);
  return std::nullopt;
}

std::optional<ApiError> read_bool(const json& body, const char* name, bool& out) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) return wrong_type(name, "a boolean", *v);
  out = v->get<bool>();
  return std::nullopt;
}

// An optional integer >= min; `present` says whether it was given.
std::optional<ApiError> read_int(const json& body, const char* name, int64_t min, int64_t& out,
                                 bool* present = nullptr) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  // 5.0 is accepted as 5 (some clients send every number as a double).
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::floor(d) != d || std::fabs(d) > 9.0e18) return wrong_type(name, "an integer", *v);
  } else if (!v->is_number_integer()) {
    return wrong_type(name, "an integer", *v);
  }
  const int64_t i = v->is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v->get<uint64_t>(), INT64_MAX))
                                            : v->get<int64_t>();
  if (i < min) return out_of_range(name, "an integer >= " + std::to_string(min), *v);
  out = i;
  if (present) *present = true;
  return std::nullopt;
}

std::optional<ApiError> read_messages(const json& body, std::vector<ChatMessage>& out) {
  const json* v = field(body, "messages");
  if (!v) return invalid_request("Missing required parameter: 'messages'", "messages", "missing_required_parameter");
  if (!v->is_array()) return wrong_type("messages", "an array of message objects", *v);
  if (v->empty()) return invalid_request("'messages' must contain at least one message", "messages", "invalid_value");
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return wrong_type(where, "an object", m);
    const json* role = field(m, "role");
    if (!role)
      return invalid_request("Missing required parameter: '" + where + ".role'", where + ".role",
                             "missing_required_parameter");
    if (!role->is_string()) return wrong_type(where + ".role", "a string", *role);
    ChatMessage msg;
    msg.role = role->get<std::string>();
    if (msg.role == "developer") msg.role = "system";
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
      return invalid_request("Invalid value for '" + where + ".role': '" + msg.role +
                                 "' (supported: system, developer, user, assistant; tools are not supported)",
                             where + ".role", "invalid_value");
    }
    const json* content = field(m, "content");
    if (!content) {
      if (msg.role != "assistant") {
        return invalid_request("Missing required parameter: '" + where + ".content'", where + ".content",
                               "missing_required_parameter");
      }
    } else if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (size_t j = 0; j < content->size(); ++j) {
        const json& part = (*content)[j];
        const std::string pw = where + ".content[" + std::to_string(j) + "]";
        if (!part.is_object()) return wrong_type(pw, "a content part object", part);
        const json* type = field(part, "type");
        if (!type || !type->is_string()) return wrong_type(pw + ".type", "a string", type ? *type : json());
        const std::string t = type->get<std::string>();
        if (t != "text") {
          return invalid_request(
              "Unsupported content part type '" + t + "' in '" + pw + ".type' (only \"text\" parts are supported)",
              pw + ".type", "unsupported_value");
        }
        const json* text = field(part, "text");
        if (!text || !text->is_string()) return wrong_type(pw + ".text", "a string", text ? *text : json());
        msg.content += text->get<std::string>();
      }
    } else {
      return wrong_type(where + ".content", "a string or an array of content parts", *content);
    }
    out.push_back(std::move(msg));
  }
  return std::nullopt;
}

std::optional<ApiError> read_prompt(const json& body, CompletionParams& out) {
  const json* v = field(body, "prompt");
  if (!v) return invalid_request("Missing required parameter: 'prompt'", "prompt", "missing_required_parameter");
  if (v->is_string()) {
    out.prompt_text = v->get<std::string>();
    return std::nullopt;
  }
  if (!v->is_array()) return wrong_type("prompt", "a string or an array of token ids", *v);
  if (v->empty()) return invalid_request("'prompt' must not be empty", "prompt", "invalid_value");
  if ((*v)[0].is_string()) {
    if (v->size() != 1) return unsupported("prompt", "only one prompt per request (n = 1)");
    out.prompt_text = (*v)[0].get<std::string>();
    return std::nullopt;
  }
  for (size_t i = 0; i < v->size(); ++i) {
    const json& t = (*v)[i];
    if (!t.is_number_integer()) {
      return wrong_type("prompt[" + std::to_string(i) + "]", "a token id (integer)", t);
    }
    const int64_t id = t.get<int64_t>();
    if (id < 0 || id > INT32_MAX) return out_of_range("prompt[" + std::to_string(i) + "]", "a token id", t);
    out.prompt_tokens.push_back(static_cast<TokenId>(id));
  }
  out.prompt_is_tokens = true;
  return std::nullopt;
}

std::optional<ApiError> read_stop(const json& body, std::vector<std::string>& out) {
  const json* v = field(body, "stop");
  if (!v) return std::nullopt;
  if (v->is_string()) {
    if (!v->get<std::string>().empty()) out.push_back(v->get<std::string>());
    return std::nullopt;
  }
  if (!v->is_array()) return wrong_type("stop", "a string or an array of strings", *v);
  if (v->size() > 4) return out_of_range("stop", "at most 4 stop sequences", *v);
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string()) return wrong_type("stop[" + std::to_string(i) + "]", "a string", (*v)[i]);
    if (!(*v)[i].get<std::string>().empty()) out.push_back((*v)[i].get<std::string>());
  }
  return std::nullopt;
}

// Features engram does not have: refused by name rather than silently ignored.
std::optional<ApiError> refuse_unsupported(const json& body, Endpoint endpoint) {
  int64_t n = 1;
  if (auto e = read_int(body, "n", 1, n)) return e;
  if (n != 1) return unsupported("n", "only n = 1 is supported");
  if (const json* lp = field(body, "logprobs")) {
    const bool on = lp->is_boolean() ? lp->get<bool>() : (lp->is_number() ? lp->get<double>() != 0 : true);
    if (on) return unsupported("logprobs", "log probabilities are not supported");
  }
  if (const json* tl = field(body, "top_logprobs")) {
    if (!tl->is_number() || tl->get<double>() != 0)
      return unsupported("top_logprobs", "log probabilities are not supported");
  }
  if (const json* tools = field(body, "tools")) {
    if (!tools->is_array() || !tools->empty()) return unsupported("tools", "tool calling is not supported");
  }
  if (const json* rf = field(body, "response_format")) {
    const json* type = rf->is_object() ? field(*rf, "type") : nullptr;
    if (!type || !type->is_string() || type->get<std::string>() != "text") {
      return unsupported("response_format", "only {\"type\": \"text\"} is supported");
    }
  }
  if (endpoint == Endpoint::COMPLETIONS) {
    bool echo = false;
    if (auto e = read_bool(body, "echo", echo)) return e;
    if (echo) return unsupported("echo", "echo is not supported");
    int64_t best_of = 1;
    if (auto e = read_int(body, "best_of", 1, best_of)) return e;
    if (best_of != 1) return unsupported("best_of", "only best_of = 1 is supported");
    if (const json* s = field(body, "suffix")) {
      if (!s->is_string() || !s->get<std::string>().empty()) return unsupported("suffix", "suffix is not supported");
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<ApiError> parse_completion_request(const json& body, Endpoint endpoint, CompletionParams& out) {
  out.endpoint = endpoint;
  const json* model = field(body, "model");
  if (!model) return invalid_request("Missing required parameter: 'model'", "model", "missing_required_parameter");
  if (!model->is_string()) return wrong_type("model", "a string", *model);
  out.model = model->get<std::string>();

  if (endpoint == Endpoint::CHAT) {
    if (auto e = read_messages(body, out.messages)) return e;
  } else {
    if (auto e = read_prompt(body, out)) return e;
  }
  if (auto e = refuse_unsupported(body, endpoint)) return e;

  // max_completion_tokens is the newer name; when both are given it wins.
  if (auto e = read_int(body, "max_tokens", 1, out.max_tokens)) return e;
  if (auto e = read_int(body, "max_completion_tokens", 1, out.max_tokens)) return e;

  SamplerParams& s = out.sampler;
  if (auto e = read_number(body, "temperature", 0, 2, s.temperature)) return e;
  if (auto e = read_number(body, "top_p", 0, 1, s.top_p)) return e;
  if (auto e = read_number(body, "min_p", 0, 1, s.min_p)) return e;
  if (auto e = read_number(body, "presence_penalty", -2, 2, s.presence_penalty)) return e;
  if (auto e = read_number(body, "repeat_penalty", 0.01, 100, s.repeat_penalty)) return e;
  float frequency_penalty = 0;
  if (auto e = read_number(body, "frequency_penalty", -2, 2, frequency_penalty)) return e;
  if (frequency_penalty != 0) {
    return unsupported("frequency_penalty",
                       "only 0 is supported (the sampler has no per-count penalty; use presence_penalty or "
                       "repeat_penalty)");
  }
  int64_t top_k = s.top_k;
  if (auto e = read_int(body, "top_k", 0, top_k)) return e;
  s.top_k = static_cast<int>(std::min<int64_t>(top_k, INT32_MAX));
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) return wrong_type("seed", "an integer", *seed);
    s.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
    out.seed_given = true;
  }
  if (auto e = read_stop(body, out.stop)) return e;
  if (auto e = read_bool(body, "stream", out.stream)) return e;
  if (auto e = read_bool(body, "ignore_eos", out.ignore_eos)) return e;
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) return wrong_type("stream_options", "an object", *so);
    if (const json* iu = field(*so, "include_usage")) {
      if (!iu->is_boolean()) return wrong_type("stream_options.include_usage", "a boolean", *iu);
      out.include_usage = iu->get<bool>();
    }
  }
  if (const json* user = field(body, "user")) {
    if (!user->is_string()) return wrong_type("user", "a string", *user);
    out.user = user->get<std::string>();
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- responses

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

json usage_json(const Usage& u, const Cost* cost, bool batch) {
  json j = {
      {"prompt_tokens", u.prompt_tokens},
      {"completion_tokens", u.completion_tokens},
      {"total_tokens", u.prompt_tokens + u.completion_tokens},
      {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}},
      {"completion_tokens_details", {{"reasoning_tokens", u.reasoning_tokens}}},
      {"prompt_cache_hit_tokens", u.cached_tokens},
      {"prompt_cache_miss_tokens", u.prompt_tokens - u.cached_tokens},
  };
  if (cost) {
    j["cost"] = {{"usd", cost->usd},
                 {"multiplier", cost->multiplier},
                 {"window", cost->window.empty() ? json() : json(cost->window)},
                 {"batch", batch}};
  }
  return j;
}

namespace {

json finish_value(const std::string& finish_reason) { return finish_reason.empty() ? json() : json(finish_reason); }

}  // namespace

json chat_completion_json(const ResponseMeta& meta, const std::string& content, const std::string& reasoning,
                          const std::string& finish_reason, const json& usage) {
  json message = {{"role", "assistant"}, {"content", content}};
  if (!reasoning.empty()) message["reasoning_content"] = reasoning;
  return json{{"id", meta.id},
              {"object", "chat.completion"},
              {"created", meta.created},
              {"model", meta.model},
              {"choices", json::array({json{{"index", 0},
                                            {"message", message},
                                            {"logprobs", nullptr},
                                            {"finish_reason", finish_value(finish_reason)}}})},
              {"usage", usage}};
}

json chat_chunk_json(const ResponseMeta& meta, const json& delta, const std::string& finish_reason,
                     bool include_usage) {
  json j = {
      {"id", meta.id},
      {"object", "chat.completion.chunk"},
      {"created", meta.created},
      {"model", meta.model},
      {"choices",
       json::array({json{
           {"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", finish_value(finish_reason)}}})}};
  if (include_usage) j["usage"] = nullptr;
  return j;
}

json chat_usage_chunk_json(const ResponseMeta& meta, const json& usage) {
  return json{{"id", meta.id},       {"object", "chat.completion.chunk"}, {"created", meta.created},
              {"model", meta.model}, {"choices", json::array()},          {"usage", usage}};
}

json text_completion_json(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                          const json& usage) {
  return json{
      {"id", meta.id},
      {"object", "text_completion"},
      {"created", meta.created},
      {"model", meta.model},
      {"choices",
       json::array({json{
           {"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_value(finish_reason)}}})},
      {"usage", usage}};
}

json text_chunk_json(const ResponseMeta& meta, const std::string& text, const std::string& finish_reason,
                     bool include_usage) {
  json j = {
      {"id", meta.id},
      {"object", "text_completion"},
      {"created", meta.created},
      {"model", meta.model},
      {"choices",
       json::array({json{
           {"text", text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_value(finish_reason)}}})}};
  if (include_usage) j["usage"] = nullptr;
  return j;
}

json text_usage_chunk_json(const ResponseMeta& meta, const json& usage) {
  return json{{"id", meta.id},       {"object", "text_completion"}, {"created", meta.created},
              {"model", meta.model}, {"choices", json::array()},    {"usage", usage}};
}

}  // namespace engram::server
