// Utf8StreamDecoder: streamed token pieces never split a UTF-8 character,
// and bytes that can never complete one are not held back.
#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"

namespace engram {
namespace {

const std::string kLlama = "\xf0\x9f\xa6\x99";  // U+1F999, 4 bytes

TEST(Utf8StreamDecoder, PassesAsciiThrough) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.push("Hello"), "Hello");
  EXPECT_EQ(d.push(" world"), " world");
  EXPECT_EQ(d.flush(), "");
}

TEST(Utf8StreamDecoder, HoldsFourByteEmojiUntilComplete) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.push("a" + kLlama.substr(0, 1)), "a");
  EXPECT_EQ(d.push(kLlama.substr(1, 1)), "");
  EXPECT_EQ(d.push(kLlama.substr(2, 1)), "");
  EXPECT_EQ(d.push(kLlama.substr(3, 1) + "b"), kLlama + "b");
  EXPECT_EQ(d.flush(), "");
}

TEST(Utf8StreamDecoder, EverySplitPointGivesTheSameText) {
  const std::string text = "x\xc3\xa9" + kLlama + "\xe2\x82\xac" + "y";  // é, 🦙, €
  for (size_t cut1 = 0; cut1 <= text.size(); ++cut1) {
    for (size_t cut2 = cut1; cut2 <= text.size(); ++cut2) {
      Utf8StreamDecoder d;
      std::string out;
      for (std::string_view part : {std::string_view(text).substr(0, cut1),
                                    std::string_view(text).substr(cut1, cut2 - cut1),
                                    std::string_view(text).substr(cut2)}) {
        std::string got = d.push(part);
        // Whatever comes out ends on a character boundary.
        if (!got.empty()) {
          const auto last = static_cast<unsigned char>(got.back());
          EXPECT_TRUE(last < 0x80 || (last & 0xC0) == 0x80) << cut1 << "," << cut2;
        }
        out += got;
      }
      EXPECT_EQ(d.flush(), "") << cut1 << "," << cut2;
      EXPECT_EQ(out, text) << cut1 << "," << cut2;
    }
  }
}

TEST(Utf8StreamDecoder, IncompleteTailIsFlushedAtTheEnd) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.push("ok" + kLlama.substr(0, 2)), "ok");
  EXPECT_EQ(d.flush(), kLlama.substr(0, 2));
  EXPECT_EQ(d.flush(), "");
}

TEST(Utf8StreamDecoder, InvalidBytesAreNotHeldBack) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.push("\x80"), "\x80");            // stray continuation byte
  EXPECT_EQ(d.push("a\xff"), "a\xff");          // never valid in UTF-8
  EXPECT_EQ(d.push("\xc3" "A"), "\xc3" "A");    // lead byte followed by ASCII: broken already
  EXPECT_EQ(d.push("\xc0"), "\xc0");            // overlong lead byte
  EXPECT_EQ(d.flush(), "");
}

}  // namespace
}  // namespace engram
