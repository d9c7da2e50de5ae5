#include "server/reasoning.h"

#include <algorithm>

namespace engram::server {
namespace {

constexpr std::string_view kOpen = "<think>";
constexpr std::string_view kClose = "</think>";

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

// Length of the longest suffix of `text` that is a proper prefix of `tag`:
// bytes that may still become the tag when more text arrives.
size_t partial_tag_suffix(std::string_view text, std::string_view tag) {
  const size_t max = std::min(text.size(), tag.size() - 1);
  for (size_t n = max; n > 0; --n) {
    if (text.substr(text.size() - n) == tag.substr(0, n)) return n;
  }
  return 0;
}

// Appends `text` to `out`, first dropping leading whitespace while `trim` is on.
void append_trimmed(std::string& out, std::string_view text, bool& trim) {
  if (trim) {
    size_t i = 0;
    while (i < text.size() && is_space(text[i])) ++i;
    text.remove_prefix(i);
    if (!text.empty()) trim = false;
  }
  out.append(text);
}

}  // namespace

ReasoningParser::ReasoningParser(bool start_in_reasoning)
    : state_(start_in_reasoning ? State::REASONING : State::START) {}

void ReasoningParser::feed(Delta& out) {
  if (state_ == State::START) {
    size_t ws = 0;
    while (ws < pending_.size() && is_space(pending_[ws])) ++ws;
    std::string_view rest = std::string_view(pending_).substr(ws);
    if (rest.size() < kOpen.size() && kOpen.substr(0, rest.size()) == rest) return;  // undecided yet
    if (rest.substr(0, kOpen.size()) == kOpen) {
      state_ = State::REASONING;
      opened_now_ = true;
      pending_.erase(0, ws + kOpen.size());
    } else {
      state_ = State::CONTENT;  // no reasoning: everything is the answer, as written
    }
  }
  if (state_ == State::REASONING) {
    const size_t close = pending_.find(kClose);
    if (close == std::string::npos) {
      const size_t keep = partial_tag_suffix(pending_, kClose);
      append_trimmed(out.reasoning, std::string_view(pending_).substr(0, pending_.size() - keep), trim_reasoning_);
      pending_.erase(0, pending_.size() - keep);
      return;
    }
    append_trimmed(out.reasoning, std::string_view(pending_).substr(0, close), trim_reasoning_);
    pending_.erase(0, close + kClose.size());
    state_ = State::CONTENT;
    trim_content_ = true;
  }
  append_trimmed(out.content, pending_, trim_content_);
  pending_.clear();
}

ReasoningParser::Delta ReasoningParser::push(std::string_view token_text) {
  const bool was_reasoning = state_ == State::REASONING;
  if (state_ == State::START) ++start_tokens_;
  pending_.append(token_text);
  Delta out;
  opened_now_ = false;
  feed(out);
  if (opened_now_) {
    reasoning_tokens_ += start_tokens_;  // the tokens that spelled <think> (this one included)
  } else if (was_reasoning || state_ == State::REASONING) {
    ++reasoning_tokens_;  // inside, or the token that closed it
  }
  if (state_ != State::START) start_tokens_ = 0;
  return out;
}

ReasoningParser::Delta ReasoningParser::push_text(std::string_view text) {
  pending_.append(text);
  Delta out;
  feed(out);
  return out;
}

ReasoningParser::Delta ReasoningParser::flush() {
  Delta out;
  if (state_ == State::REASONING)
    append_trimmed(out.reasoning, pending_, trim_reasoning_);
  else
    append_trimmed(out.content, pending_, trim_content_);  // START: only whitespace or a partial "<think"
  pending_.clear();
  return out;
}

}  // namespace engram::server
