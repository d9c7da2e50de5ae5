// ReasoningParser: <think>...</think> split into reasoning and content,
// token by token, with tags cut anywhere.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "server/reasoning.h"

namespace engram::server {
namespace {

struct Split {
  std::string content, reasoning;
  int reasoning_tokens = 0;
};

// Pushes each piece as one token, then flushes.
Split run(const std::vector<std::string>& tokens, bool start_in_reasoning = false) {
  ReasoningParser p(start_in_reasoning);
  Split s;
  for (const std::string& t : tokens) {
    ReasoningParser::Delta d = p.push(t);
    s.content += d.content;
    s.reasoning += d.reasoning;
  }
  ReasoningParser::Delta d = p.flush();
  s.content += d.content;
  s.reasoning += d.reasoning;
  s.reasoning_tokens = p.reasoning_tokens();
  return s;
}

TEST(Reasoning, TextWithoutTagsIsContent) {
  Split s = run({"Hello", " world", "!"});
  EXPECT_EQ(s.content, "Hello world!");
  EXPECT_EQ(s.reasoning, "");
  EXPECT_EQ(s.reasoning_tokens, 0);
}

TEST(Reasoning, ThinkBlockGoesToReasoning) {
  // As DeepSeek R1 writes it: "<think>\n...\n</think>\n\nanswer".
  Split s = run({"<think>", "\n", "Two", " plus", " two", ".", "\n", "</think>", "\n\n", "Four", "."});
  EXPECT_EQ(s.reasoning, "Two plus two.\n");
  EXPECT_EQ(s.content, "Four.");
  EXPECT_EQ(s.reasoning_tokens, 8);  // <think> ... </think>, tags included
}

TEST(Reasoning, TagsSplitAcrossTokens) {
  Split s = run({"<th", "ink>ab", "c</th", "ink>", "d"});
  EXPECT_EQ(s.reasoning, "abc");
  EXPECT_EQ(s.content, "d");
  EXPECT_EQ(s.reasoning_tokens, 4);
}

TEST(Reasoning, CloseTagSplitOneByteAtATime) {
  Split s = run({"<think>", "x", "<", "/", "t", "h", "i", "n", "k", ">", "y"});
  EXPECT_EQ(s.reasoning, "x");
  EXPECT_EQ(s.content, "y");
  EXPECT_EQ(s.reasoning_tokens, 10);
}

TEST(Reasoning, NearMissIsReleasedAsText) {
  Split a = run({"<th", "x> hi"});
  EXPECT_EQ(a.content, "<thx> hi");
  EXPECT_EQ(a.reasoning_tokens, 0);
  Split b = run({"<think>", "a </thin", "g> b", "</think>", "c"});
  EXPECT_EQ(b.reasoning, "a </thing> b");
  EXPECT_EQ(b.content, "c");
}

TEST(Reasoning, LeadingWhitespaceBeforeThinkIsDropped) {
  Split s = run({"\n ", "<think>", "r", "</think>", "a"});
  EXPECT_EQ(s.reasoning, "r");
  EXPECT_EQ(s.content, "a");
  EXPECT_EQ(s.reasoning_tokens, 4);  // the whitespace token belongs to the reasoning's opening
}

TEST(Reasoning, ThinkAfterTheAnswerStartedIsText) {
  Split s = run({"Hi", " <think>", "x", "</think>"});
  EXPECT_EQ(s.content, "Hi <think>x</think>");
  EXPECT_EQ(s.reasoning, "");
  EXPECT_EQ(s.reasoning_tokens, 0);
}

TEST(Reasoning, UnterminatedThinkIsAllReasoning) {
  Split s = run({"<think>", "still", " thinking", " </thi"});
  EXPECT_EQ(s.reasoning, "still thinking </thi");
  EXPECT_EQ(s.content, "");
  EXPECT_EQ(s.reasoning_tokens, 4);
}

TEST(Reasoning, PromptOpenedThink) {
  Split s = run({"abc", "</think>", "\n", "x"}, /*start_in_reasoning=*/true);
  EXPECT_EQ(s.reasoning, "abc");
  EXPECT_EQ(s.content, "x");
  EXPECT_EQ(s.reasoning_tokens, 2);
}

TEST(Reasoning, PartialOpenTagAtTheEndIsFlushedAsContent) {
  Split s = run({"<thi"});
  EXPECT_EQ(s.content, "<thi");
  EXPECT_EQ(s.reasoning, "");
}

TEST(Reasoning, PushTextCountsNoToken) {
  ReasoningParser p;
  ReasoningParser::Delta a = p.push("<think>");
  ReasoningParser::Delta b = p.push_text("why</think>because");
  EXPECT_EQ(a.reasoning + b.reasoning, "why");
  EXPECT_EQ(b.content, "because");
  EXPECT_EQ(p.reasoning_tokens(), 1);
}

// Any way of cutting the text into tokens gives the same split.
TEST(Reasoning, SplitDoesNotDependOnTokenBoundaries) {
  const std::string text = " <think>\nplan: a<b, c</thinking> d\n</think>\n\nresult <think> x";
  const Split whole = run({text});
  EXPECT_EQ(whole.reasoning, "plan: a<b, c</thinking> d\n");
  EXPECT_EQ(whole.content, "result <think> x");
  for (size_t step = 1; step <= 5; ++step) {
    std::vector<std::string> pieces;
    for (size_t i = 0; i < text.size(); i += step) pieces.push_back(text.substr(i, step));
    const Split s = run(pieces);
    EXPECT_EQ(s.reasoning, whole.reasoning) << "pieces of " << step;
    EXPECT_EQ(s.content, whole.content) << "pieces of " << step;
  }
}

}  // namespace
}  // namespace engram::server
