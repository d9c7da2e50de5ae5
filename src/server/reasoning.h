// Reasoning output (DeepSeek R1, Qwen3, ...): a model that thinks first
// writes "<think>...</think>" and then its answer. The OpenAI-style API of
// DeepSeek returns the thought as `reasoning_content` (streamed as
// delta.reasoning_content) and the answer as `content`, and counts the
// thought's tokens in usage.completion_tokens_details.reasoning_tokens.
//
// ReasoningParser splits the text incrementally, token by token: a tag split
// across tokens ("<th" + "ink>") is held back until it is whole or can no
// longer match. Only a <think> at the very start of the output (whitespace
// allowed before it) opens reasoning; once the answer has started, tags are
// plain text. Whitespace at the start of the reasoning and of the answer
// after </think> is dropped (the model writes "<think>\n" and "</think>\n\n").
#pragma once

#include <string>
#include <string_view>

namespace engram::server {

class ReasoningParser {
 public:
  struct Delta {
    std::string content;
    std::string reasoning;
    bool empty() const { return content.empty() && reasoning.empty(); }
  };

  // start_in_reasoning: the prompt already opened <think> (templates that
  // force thinking), so the output starts inside the reasoning.
  explicit ReasoningParser(bool start_in_reasoning = false);

  // The text of the next generated token (may be empty); returns what can
  // be released now.
  Delta push(std::string_view token_text);
  // More text that is not a token of its own (text the engine released only
  // at the end): split like the rest, counted in no token.
  Delta push_text(std::string_view text);
  // At the end of generation: whatever is still held back.
  Delta flush();

  // Tokens that belong to the reasoning, tags included.
  int reasoning_tokens() const { return reasoning_tokens_; }
  bool in_reasoning() const { return state_ == State::REASONING; }

 private:
  enum class State { START, REASONING, CONTENT };
  void feed(Delta& out);  // consumes pending_ as far as the state allows

  State state_;
  std::string pending_;         // bytes not yet released
  bool trim_reasoning_ = true;  // dropping whitespace at the start of the reasoning
  bool trim_content_ = false;   // dropping whitespace at the start of the answer after </think>
  int start_tokens_ = 0;        // tokens pushed while still in START (decided later)
  bool opened_now_ = false;     // feed() moved START -> REASONING
  int reasoning_tokens_ = 0;
};

}  // namespace engram::server
