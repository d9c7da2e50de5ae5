// StopStringMatcher: text passes as soon as it cannot start a stop string,
// a stop string split over many pushes is found, the earliest of several
// wins, and nothing of it (or after it) is ever released.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/stop_strings.h"

namespace engram::server {
namespace {

// Pushes every piece; returns everything released (flush included when no match).
std::string run(StopStringMatcher& m, const std::vector<std::string>& pieces, std::vector<std::string>* outs = nullptr) {
  std::string all;
  for (const std::string& p : pieces) {
    std::string out = m.push(p);
    if (outs) outs->push_back(out);
    all += out;
  }
  return all + m.flush();
}

TEST(StopStrings, NoStopsPassEverythingAtOnce) {
  StopStringMatcher m;
  EXPECT_EQ(m.push("Hello"), "Hello");
  EXPECT_EQ(m.push(" world"), " world");
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.matched());
  StopStringMatcher only_empty({""});
  EXPECT_EQ(only_empty.push("abc"), "abc");
  EXPECT_FALSE(only_empty.matched());
}

TEST(StopStrings, StopSplitAcrossPiecesIsFoundAndDropped) {
  StopStringMatcher m({"<END>"});
  std::vector<std::string> outs;
  EXPECT_EQ(run(m, {"abc <", "EN", "D> tail", "more"}, &outs), "abc ");
  EXPECT_TRUE(m.matched());
  ASSERT_EQ(outs.size(), 4u);
  EXPECT_EQ(outs[0], "abc ");  // "<" held back
  EXPECT_EQ(outs[1], "");      // "<EN" still could match
  EXPECT_EQ(outs[2], "");      // matched: nothing before it was held
  EXPECT_EQ(outs[3], "");      // after the match nothing passes
}

TEST(StopStrings, HeldTextIsReleasedWhenItStopsMatching) {
  StopStringMatcher m({"\n\n"});
  EXPECT_EQ(m.push("line\n"), "line");
  EXPECT_EQ(m.push("next"), "\nnext");
  EXPECT_EQ(m.push("\n"), "");
  EXPECT_EQ(m.flush(), "\n");  // the end: the held newline is text after all
  EXPECT_FALSE(m.matched());
}

TEST(StopStrings, EarliestOfSeveralStopsWins) {
  StopStringMatcher m({"world", "lo w"});
  EXPECT_EQ(run(m, {"hello world"}), "hel");
  EXPECT_TRUE(m.matched());
  StopStringMatcher n({"xyz", "b"});
  EXPECT_EQ(run(n, {"a", "bc"}), "a");
}

TEST(StopStrings, LongestPossibleStartIsHeld) {
  // Only the longest tail that begins the stop string is held.
  StopStringMatcher m({"aaab"});
  EXPECT_EQ(m.push("xaa"), "x");
  EXPECT_EQ(m.push("a"), "");
  EXPECT_EQ(m.push("a"), "a");  // "aaaa": the last three may still start "aaab"
  EXPECT_EQ(m.push("b"), "");
  EXPECT_TRUE(m.matched());
}

TEST(StopStrings, MultiByteCharactersStayWhole) {
  StopStringMatcher m({"é!"});
  EXPECT_EQ(m.push("café"), "caf");  // "é" may begin the stop string
  EXPECT_EQ(m.push(" ok"), "é ok");
  EXPECT_EQ(m.push("é!"), "");
  EXPECT_TRUE(m.matched());
}

}  // namespace
}  // namespace engram::server
