// trainer/gguf reader: every metadata value type, tensor infos, alignment,
// and the block formats against values computed by hand from ggml's layout.
#include <gtest/gtest.h>

#include <c10/util/Half.h>

#include <cstring>

#include "gguf/gguf_bytes.h"
#include "gguf/tiny_gguf.h"
#include "trainer/gguf/gguf.h"

using loratune::Error;
using loratune::ErrorKind;
using loratune::gguf::GgufFile;
using loratune::gguf::ValueType;
using loratune::test::GgufBytes;

namespace {

uint16_t half_bits(float v) {
  return c10::Half(v).x;
}

}  // namespace

TEST(GgufRead, EveryValueType) {
  GgufBytes b;
  b.header(0, 14);
  b.str("u8").u32(0).u8(200);
  b.str("i8").u32(1).u8(0xFE);  // -2
  b.str("u16").u32(2).raw("\x34\x12", 2);
  b.str("i16").u32(3).raw("\xFF\xFF", 2);
  b.str("u32").u32(4).u32(4000000000u);
  b.str("i32").u32(5).i32(-7);
  b.str("f32").u32(6).f32(1.5f);
  b.str("bool").u32(7).u8(1);
  b.str("str").u32(8).str("h\xC3\xA9llo");
  b.str("u64").u32(10).u64(uint64_t{1} << 63);
  b.str("i64").u32(11).u64(static_cast<uint64_t>(int64_t{-5}));
  const double d = 2.25;
  b.str("f64").u32(12).raw(&d, 8);
  b.str("arr").u32(9).u32(5).u64(3).i32(1).i32(2).i32(3);
  // An array of arrays of strings: [["a"], ["b", "c"]].
  b.str("nested").u32(9).u32(9).u64(2);
  b.u32(8).u64(1).str("a");
  b.u32(8).u64(2).str("b").str("c");
  auto f = GgufFile::parse(b.bytes(), "mem.gguf");
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->get_int("u8"), 200);
  EXPECT_EQ(f->get_int("i8"), -2);
  EXPECT_EQ(f->get_int("u16"), 0x1234);
  EXPECT_EQ(f->get_int("i16"), -1);
  EXPECT_EQ(f->get_int("u32"), 4000000000LL);
  EXPECT_EQ(f->get_int("i32"), -7);
  EXPECT_EQ(f->get_float("f32"), 1.5);
  EXPECT_TRUE(f->get_bool("bool"));
  EXPECT_EQ(f->get_string("str"), "h\xC3\xA9llo");
  EXPECT_EQ(f->find("u64")->u, uint64_t{1} << 63);
  EXPECT_THROW(f->get_int("u64"), Error);  // does not fit int64
  EXPECT_EQ(f->get_int("i64"), -5);
  EXPECT_EQ(f->get_float("f64"), 2.25);
  const auto& arr = f->get_array("arr", ValueType::kInt32);
  ASSERT_EQ(arr.size(), 3u);
  EXPECT_EQ(arr[2].i, 3);
  const auto& nested = f->get_array("nested", ValueType::kArray);
  ASSERT_EQ(nested.size(), 2u);
  EXPECT_EQ(nested[1].array[1].s, "c");
  EXPECT_EQ(f->metadata()[0].first, "u8");  // file order
  try {
    f->get_string("u8");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "mem.gguf: metadata key 'u8' is uint8, expected string");
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
  }
}

TEST(GgufRead, TensorInfosAlignmentAndVersion2) {
  loratune::test::ModelSpec m = loratune::test::tiny_llama();
  m.version = 2;
  m.align = 64;
  m.set("general.alignment", loratune::test::kv_u32("general.alignment", 64));
  auto f = GgufFile::parse(loratune::test::build(m), "mem.gguf");
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  const auto* k = f->find_tensor("blk.0.attn_k.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->shape, (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(k->nbytes, 16u * 32 * 4);
  const at::Tensor t = f->dequantize(*k);
  EXPECT_EQ(t.sizes(), at::IntArrayRef({16, 32}));
  float first;
  std::memcpy(&first, f->data(*k), 4);
  EXPECT_EQ(t[0][0].item<float>(), first);
}

// One block of each format, decoded by the formulas in ggml-common.h.
TEST(GgufDequant, BlockFormats) {
  using loratune::gguf::dequantize_row;
  std::vector<float> y(32);
  const uint16_t d = half_bits(0.5f), m = half_bits(-1.25f);
  {  // Q8_0: x = d * q
    std::string b(34, '\0');
    std::memcpy(&b[0], &d, 2);
    for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<char>(j * 7 - 100);
    dequantize_row(8, reinterpret_cast<const uint8_t*>(b.data()), y.data(), 32);
    for (int j = 0; j < 32; ++j)
      EXPECT_EQ(y[j], 0.5f * static_cast<float>(static_cast<int8_t>(j * 7 - 100)));
  }
  std::string qs(16, '\0');
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<char>((j & 15) | ((15 - j) << 4));
  {  // Q4_0: x[j] = d * (lo - 8), x[j + 16] = d * (hi - 8)
    std::string b(reinterpret_cast<const char*>(&d), 2);
    b += qs;
    dequantize_row(2, reinterpret_cast<const uint8_t*>(b.data()), y.data(), 32);
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(y[j], 0.5f * static_cast<float>(j - 8));
      EXPECT_EQ(y[j + 16], 0.5f * static_cast<float>(15 - j - 8));
    }
  }
  {  // Q4_1: x = d * q + m
    std::string b(reinterpret_cast<const char*>(&d), 2);
    b.append(reinterpret_cast<const char*>(&m), 2);
    b += qs;
    dequantize_row(3, reinterpret_cast<const uint8_t*>(b.data()), y.data(), 32);
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(y[j], 0.5f * static_cast<float>(j) - 1.25f);
      EXPECT_EQ(y[j + 16], 0.5f * static_cast<float>(15 - j) - 1.25f);
    }
  }
  const uint32_t qh = 0xA5A50F0Fu;  // bit j: the fifth bit of value j
  {                                 // Q5_0: x = d * (q - 16)
    std::string b(reinterpret_cast<const char*>(&d), 2);
    b.append(reinterpret_cast<const char*>(&qh), 4);
    b += qs;
    dequantize_row(6, reinterpret_cast<const uint8_t*>(b.data()), y.data(), 32);
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(y[j], 0.5f * static_cast<float>((j | static_cast<int>(((qh >> j) & 1) << 4)) - 16));
      EXPECT_EQ(y[j + 16],
                0.5f * static_cast<float>(
                           ((15 - j) | static_cast<int>(((qh >> (j + 16)) & 1) << 4)) - 16));
    }
  }
  {  // Q5_1: x = d * q + m
    std::string b(reinterpret_cast<const char*>(&d), 2);
    b.append(reinterpret_cast<const char*>(&m), 2);
    b.append(reinterpret_cast<const char*>(&qh), 4);
    b += qs;
    dequantize_row(7, reinterpret_cast<const uint8_t*>(b.data()), y.data(), 32);
    for (int j = 0; j < 16; ++j) {
      EXPECT_EQ(y[j],
                0.5f * static_cast<float>(j | static_cast<int>(((qh >> j) & 1) << 4)) - 1.25f);
    }
  }
  {                                                    // F16 and BF16 widen exactly
    const uint16_t h[2] = {half_bits(-3.5f), 0x3F80};  // BF16 0x3F80 = 1.0
    dequantize_row(1, reinterpret_cast<const uint8_t*>(h), y.data(), 1);
    EXPECT_EQ(y[0], -3.5f);
    dequantize_row(30, reinterpret_cast<const uint8_t*>(h + 1), y.data(), 1);
    EXPECT_EQ(y[0], 1.0f);
  }
  try {
    dequantize_row(13, nullptr, y.data(), 256);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("Q5_K"), std::string::npos);
  }
}

// Random byte flips and truncations of a valid file: every outcome is a
// parsed file or a loratune::Error, never a crash or another exception.
TEST(GgufRead, MutatedFilesFailCleanly) {
  const std::string valid = loratune::test::build(loratune::test::tiny_llama());
  uint64_t state = 12345;
  auto next = [&] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return state >> 33;
  };
  int parsed = 0, refused = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string b = valid;
    const int flips = 1 + static_cast<int>(next() % 4);
    for (int k = 0; k < flips; ++k) b[next() % b.size()] = static_cast<char>(next() & 0xFF);
    if (next() % 4 == 0) b.resize(next() % b.size());
    try {
      auto f = GgufFile::parse(b, "mutated.gguf");
      const auto model = loratune::gguf::map_model(*f, at::kFloat);
      for (const auto& e : model.entries) loratune::gguf::hf_tensor(*f, e, at::kFloat);
      loratune::gguf::map_tokenizer(*f);
      ++parsed;
    } catch (const Error&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(parsed, 0);
}
