// Stop strings for streamed generation: text passes through as soon as it
// can no longer be the start of a stop string; when a stop string appears,
// the text before it is released and the rest (the stop string included) is
// dropped, as OpenAI's `stop` parameter does.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace engram::server {

class StopStringMatcher {
 public:
  // Empty strings in `stops` are ignored.
  explicit StopStringMatcher(std::vector<std::string> stops = {});

  // Appends generated text; returns what may be shown now. After a match
  // (matched() turns true) it returns the text before the stop string, and
  // everything pushed later is dropped.
  std::string push(std::string_view text);
  // At the end of generation: the text held back because it could still
  // have become a stop string ("" after a match).
  std::string flush();

  bool matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // tail that is a prefix of some stop string
  bool matched_ = false;
};

}  // namespace engram::server
