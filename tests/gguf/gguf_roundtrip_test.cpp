// The writer's output read back by the reader: every value type, arrays,
// tensors, alignment, the typed getters and value printing.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "gguf/gguf.h"
#include "test_support.h"

namespace engram::gguf {
namespace {

Value make_scalar(ValueType t, decltype(Value::data) data) {
  Value v;
  v.type = t;
  v.data = std::move(data);
  return v;
}

Value make_array(ValueType elem, decltype(Value::data) data) {
  Value v;
  v.type = ValueType::ARRAY;
  v.array_type = elem;
  v.data = std::move(data);
  return v;
}

File parse_or_die(const std::vector<uint8_t>& bytes) {
  Expected<File> f = File::parse(bytes, "roundtrip.gguf");
  EXPECT_TRUE(f.has_value()) << (f ? "" : f.error().message);
  if (!f) std::abort();
  return std::move(f.value());
}

// The File points into the bytes, so they must outlive it: no temporaries.
File parse_or_die(const std::vector<uint8_t>&&) = delete;

std::vector<uint8_t> pattern_bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 7);
  return b;
}

// Every scalar and array type, with values at the edges of each type's range.
Writer writer_with_every_type() {
  Writer w;
  w.set("u8", make_scalar(ValueType::UINT8, uint64_t{255}));
  w.set("i8", make_scalar(ValueType::INT8, int64_t{-128}));
  w.set("u16", make_scalar(ValueType::UINT16, uint64_t{65535}));
  w.set("i16", make_scalar(ValueType::INT16, int64_t{-32768}));
  w.set_u32("u32", 4294967295u);
  w.set_i32("i32", -2147483647 - 1);
  w.set_f32("f32", 1e-5f);
  w.set_bool("bool.true", true);
  w.set_bool("bool.false", false);
  w.set_string("string", "héllo\n\"world\"");
  w.set_string("string.empty", "");
  w.set_u64("u64", std::numeric_limits<uint64_t>::max());
  w.set("i64", make_scalar(ValueType::INT64, std::numeric_limits<int64_t>::min()));
  w.set("f64", make_scalar(ValueType::FLOAT64, 0.1));
  w.set("arr.u8", make_array(ValueType::UINT8, std::vector<uint64_t>{0, 1, 255}));
  w.set("arr.i8", make_array(ValueType::INT8, std::vector<int64_t>{-128, 0, 127}));
  w.set("arr.u16", make_array(ValueType::UINT16, std::vector<uint64_t>{65535, 1}));
  w.set("arr.i16", make_array(ValueType::INT16, std::vector<int64_t>{-32768, 32767}));
  w.set("arr.u32", make_array(ValueType::UINT32, std::vector<uint64_t>{4294967295u, 7}));
  w.set_i32_array("arr.i32", {-1, 2, -3});
  w.set_f32_array("arr.f32", {0.5f, -1.25f, 3e38f});
  w.set("arr.bool", make_array(ValueType::BOOL, std::vector<bool>{true, false, true}));
  w.set_string_array("arr.string", {"<unk>", "", "▁the"});
  w.set("arr.u64", make_array(ValueType::UINT64, std::vector<uint64_t>{std::numeric_limits<uint64_t>::max()}));
  w.set("arr.i64", make_array(ValueType::INT64, std::vector<int64_t>{std::numeric_limits<int64_t>::min(), 5}));
  w.set("arr.f64", make_array(ValueType::FLOAT64, std::vector<double>{1e300, -0.0}));
  w.set("arr.empty", make_array(ValueType::INT32, std::vector<int64_t>{}));
  return w;
}

TEST(GgufRoundTrip, EveryValueTypeSurvives) {
  Writer w = writer_with_every_type();
  const std::vector<uint8_t> bytes = w.serialize();
  File f = parse_or_die(bytes);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_FALSE(f.has("general.alignment"));  // default alignment is not written

  struct Case {
    const char* key;
    ValueType type;
  };
  const Case cases[] = {{"u8", ValueType::UINT8},       {"i8", ValueType::INT8},         {"u16", ValueType::UINT16},
                        {"i16", ValueType::INT16},      {"u32", ValueType::UINT32},      {"i32", ValueType::INT32},
                        {"f32", ValueType::FLOAT32},    {"bool.true", ValueType::BOOL},  {"string", ValueType::STRING},
                        {"u64", ValueType::UINT64},     {"i64", ValueType::INT64},       {"f64", ValueType::FLOAT64},
                        {"arr.u8", ValueType::ARRAY},   {"arr.string", ValueType::ARRAY}};
  for (const Case& c : cases) {
    const Value* v = f.find(c.key);
    ASSERT_NE(v, nullptr) << c.key;
    EXPECT_EQ(v->type, c.type) << c.key;
  }
  // Metadata keeps the writer's order.
  ASSERT_EQ(f.metadata().size(), 27u);
  EXPECT_EQ(f.metadata()[0].first, "u8");
  EXPECT_EQ(f.metadata()[26].first, "arr.empty");

  EXPECT_EQ(*f.get_int("u8"), 255);
  EXPECT_EQ(*f.get_int("i8"), -128);
  EXPECT_EQ(*f.get_int("u16"), 65535);
  EXPECT_EQ(*f.get_int("i16"), -32768);
  EXPECT_EQ(*f.get_u32("u32"), 4294967295u);
  EXPECT_EQ(*f.get_int("i32"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(static_cast<float>(*f.get_float("f32")), 1e-5f);
  EXPECT_TRUE(*f.get_bool("bool.true"));
  EXPECT_FALSE(*f.get_bool("bool.false"));
  EXPECT_EQ(*f.get_string("string"), "héllo\n\"world\"");
  EXPECT_EQ(*f.get_string("string.empty"), "");
  EXPECT_EQ(std::get<uint64_t>(f.find("u64")->data), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(*f.get_int("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*f.get_float("f64"), 0.1);

  EXPECT_EQ(*f.get_int_array("arr.u8"), (std::vector<int64_t>{0, 1, 255}));
  EXPECT_EQ(*f.get_int_array("arr.i8"), (std::vector<int64_t>{-128, 0, 127}));
  EXPECT_EQ(*f.get_int_array("arr.u16"), (std::vector<int64_t>{65535, 1}));
  EXPECT_EQ(*f.get_int_array("arr.i16"), (std::vector<int64_t>{-32768, 32767}));
  EXPECT_EQ(*f.get_int_array("arr.u32"), (std::vector<int64_t>{4294967295LL, 7}));
  EXPECT_EQ(*f.get_int_array("arr.i32"), (std::vector<int64_t>{-1, 2, -3}));
  EXPECT_EQ(*f.get_float_array("arr.f32"), (std::vector<double>{0.5, -1.25, static_cast<double>(3e38f)}));
  EXPECT_EQ(std::get<std::vector<bool>>(f.find("arr.bool")->data), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(*f.get_string_array("arr.string"), (std::vector<std::string>{"<unk>", "", "▁the"}));
  EXPECT_EQ(std::get<std::vector<uint64_t>>(f.find("arr.u64")->data),
            (std::vector<uint64_t>{std::numeric_limits<uint64_t>::max()}));
  EXPECT_EQ(*f.get_int_array("arr.i64"), (std::vector<int64_t>{std::numeric_limits<int64_t>::min(), 5}));
  std::vector<double> f64 = *f.get_float_array("arr.f64");
  ASSERT_EQ(f64.size(), 2u);
  EXPECT_EQ(f64[0], 1e300);
  EXPECT_TRUE(f64[1] == 0.0 && std::signbit(f64[1]));
  EXPECT_EQ(f.find("arr.empty")->array_size(), 0u);
  EXPECT_EQ(f.find("arr.empty")->array_type, ValueType::INT32);
  EXPECT_EQ(f.find("arr.string")->array_size(), 3u);
  EXPECT_EQ(f.find("arr.bool")->array_type, ValueType::BOOL);
}

TEST(GgufRoundTrip, SerializedBytesFollowTheFormat) {
  Writer w;
  w.set_u32("k", 7);
  std::vector<uint8_t> b = w.serialize();
  // magic, version 3, 0 tensors, 1 kv, key "k", type u32 (4), value 7: 4+4+8+8+8+1+4+4 = 41 bytes, padded to 64.
  ASSERT_EQ(b.size(), 64u);
  EXPECT_EQ(std::memcmp(b.data(), "GGUF", 4), 0);
  EXPECT_EQ(b[4], 3);
  EXPECT_EQ(b[16], 1);  // n_kv low byte
  EXPECT_EQ(b[24], 1);  // key length
  EXPECT_EQ(b[32], 'k');
  EXPECT_EQ(b[33], 4);  // ValueType::UINT32
  EXPECT_EQ(b[37], 7);
}

TEST(GgufRoundTrip, SetReplacesAndKeepsOrder) {
  Writer w;
  w.set_u32("a", 1);
  w.set_string("b", "x");
  w.set_u32("a", 2);
  const std::vector<uint8_t> bytes = w.serialize();
  File f = parse_or_die(bytes);
  ASSERT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.metadata()[0].first, "a");
  EXPECT_EQ(*f.get_int("a"), 2);
}

TEST(GgufRoundTrip, TensorsKeepShapeTypeAndBytes) {
  for (uint64_t alignment : {32u, 64u, 1u, 4096u}) {
    Writer w;
    w.alignment = alignment;
    w.set_string("general.architecture", "llama");
    std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 5.0f, 6.0f};
    ASSERT_TRUE(w.add_tensor_f32("a.weight", {3, 2}, f32).is_ok());
    std::vector<uint8_t> q8 = pattern_bytes(2 * 34 * 3, 11);  // Q8_0: 64 x 3 = 2 blocks of 34 bytes per row
    ASSERT_TRUE(w.add_tensor("b.weight", GgmlType::Q8_0, {64, 3}, q8).is_ok());
    std::vector<uint8_t> f16 = pattern_bytes(2 * 5 * 1 * 2 * 3, 99);
    ASSERT_TRUE(w.add_tensor("c", GgmlType::F16, {5, 1, 2, 3}, f16).is_ok());
    std::vector<uint8_t> bytes = w.serialize();
    File f = parse_or_die(bytes);

    EXPECT_EQ(f.alignment(), alignment);
    if (alignment != 32) EXPECT_EQ(*f.get_u32("general.alignment"), alignment);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    ASSERT_EQ(f.tensors().size(), 3u);
    const TensorInfo& a = f.tensors()[0];
    EXPECT_EQ(a.name, "a.weight");
    EXPECT_EQ(a.type, GgmlType::F32);
    EXPECT_EQ(a.n_dims, 2);
    EXPECT_EQ(a.ne, (std::array<int64_t, 4>{3, 2, 1, 1}));
    EXPECT_EQ(a.n_bytes, 24u);
    EXPECT_EQ(std::memcmp(f.tensor_data(a), f32.data(), 24), 0);

    const TensorInfo* b = f.find_tensor("b.weight");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->type, GgmlType::Q8_0);
    EXPECT_EQ(b->n_elements(), 192);
    EXPECT_EQ(b->n_bytes, q8.size());
    EXPECT_EQ(std::memcmp(f.tensor_data(*b), q8.data(), q8.size()), 0);
    TensorView vb = f.view(*b);
    EXPECT_EQ(vb.name, "b.weight");
    EXPECT_EQ(vb.n_rows(), 3);
    EXPECT_EQ(vb.row_size(), 68u);
    EXPECT_EQ(vb.row(2), f.tensor_data(*b) + 136);

    const TensorInfo* c = f.find_tensor("c");
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->n_dims, 4);
    EXPECT_EQ(c->ne, (std::array<int64_t, 4>{5, 1, 2, 3}));
    EXPECT_EQ(std::memcmp(f.tensor_data(*c), f16.data(), f16.size()), 0);
    for (const TensorInfo& t : f.tensors()) {
      EXPECT_EQ(t.offset % alignment, 0u) << t.name;
      EXPECT_EQ((f.data_offset() + t.offset) % alignment, 0u) << t.name;
    }
    EXPECT_EQ(f.find_tensor("missing"), nullptr);
    EXPECT_EQ(bytes.size() % alignment, 0u);  // the data is padded to the alignment
  }
}

TEST(GgufRoundTrip, WriteGoesThroughTmpAndRename) {
  auto dir = test::temp_dir("gguf-write");
  const std::string path = (dir / "out.gguf").string();
  Writer w = writer_with_every_type();
  std::vector<float> data(32, 0.25f);
  ASSERT_TRUE(w.add_tensor_f32("t", {32}, data).is_ok());
  Status s = w.write(path);
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  Expected<File> f = File::open(path);
  ASSERT_TRUE(f.has_value()) << f.error().message;
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->file_size(), std::filesystem::file_size(path));
  EXPECT_EQ(f->metadata().size(), 27u);
  const float* t = reinterpret_cast<const float*>(f->tensor_data(f->tensors().at(0)));
  EXPECT_EQ(t[31], 0.25f);

  // Overwriting an existing file works too; the old mapping stays valid.
  Writer w2;
  w2.set_u32("only", 1);
  ASSERT_TRUE(w2.write(path).is_ok());
  EXPECT_EQ(t[31], 0.25f);
  Expected<File> f2 = File::open(path);
  ASSERT_TRUE(f2.has_value());
  EXPECT_EQ(f2->metadata().size(), 1u);

  Status bad = w2.write((dir / "no-such-dir" / "x.gguf").string());
  EXPECT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find("no-such-dir"), std::string::npos) << bad.message();
  std::filesystem::remove_all(dir);
}

TEST(GgufRoundTrip, WriterRejectsBadTensorsAndSettings) {
  Writer w;
  std::vector<float> four(4, 1.0f);
  ASSERT_TRUE(w.add_tensor_f32("x", {4}, four).is_ok());
  Status dup = w.add_tensor_f32("x", {4}, four);
  EXPECT_NE(dup.message().find("duplicate tensor 'x'"), std::string::npos) << dup.message();
  Status size = w.add_tensor_f32("y", {5}, four);
  EXPECT_NE(size.message().find("16 bytes of data, expected 20"), std::string::npos) << size.message();
  Status block = w.add_tensor("z", GgmlType::Q4_0, {16}, std::vector<uint8_t>(9));
  EXPECT_NE(block.message().find("block size"), std::string::npos) << block.message();
  Status dims = w.add_tensor_f32("d", {1, 1, 1, 1, 4}, four);
  EXPECT_NE(dims.message().find("5 dimensions"), std::string::npos) << dims.message();
  Status zero = w.add_tensor_f32("e", {4, 0}, four);
  EXPECT_NE(zero.message().find("ne[1] must be positive"), std::string::npos) << zero.message();
  Status type = w.add_tensor("u", static_cast<GgmlType>(4), {4}, std::vector<uint8_t>(4));
  EXPECT_NE(type.message().find("unknown type id 4"), std::string::npos) << type.message();

  auto dir = test::temp_dir("gguf-badwrite");
  w.alignment = 48;
  Status align = w.write((dir / "a.gguf").string());
  EXPECT_NE(align.message().find("alignment 48"), std::string::npos) << align.message();
  w.alignment = 32;
  w.set("mismatch", make_scalar(ValueType::UINT32, std::string("not a number")));
  Status mismatch = w.write((dir / "a.gguf").string());
  EXPECT_NE(mismatch.message().find("'mismatch'"), std::string::npos) << mismatch.message();
  EXPECT_FALSE(std::filesystem::exists(dir / "a.gguf"));
  std::filesystem::remove_all(dir);
}

TEST(GgufRoundTrip, CopyMetadataCopiesEveryKey) {
  const std::vector<uint8_t> src_bytes = writer_with_every_type().serialize();
  File src = parse_or_die(src_bytes);
  Writer w;
  w.copy_metadata(src);
  w.set_u32("general.quantization_version", 2);
  const std::vector<uint8_t> dst_bytes = w.serialize();
  File dst = parse_or_die(dst_bytes);
  ASSERT_EQ(dst.metadata().size(), src.metadata().size() + 1);
  for (size_t i = 0; i < src.metadata().size(); ++i) {
    EXPECT_EQ(dst.metadata()[i].first, src.metadata()[i].first);
    EXPECT_EQ(dst.metadata()[i].second.type, src.metadata()[i].second.type);
    EXPECT_EQ(dst.metadata()[i].second.to_string(100), src.metadata()[i].second.to_string(100));
  }
}

TEST(GgufGetters, WrongTypesAndMissingKeysNameTheKey) {
  Writer w = writer_with_every_type();
  w.set("neg", make_scalar(ValueType::INT32, int64_t{-5}));
  const std::vector<uint8_t> bytes = w.serialize();
  File f = parse_or_die(bytes);

  Expected<std::string> missing = f.get_string("no.such.key");
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message.find("roundtrip.gguf: metadata key 'no.such.key' not found"), std::string::npos)
      << missing.error().message;

  Expected<bool> b = f.get_bool("string");
  ASSERT_FALSE(b.has_value());
  EXPECT_NE(b.error().message.find("'string' has type string, expected bool"), std::string::npos) << b.error().message;

  Expected<int64_t> i = f.get_int("f32");
  ASSERT_FALSE(i.has_value());
  EXPECT_NE(i.error().message.find("'f32' has type f32, expected an integer"), std::string::npos);
  EXPECT_FALSE(f.get_int("bool.true").has_value());

  Expected<int64_t> big = f.get_int("u64");
  ASSERT_FALSE(big.has_value());
  EXPECT_NE(big.error().message.find("does not fit in i64"), std::string::npos);

  Expected<uint32_t> neg = f.get_u32("neg");
  ASSERT_FALSE(neg.has_value());
  EXPECT_NE(neg.error().message.find("'neg' value -5 does not fit in u32"), std::string::npos) << neg.error().message;
  EXPECT_FALSE(f.get_u32("i64").has_value());
  EXPECT_EQ(*f.get_u32("u8"), 255u);

  EXPECT_EQ(*f.get_float("u16"), 65535.0);  // integers widen to float
  EXPECT_EQ(*f.get_float("i8"), -128.0);
  EXPECT_FALSE(f.get_float("string").has_value());

  Expected<std::vector<std::string>> sa = f.get_string_array("arr.i32");
  ASSERT_FALSE(sa.has_value());
  EXPECT_NE(sa.error().message.find("'arr.i32' has type array of i32, expected array of string"), std::string::npos)
      << sa.error().message;
  EXPECT_FALSE(f.get_int_array("arr.f32").has_value());
  EXPECT_FALSE(f.get_int_array("arr.u64").has_value());  // 2^64-1 does not fit in i64
  EXPECT_FALSE(f.get_int_array("u8").has_value());        // a scalar is not an array
  EXPECT_EQ(*f.get_float_array("arr.i32"), (std::vector<double>{-1, 2, -3}));
  EXPECT_FALSE(f.get_float_array("arr.string").has_value());

  EXPECT_EQ(*f.get_int_or("absent", 42), 42);
  EXPECT_EQ(*f.get_int_or("u8", 42), 255);
  EXPECT_FALSE(f.get_int_or("string", 42).has_value());  // present with the wrong kind is still an error
  EXPECT_EQ(*f.get_float_or("absent", 0.5), 0.5);
  EXPECT_FALSE(f.get_float_or("string", 0.5).has_value());
  EXPECT_TRUE(*f.get_bool_or("absent", true));
  EXPECT_FALSE(*f.get_bool_or("bool.false", true));
  EXPECT_FALSE(f.get_bool_or("u8", true).has_value());
}

TEST(GgufValue, ToStringIsReadable) {
  const std::vector<uint8_t> bytes = writer_with_every_type().serialize();
  File f = parse_or_die(bytes);
  EXPECT_EQ(f.find("f32")->to_string(), "1e-05");
  EXPECT_EQ(f.find("f64")->to_string(), "0.1");
  EXPECT_EQ(f.find("i8")->to_string(), "-128");
  EXPECT_EQ(f.find("u64")->to_string(), "18446744073709551615");
  EXPECT_EQ(f.find("bool.true")->to_string(), "true");
  EXPECT_EQ(f.find("string")->to_string(), "\"héllo\\n\\\"world\\\"\"");
  EXPECT_EQ(f.find("arr.i32")->to_string(), "[-1, 2, -3]");
  EXPECT_EQ(f.find("arr.i32")->to_string(2), "[-1, 2, ... 1 more]");
  EXPECT_EQ(f.find("arr.i32")->to_string(0), "[... 3 more]");
  EXPECT_EQ(f.find("arr.f32")->to_string(2), "[0.5, -1.25, ... 1 more]");
  EXPECT_EQ(f.find("arr.bool")->to_string(), "[true, false, true]");
  EXPECT_EQ(f.find("arr.string")->to_string(), "[\"<unk>\", \"\", \"▁the\"]");
  EXPECT_EQ(f.find("arr.empty")->to_string(), "[]");
  EXPECT_TRUE(f.find("u8")->is_integer());
  EXPECT_FALSE(f.find("u8")->is_float());
  EXPECT_TRUE(f.find("f64")->is_float());
  EXPECT_FALSE(f.find("arr.f32")->is_float());
  EXPECT_EQ(value_type_name(ValueType::FLOAT64), "f64");
  EXPECT_EQ(value_type_name(static_cast<ValueType>(99)), "unknown");
}

}  // namespace
}  // namespace engram::gguf
