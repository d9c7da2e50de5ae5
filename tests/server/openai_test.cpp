// The OpenAI wire format: request validation (every error names its field),
// error shapes, response and chunk objects, SSE framing.
#include <gtest/gtest.h>

#include <string>

#include "server/openai.h"

namespace engram::server {
namespace {

using nlohmann::json;

// Parses `text` as a body for `endpoint`; the error, if any.
std::optional<ApiError> parse(const std::string& text, Endpoint endpoint, CompletionParams* out = nullptr) {
  json body;
  if (auto e = parse_json_body(text, body)) return e;
  CompletionParams p;
  auto e = parse_completion_request(body, endpoint, p);
  if (out) *out = p;
  return e;
}

std::optional<ApiError> chat(const std::string& extra, CompletionParams* out = nullptr) {
  return parse(R"({"model":"m","messages":[{"role":"user","content":"hi"}])" + extra + "}", Endpoint::CHAT, out);
}

TEST(OpenAI, ErrorShape) {
  ApiError e = invalid_request("bad thing", "temperature", "invalid_value");
  const json j = e.to_json();
  ASSERT_TRUE(j.contains("error"));
  EXPECT_EQ(j["error"]["message"], "bad thing");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "temperature");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  // Unset param and code are null, not "".
  const json k = invalid_request("x").to_json();
  EXPECT_TRUE(k["error"]["param"].is_null());
  EXPECT_TRUE(k["error"]["code"].is_null());
  EXPECT_EQ(e.status, 400);
}

TEST(OpenAI, MalformedJsonNamesThePosition) {
  auto e = parse("{\"model\": \"m\",\n \"messages\": [}", Endpoint::CHAT);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->status, 400);
  EXPECT_EQ(e->code, "invalid_json");
  EXPECT_NE(e->message.find("line 2"), std::string::npos) << e->message;
  EXPECT_NE(e->message.find("column"), std::string::npos) << e->message;
  EXPECT_NE(e->message.find("byte"), std::string::npos) << e->message;
  EXPECT_EQ(e->message.find("json.exception"), std::string::npos) << e->message;

  auto arr = parse("[1, 2]", Endpoint::CHAT);
  ASSERT_TRUE(arr);
  EXPECT_NE(arr->message.find("array"), std::string::npos) << arr->message;
  EXPECT_TRUE(parse("", Endpoint::CHAT));
}

TEST(OpenAI, MissingAndWrongTypedFieldsAreNamed) {
  auto m = parse(R"({"messages":[{"role":"user","content":"hi"}]})", Endpoint::CHAT);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->param, "model");
  EXPECT_EQ(m->code, "missing_required_parameter");

  auto msgs = parse(R"({"model":"m","messages":"hi"})", Endpoint::CHAT);
  ASSERT_TRUE(msgs);
  EXPECT_EQ(msgs->param, "messages");

  auto role = parse(R"({"model":"m","messages":[{"content":"hi"}]})", Endpoint::CHAT);
  ASSERT_TRUE(role);
  EXPECT_EQ(role->param, "messages[0].role");

  auto tool = parse(R"({"model":"m","messages":[{"role":"tool","content":"x"}]})", Endpoint::CHAT);
  ASSERT_TRUE(tool);
  EXPECT_EQ(tool->param, "messages[0].role");

  auto temp = chat(R"(,"temperature":"hot")");
  ASSERT_TRUE(temp);
  EXPECT_EQ(temp->param, "temperature");
  EXPECT_EQ(temp->code, "invalid_type");
  EXPECT_NE(temp->message.find("hot"), std::string::npos);

  auto hot = chat(R"(,"temperature":3.5)");
  ASSERT_TRUE(hot);
  EXPECT_EQ(hot->param, "temperature");
  EXPECT_EQ(hot->code, "invalid_value");

  auto stream = chat(R"(,"stream":"yes")");
  ASSERT_TRUE(stream);
  EXPECT_EQ(stream->param, "stream");

  auto mt = chat(R"(,"max_tokens":0)");
  ASSERT_TRUE(mt);
  EXPECT_EQ(mt->param, "max_tokens");
  auto mt2 = chat(R"(,"max_tokens":1.5)");
  ASSERT_TRUE(mt2);
  EXPECT_EQ(mt2->param, "max_tokens");
}

TEST(OpenAI, ContentParts) {
  CompletionParams p;
  ASSERT_FALSE(parse(R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},)"
                     R"({"type":"text","text":"b"}]}]})",
                     Endpoint::CHAT, &p));
  ASSERT_EQ(p.messages.size(), 1u);
  EXPECT_EQ(p.messages[0].content, "ab");

  auto img = parse(R"({"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[)"
                   R"({"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]}]})",
                   Endpoint::CHAT);
  ASSERT_TRUE(img);
  EXPECT_EQ(img->status, 400);
  EXPECT_EQ(img->param, "messages[1].content[1].type");
  EXPECT_NE(img->message.find("image_url"), std::string::npos) << img->message;

  // An assistant turn may have null content (it made a tool call elsewhere).
  ASSERT_FALSE(parse(R"({"model":"m","messages":[{"role":"assistant","content":null},{"role":"user","content":"x"}]})",
                     Endpoint::CHAT, &p));
  EXPECT_EQ(p.messages[0].content, "");
  EXPECT_TRUE(parse(R"({"model":"m","messages":[{"role":"user","content":null}]})", Endpoint::CHAT));
  EXPECT_TRUE(parse(R"({"model":"m","messages":[]})", Endpoint::CHAT));
}

TEST(OpenAI, SamplingAndOptions) {
  CompletionParams p;
  ASSERT_FALSE(chat(R"(,"temperature":0,"top_p":0.5,"seed":42,"max_tokens":7,"stop":"END",)"
                    R"("presence_penalty":0.5,"frequency_penalty":0,"user":"u1","stream":true,)"
                    R"("stream_options":{"include_usage":true},"n":1,"logprobs":false,"top_k":5,"min_p":0.1)",
                    &p));
  EXPECT_EQ(p.sampler.temperature, 0.0f);
  EXPECT_FLOAT_EQ(p.sampler.top_p, 0.5f);
  EXPECT_EQ(p.sampler.seed, 42u);
  EXPECT_TRUE(p.seed_given);
  EXPECT_EQ(p.max_tokens, 7);
  ASSERT_EQ(p.stop.size(), 1u);
  EXPECT_EQ(p.stop[0], "END");
  EXPECT_FLOAT_EQ(p.sampler.presence_penalty, 0.5f);
  EXPECT_EQ(p.user, "u1");
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  EXPECT_EQ(p.sampler.top_k, 5);
  EXPECT_FLOAT_EQ(p.sampler.min_p, 0.1f);

  // Left out: the sampler's defaults, no seed, no limit.
  CompletionParams d;
  ASSERT_FALSE(chat("", &d));
  const SamplerParams defaults;
  EXPECT_EQ(d.sampler.temperature, defaults.temperature);
  EXPECT_EQ(d.sampler.top_k, defaults.top_k);
  EXPECT_FALSE(d.seed_given);
  EXPECT_EQ(d.max_tokens, -1);
  EXPECT_FALSE(d.stream);

  // max_completion_tokens is the newer name of max_tokens.
  ASSERT_FALSE(chat(R"(,"max_completion_tokens":3)", &p));
  EXPECT_EQ(p.max_tokens, 3);

  ASSERT_FALSE(chat(R"(,"stop":["a","","b"])", &p));
  EXPECT_EQ(p.stop, (std::vector<std::string>{"a", "b"}));
  auto many = chat(R"(,"stop":["a","b","c","d","e"])");
  ASSERT_TRUE(many);
  EXPECT_EQ(many->param, "stop");
  auto bad_stop = chat(R"(,"stop":["a",1])");
  ASSERT_TRUE(bad_stop);
  EXPECT_EQ(bad_stop->param, "stop[1]");
}

TEST(OpenAI, UnsupportedFeaturesAreRefusedByName) {
  for (const auto& [extra, param] : std::vector<std::pair<std::string, std::string>>{
           {R"(,"n":2)", "n"},
           {R"(,"logprobs":true)", "logprobs"},
           {R"(,"top_logprobs":3)", "top_logprobs"},
           {R"(,"frequency_penalty":0.5)", "frequency_penalty"},
           {R"(,"tools":[{"type":"function"}])", "tools"},
           {R"(,"response_format":{"type":"json_object"})", "response_format"},
       }) {
    auto e = chat(extra);
    ASSERT_TRUE(e) << extra;
    EXPECT_EQ(e->status, 400) << extra;
    EXPECT_EQ(e->param, param) << extra;
  }
  EXPECT_FALSE(chat(R"(,"tools":[],"response_format":{"type":"text"},"logprobs":null)"));
}

TEST(OpenAI, CompletionPrompts) {
  CompletionParams p;
  ASSERT_FALSE(parse(R"({"model":"m","prompt":"Once upon"})", Endpoint::COMPLETIONS, &p));
  EXPECT_EQ(p.prompt_text, "Once upon");
  EXPECT_FALSE(p.prompt_is_tokens);
  ASSERT_FALSE(parse(R"({"model":"m","prompt":["Once"]})", Endpoint::COMPLETIONS, &p));
  EXPECT_EQ(p.prompt_text, "Once");
  ASSERT_FALSE(parse(R"({"model":"m","prompt":[1, 403, 407]})", Endpoint::COMPLETIONS, &p));
  EXPECT_TRUE(p.prompt_is_tokens);
  EXPECT_EQ(p.prompt_tokens, (std::vector<TokenId>{1, 403, 407}));

  auto two = parse(R"({"model":"m","prompt":["a","b"]})", Endpoint::COMPLETIONS);
  ASSERT_TRUE(two);
  EXPECT_EQ(two->param, "prompt");
  auto mixed = parse(R"({"model":"m","prompt":[1,"x"]})", Endpoint::COMPLETIONS);
  ASSERT_TRUE(mixed);
  EXPECT_EQ(mixed->param, "prompt[1]");
  auto neg = parse(R"({"model":"m","prompt":[-1]})", Endpoint::COMPLETIONS);
  ASSERT_TRUE(neg);
  EXPECT_EQ(neg->param, "prompt[0]");
  auto missing = parse(R"({"model":"m"})", Endpoint::COMPLETIONS);
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->param, "prompt");
  auto echo = parse(R"({"model":"m","prompt":"x","echo":true})", Endpoint::COMPLETIONS);
  ASSERT_TRUE(echo);
  EXPECT_EQ(echo->param, "echo");
  // logprobs is an integer on /v1/completions.
  auto lp = parse(R"({"model":"m","prompt":"x","logprobs":2})", Endpoint::COMPLETIONS);
  ASSERT_TRUE(lp);
  EXPECT_EQ(lp->param, "logprobs");
  EXPECT_FALSE(parse(R"({"model":"m","prompt":"x","logprobs":0})", Endpoint::COMPLETIONS));
}

TEST(OpenAI, UsageObject) {
  Usage u;
  u.prompt_tokens = 100;
  u.cached_tokens = 64;
  u.completion_tokens = 20;
  u.reasoning_tokens = 5;
  const json j = usage_json(u);
  EXPECT_EQ(j["prompt_tokens"], 100);
  EXPECT_EQ(j["completion_tokens"], 20);
  EXPECT_EQ(j["total_tokens"], 120);
  EXPECT_EQ(j["prompt_tokens_details"]["cached_tokens"], 64);
  EXPECT_EQ(j["completion_tokens_details"]["reasoning_tokens"], 5);
  EXPECT_EQ(j["prompt_cache_hit_tokens"], 64);
  EXPECT_EQ(j["prompt_cache_miss_tokens"], 36);
  EXPECT_FALSE(j.contains("cost"));
  Cost c;
  c.usd = 0.25;
  c.multiplier = 0.5;
  c.window = "off-peak";
  const json k = usage_json(u, &c, true);
  EXPECT_DOUBLE_EQ(k["cost"]["usd"].get<double>(), 0.25);
  EXPECT_EQ(k["cost"]["window"], "off-peak");
  EXPECT_EQ(k["cost"]["batch"], true);
}

TEST(OpenAI, ResponseObjects) {
  const ResponseMeta meta{"chatcmpl-1", 1700000000, "m"};
  const json usage = usage_json(Usage{});
  const json c = chat_completion_json(meta, "Hi", "", "stop", usage);
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "Hi");
  EXPECT_FALSE(c["choices"][0]["message"].contains("reasoning_content"));
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c["created"], 1700000000);
  const json r = chat_completion_json(meta, "A", "because", "length", usage);
  EXPECT_EQ(r["choices"][0]["message"]["reasoning_content"], "because");

  const json chunk = chat_chunk_json(meta, json{{"content", "x"}}, "", true);
  EXPECT_EQ(chunk["object"], "chat.completion.chunk");
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(chunk.contains("usage") && chunk["usage"].is_null());
  EXPECT_FALSE(chat_chunk_json(meta, json::object(), "stop", false).contains("usage"));
  const json last = chat_usage_chunk_json(meta, usage);
  EXPECT_TRUE(last["choices"].is_array() && last["choices"].empty());
  EXPECT_TRUE(last["usage"].is_object());

  const json t = text_completion_json({"cmpl-1", 1, "m"}, "story", "length", usage);
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "story");
  EXPECT_EQ(text_chunk_json({"cmpl-1", 1, "m"}, "s", "", false)["choices"][0]["text"], "s");
}

TEST(OpenAI, SseFraming) {
  const std::string e = sse_event(json{{"a", "line1\nline2"}});
  EXPECT_EQ(e.rfind("data: ", 0), 0u);
  ASSERT_GE(e.size(), 2u);
  EXPECT_EQ(e.substr(e.size() - 2), "\n\n");
  // One event is one line: newlines inside strings are escaped.
  EXPECT_EQ(e.find('\n'), e.size() - 2);
  EXPECT_EQ(json::parse(e.substr(6))["a"], "line1\nline2");
  EXPECT_STREQ(kSseDone, "data: [DONE]\n\n");
  EXPECT_EQ(std::string(kSseKeepAlive).rfind(":", 0), 0u);
  // Generated text may hold invalid UTF-8: replaced, never thrown.
  std::string bad = "ok \xff\xfe end";
  std::string dumped;
  EXPECT_NO_THROW(dumped = dump_json(json{{"t", bad}}));
  EXPECT_NE(dumped.find("ok "), std::string::npos);
}

}  // namespace
}  // namespace engram::server
