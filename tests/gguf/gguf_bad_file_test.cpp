// Hand-made broken files: each must be rejected with its own message, never a crash.
//
// The files are assembled byte by byte here (not with gguf::Writer), so the
// reader is checked against the format itself rather than against the writer.
#include <cstring>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "test_support.h"

namespace engram::gguf {
namespace {

constexpr uint32_t kU32 = 4, kString = 8, kArray = 9, kU64 = 10;
constexpr uint32_t kF32 = 0, kQ8_0 = 8;

// Little-endian byte assembler.
struct Bytes {
  std::vector<uint8_t> b;

  template <class T>
  Bytes& put(T v) {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &v, sizeof v);
    b.insert(b.end(), raw, raw + sizeof raw);
    return *this;
  }
  Bytes& u8(uint8_t v) { return put(v); }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  Bytes& kv_u32(const std::string& key, uint32_t v) { return str(key).u32(kU32).u32(v); }
  Bytes& kv_string(const std::string& key, const std::string& v) { return str(key).u32(kString).str(v); }
  Bytes& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t n : ne) u64(n);
    return u32(type).u64(offset);
  }
  Bytes& pad(size_t alignment) {
    b.resize((b.size() + alignment - 1) / alignment * alignment, 0);
    return *this;
  }
  Bytes& zeros(size_t n) {
    b.resize(b.size() + n, 0);
    return *this;
  }
};

// A small valid file: 3 keys (one an array of strings), two tensors, no
// trailing padding, so that every shorter prefix is missing something.
std::vector<uint8_t> small_valid_file() {
  Bytes f;
  f.header(2, 3);
  f.kv_string("general.architecture", "llama");
  f.str("tokenizer.ggml.tokens").u32(kArray).u32(kString).u64(2).str("<s>").str("</s>");
  f.kv_u32("general.alignment", 32);
  f.tensor("a", {4, 2}, kF32, 0);    // 32 bytes
  f.tensor("b", {32}, kQ8_0, 32);    // 34 bytes
  f.pad(32).zeros(32 + 34);
  return f.b;
}

// Parses and expects failure with a message that contains `expected` and names the file.
void expect_error(const std::vector<uint8_t>& bytes, const std::string& expected) {
  Expected<File> f = File::parse(bytes, "bad.gguf");
  ASSERT_FALSE(f.has_value()) << "accepted a file that should fail with: " << expected;
  const std::string& msg = f.error().message;
  EXPECT_EQ(msg.rfind("bad.gguf: ", 0), 0u) << msg;
  EXPECT_NE(msg.find(expected), std::string::npos) << "message: " << msg << "\nexpected to contain: " << expected;
}

TEST(GgufBadFile, SmallValidFileParses) {
  std::vector<uint8_t> bytes = small_valid_file();
  Expected<File> f = File::parse(bytes, "small.gguf");
  ASSERT_TRUE(f.has_value()) << f.error().message;
  EXPECT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[1].n_bytes, 34u);
  EXPECT_EQ(f->data_offset() + 32 + 34, bytes.size());
  EXPECT_EQ(*f->get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"<s>", "</s>"}));
}

TEST(GgufBadFile, EveryTruncationIsAnError) {
  const std::vector<uint8_t> full = small_valid_file();
  for (size_t len = 0; len < full.size(); ++len) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len));
    Expected<File> f = File::parse(cut, "cut.gguf");
    ASSERT_FALSE(f.has_value()) << "a prefix of " << len << " bytes was accepted";
    EXPECT_EQ(f.error().message.rfind("cut.gguf: ", 0), 0u) << f.error().message;
  }
}

TEST(GgufBadFile, TruncationMessagesSayWhereAndHowLong) {
  const std::vector<uint8_t> full = small_valid_file();
  expect_error({full.begin(), full.begin() + 10}, "truncated: header ends at byte 16 but the file has 10 bytes");
  // Cut inside tensor info 1, after its name.
  Bytes prefix;
  prefix.header(2, 3);
  prefix.kv_string("general.architecture", "llama");
  prefix.str("tokenizer.ggml.tokens").u32(kArray).u32(kString).u64(2).str("<s>").str("</s>");
  prefix.kv_u32("general.alignment", 32);
  prefix.tensor("a", {4, 2}, kF32, 0);
  prefix.str("b").u32(1);
  const size_t cut = prefix.b.size() + 3;
  expect_error({full.begin(), full.begin() + static_cast<std::ptrdiff_t>(cut)},
               "truncated: tensor info 1 ('b') ends at byte " + std::to_string(prefix.b.size() + 8) +
                   " but the file has " + std::to_string(cut) + " bytes");
  // Cut in the tensor data.
  expect_error({full.begin(), full.end() - 1}, "truncated: tensor 1 ('b') data at offset 32 ends at byte " +
                                                   std::to_string(full.size()) + " but the file has " +
                                                   std::to_string(full.size() - 1) + " bytes");
}

TEST(GgufBadFile, BadMagic) {
  std::vector<uint8_t> b = small_valid_file();
  std::memcpy(b.data(), "GGML", 4);
  expect_error(b, "bad magic 'GGML'");
}

TEST(GgufBadFile, BadVersions) {
  expect_error(Bytes().header(0, 0, 1).b, "GGUF version 1 is not supported");
  expect_error(Bytes().header(0, 0, 4).b, "unsupported GGUF version 4");
  expect_error(Bytes().header(0, 0, 0).b, "unsupported GGUF version 0");
  expect_error(Bytes().header(0, 0, 0x03000000).b, "big-endian GGUF files are not supported");
  // v2 has the same layout as v3 and is accepted.
  std::vector<uint8_t> v2 = Bytes().header(0, 1, 2).kv_u32("x", 1).b;
  Expected<File> f = File::parse(v2, "v2.gguf");
  ASSERT_TRUE(f.has_value()) << f.error().message;
  EXPECT_EQ(f->version(), 2u);
}

TEST(GgufBadFile, AbsurdCounts) {
  expect_error(Bytes().header(0, 1ull << 40).kv_u32("x", 1).b, "n_kv = 1099511627776 is impossible");
  expect_error(Bytes().header(~0ull, 0).b, "n_tensors = 18446744073709551615 is impossible");
  expect_error(Bytes().header(0, 1).u64(~0ull).zeros(16).b,
               "metadata key 0: key length 18446744073709551615 is larger than the 16 bytes left");
  expect_error(Bytes().header(0, 1).str("k").u32(kString).u64(1000).zeros(8).b,
               "metadata key 0 ('k'): string length 1000 is larger than the 8 bytes left");
  expect_error(Bytes().header(0, 1).str("k").u32(kArray).u32(kU32).u64(1ull << 62).zeros(8).b,
               "metadata key 0 ('k'): array of 4611686018427387904 u32 needs at least more than 2^64 bytes");
  expect_error(Bytes().header(0, 1).str("k").u32(kArray).u32(kU32).u64(3).u32(1).u32(2).b,
               "array of 3 u32 needs at least 12 bytes but only 8 are left");
  expect_error(Bytes().header(0, 1).str("k").u32(kArray).u32(kString).u64(1ull << 50).zeros(64).b,
               "array of 1125899906842624 string needs at least");
  // 40 bytes after the header hold at most one 24-byte tensor info.
  expect_error(Bytes().header(3, 0).zeros(40).b, "n_tensors = 3 is impossible: the 40 bytes after the header hold at most 1");
}

TEST(GgufBadFile, BadValueTypes) {
  expect_error(Bytes().header(0, 1).str("k").u32(13).u32(0).zeros(8).b, "metadata key 0 ('k'): unknown value type 13");
  expect_error(Bytes().header(0, 1).str("k").u32(kArray).u32(99).u64(0).b,
               "metadata key 0 ('k'): unknown array element type 99");
  expect_error(Bytes().header(0, 1).str("k").u32(kArray).u32(kArray).u64(0).b, "nested arrays");
  expect_error(Bytes().header(0, 1).str("k").u32(7).u8(2).b, "metadata key 0 ('k'): bool value 2 is neither 0 nor 1");
}

TEST(GgufBadFile, DuplicateKey) {
  expect_error(Bytes().header(0, 2).kv_u32("general.x", 1).kv_u32("general.x", 2).b,
               "duplicate metadata key 'general.x' (metadata key 1 ('general.x'))");
}

TEST(GgufBadFile, BadAlignment) {
  expect_error(Bytes().header(0, 1).kv_u32("general.alignment", 0).b, "general.alignment = 0 is not a nonzero power");
  expect_error(Bytes().header(0, 1).kv_u32("general.alignment", 48).b, "general.alignment = 48 is not a nonzero power");
  expect_error(Bytes().header(0, 1).str("general.alignment").u32(kU64).u64(32).b,
               "general.alignment has type u64 but must be u32");
}

// One tensor info after a 0-key header, then data padded to 32.
std::vector<uint8_t> one_tensor(std::vector<uint64_t> ne, uint32_t type, uint64_t offset, size_t data_bytes) {
  Bytes f;
  f.header(1, 0).tensor("w", std::move(ne), type, offset).pad(32).zeros(data_bytes);
  return f.b;
}

TEST(GgufBadFile, BadTensorInfos) {
  expect_error(one_tensor({4}, 4, 0, 64), "tensor info 0 ('w'): unknown tensor type id 4");
  expect_error(one_tensor({4}, 1000, 0, 64), "unknown tensor type id 1000");
  expect_error(one_tensor({1, 1, 1, 1, 1}, kF32, 0, 64), "tensor info 0 ('w'): 5 dimensions (at most 4 supported)");
  expect_error(one_tensor({4, 0}, kF32, 0, 64), "tensor info 0 ('w'): ne[1] = 0 must be positive");
  expect_error(one_tensor({~0ull}, kF32, 0, 64), "tensor info 0 ('w'): ne[0] = -1 must be positive");
  expect_error(one_tensor({1ull << 32, 1ull << 32}, kF32, 0, 64), "element count overflows");
  expect_error(one_tensor({1ull << 62}, kF32, 0, 64), "byte size overflows");
  expect_error(one_tensor({16}, kQ8_0, 0, 64), "ne[0] = 16 is not a multiple of the q8_0 block size 32");
  expect_error(one_tensor({4}, kF32, 4, 64), "tensor info 0 ('w'): offset 4 is not a multiple of the alignment 32");
  expect_error(one_tensor({4}, kF32, 64, 64), "truncated: tensor 0 ('w') data at offset 64 ends at byte");
  expect_error(one_tensor({4}, kF32, 1ull << 63, 64), "truncated: tensor 0 ('w') data");
  expect_error(one_tensor({4}, kF32, ~0ull - 31, 64), "truncated: tensor 0 ('w') data ends beyond 2^64");
  expect_error(one_tensor({32}, kF32, 0, 64), "truncated: tensor 0 ('w') data at offset 0 ends at byte 192 but the file has 128 bytes");
}

TEST(GgufBadFile, DuplicateAndOverlappingTensors) {
  Bytes dup;
  dup.header(2, 0).tensor("w", {4}, kF32, 0).tensor("w", {4}, kF32, 32).pad(32).zeros(64);
  expect_error(dup.b, "duplicate tensor name 'w' (tensor info 1 ('w'))");

  Bytes overlap;
  overlap.header(2, 0).tensor("a", {16}, kF32, 0).tensor("b", {4}, kF32, 32).pad(32).zeros(96);
  expect_error(overlap.b, "tensors 'a' (bytes 0..64) and 'b' (from byte 32) overlap");

  Bytes same;
  same.header(2, 0).tensor("b", {4}, kF32, 0).tensor("a", {4}, kF32, 0).pad(32).zeros(64);
  expect_error(same.b, "overlap");

  // Out of order but disjoint is fine.
  Bytes ok;
  ok.header(2, 0).tensor("late", {4}, kF32, 32).tensor("early", {8}, kF32, 0).pad(32).zeros(64);
  Expected<File> f = File::parse(ok.b, "ok.gguf");
  ASSERT_TRUE(f.has_value()) << f.error().message;
  EXPECT_EQ(f->find_tensor("late")->offset, 32u);
}

TEST(GgufBadFile, CustomAlignmentIsHonoured) {
  Bytes f;
  f.header(1, 1).kv_u32("general.alignment", 64).tensor("w", {4}, kF32, 0);
  const size_t header_end = f.b.size();
  f.pad(64).zeros(16);
  Expected<File> file = File::parse(f.b, "a64.gguf");
  ASSERT_TRUE(file.has_value()) << file.error().message;
  EXPECT_EQ(file->alignment(), 64u);
  EXPECT_EQ(file->data_offset(), (header_end + 63) / 64 * 64);

  Bytes mis;
  mis.header(1, 1).kv_u32("general.alignment", 64).tensor("w", {4}, kF32, 32).pad(64).zeros(64);
  expect_error(mis.b, "offset 32 is not a multiple of the alignment 64");
}

TEST(GgufBadFile, EmptyAndTinyInputs) {
  expect_error({}, "truncated: header ends at byte 4 but the file has 0 bytes");
  expect_error({'G', 'G'}, "truncated: header");
  Expected<File> f = File::open("/nonexistent/dir/model.gguf");
  ASSERT_FALSE(f.has_value());
  EXPECT_NE(f.error().message.find("/nonexistent/dir/model.gguf: cannot open"), std::string::npos);
}

// Every single-byte corruption of the small file must parse or fail cleanly;
// when it parses, every tensor must lie inside the buffer.
TEST(GgufBadFile, SingleByteCorruptionsNeverCrash) {
  const std::vector<uint8_t> full = small_valid_file();
  for (size_t i = 0; i < full.size(); ++i) {
    for (uint8_t x : {uint8_t{0x00}, uint8_t{0xff}, uint8_t{0x80}, uint8_t{0x01}}) {
      std::vector<uint8_t> b = full;
      b[i] ^= x == 0 ? b[i] : x;  // x = 0 zeroes the byte
      Expected<File> f = File::parse(b, "mut.gguf");
      if (!f) continue;
      for (const TensorInfo& t : f->tensors()) {
        ASSERT_LE(f->data_offset() + t.offset + t.n_bytes, b.size()) << "byte " << i;
      }
    }
  }
}

}  // namespace
}  // namespace engram::gguf
