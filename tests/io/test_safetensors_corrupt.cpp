// trainer/io safetensors: one test per kind of corrupt or lying file. Each
// builds the bytes by hand and checks that opening throws loratune::Error
// whose message names the file (and the tensor where one is at fault).
#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>

#include "common/test_env.h"
#include "io/safetensors_bytes.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

using loratune::Error;
using loratune::io::Checkpoint;
using loratune::io::SafetensorsFile;
using loratune::test::st_bytes;

namespace {

// Writes `bytes` to a fresh file and expects open() to fail with a message
// containing the path and every string in `parts`.
void expect_rejected(const std::string& bytes, std::initializer_list<std::string> parts) {
  static int counter = 0;
  const std::string path =
      loratune::test::make_temp_dir("corrupt") + "/f" + std::to_string(counter++) + ".safetensors";
  loratune::test::write_file(path, bytes);
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "opened a corrupt file without error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), loratune::ErrorKind::kCorrupt) << msg;  // exit 5, not a config mistake
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

std::string entry(const std::string& dtype, const std::string& shape, uint64_t b, uint64_t e) {
  return R"({"dtype":")" + dtype + R"(","shape":)" + shape + R"(,"data_offsets":[)" +
         std::to_string(b) + "," + std::to_string(e) + "]}";
}

}  // namespace

TEST(SafetensorsCorrupt, ZeroLengthFile) {
  expect_rejected("", {"too small"});
}
TEST(SafetensorsCorrupt, ShorterThanEightBytes) {
  expect_rejected("\x02\0\0\0", {"too small"});
}

TEST(SafetensorsCorrupt, HeaderLengthOverLimit) {
  std::string b = st_bytes("{}", "");
  b[3] = 0x10;  // N = 0x10000002 > 100,000,000
  expect_rejected(b, {"exceeds the limit"});
}

TEST(SafetensorsCorrupt, HeaderLengthPastEndOfFile) {
  std::string b = st_bytes("{}", "");
  b[0] = 40;
  expect_rejected(b, {"past the end of the file"});
}

TEST(SafetensorsCorrupt, HeaderNotUtf8) {
  expect_rejected(st_bytes("{\"a\xff\xfe\":{}}", ""), {"invalid JSON"});
}

TEST(SafetensorsCorrupt, HeaderNotJson) {
  expect_rejected(st_bytes("{\"a\": [1,}", ""), {"(header):1:", "invalid JSON"});
}

TEST(SafetensorsCorrupt, HeaderNotAnObject) {
  expect_rejected(st_bytes("[1,2]   ", ""), {"not a JSON object"});
}

TEST(SafetensorsCorrupt, EntryNotAnObject) {
  expect_rejected(st_bytes(R"({"w":5})", ""), {"'w'", "not a JSON object"});
}

TEST(SafetensorsCorrupt, MissingFields) {
  expect_rejected(st_bytes(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, 0)),
                  {"'w'", "dtype"});
  expect_rejected(st_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, 0)),
                  {"'w'", "shape"});
  expect_rejected(st_bytes(R"({"w":{"dtype":"F32","shape":[1]}})", std::string(4, 0)),
                  {"'w'", "data_offsets"});
}

TEST(SafetensorsCorrupt, WrongFieldTypes) {
  const std::string d(4, 0);
  expect_rejected(st_bytes(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", d),
                  {"'w'", "dtype"});
  expect_rejected(st_bytes(R"({"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", d),
                  {"'w'", "shape"});
  expect_rejected(st_bytes(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", d),
                  {"'w'", "shape"});
  expect_rejected(st_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", d),
                  {"'w'", "data_offsets"});
  expect_rejected(st_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}})", d),
                  {"'w'", "data_offsets"});
}

TEST(SafetensorsCorrupt, UnknownDtype) {
  expect_rejected(st_bytes(R"({"w":)" + entry("F31", "[1]", 0, 4) + "}", std::string(4, 0)),
                  {"'w'", "unknown dtype \"F31\"", "did you mean \"F32\""});
}

TEST(SafetensorsCorrupt, NegativeShape) {
  expect_rejected(st_bytes(R"({"w":)" + entry("F32", "[-1]", 0, 4) + "}", std::string(4, 0)),
                  {"'w'", "negative"});
}

TEST(SafetensorsCorrupt, ShapeOverflowsByteSize) {
  // 2^32 * 2^32 elements: numel*size overflows u64; must not allocate.
  expect_rejected(
      st_bytes(R"({"w":)" + entry("F32", "[4294967296,4294967296]", 0, 4) + "}", std::string(4, 0)),
      {"'w'", "overflows"});
  expect_rejected(
      st_bytes(R"({"w":)" + entry("F32", "[99999999999999999999]", 0, 4) + "}", std::string(4, 0)),
      {"'w'"});
}

TEST(SafetensorsCorrupt, ByteSizeDiffersFromOffsets) {
  expect_rejected(st_bytes(R"({"w":)" + entry("F32", "[2]", 0, 4) + "}", std::string(4, 0)),
                  {"'w'", "byte size 8", "span 4"});
}

TEST(SafetensorsCorrupt, BeginAfterEnd) {
  expect_rejected(st_bytes(R"({"w":)" + entry("F32", "[1]", 8, 4) + "}", std::string(8, 0)),
                  {"'w'", "begin 8 > end 4"});
}

TEST(SafetensorsCorrupt, GapBetweenTensors) {
  expect_rejected(st_bytes(R"({"a":)" + entry("F32", "[1]", 0, 4) + R"(,"b":)" +
                               entry("F32", "[1]", 8, 12) + "}",
                           std::string(12, 0)),
                  {"'b'", "gap"});
}

TEST(SafetensorsCorrupt, FirstTensorNotAtZero) {
  expect_rejected(st_bytes(R"({"a":)" + entry("F32", "[1]", 4, 8) + "}", std::string(8, 0)),
                  {"'a'", "gap"});
}

TEST(SafetensorsCorrupt, OverlappingTensors) {
  expect_rejected(st_bytes(R"({"a":)" + entry("F32", "[2]", 0, 8) + R"(,"b":)" +
                               entry("F32", "[1]", 4, 8) + "}",
                           std::string(8, 0)),
                  {"'b'", "overlaps"});
}

TEST(SafetensorsCorrupt, OffsetsPastTheBuffer) {
  expect_rejected(st_bytes(R"({"a":)" + entry("F32", "[4]", 0, 16) + "}", std::string(8, 0)),
                  {"'a'", "past the data buffer"});
}

TEST(SafetensorsCorrupt, TrailingBytesAfterLastTensor) {
  expect_rejected(st_bytes(R"({"a":)" + entry("F32", "[1]", 0, 4) + "}", std::string(9, 0)),
                  {"5 trailing bytes"});
}

TEST(SafetensorsCorrupt, DuplicateTensorNames) {
  expect_rejected(st_bytes(R"({"a":)" + entry("F32", "[1]", 0, 4) + R"(,"a":)" +
                               entry("F32", "[1]", 4, 8) + "}",
                           std::string(8, 0)),
                  {"duplicate key \"a\""});
}

TEST(SafetensorsCorrupt, DuplicateFieldInsideEntry) {
  expect_rejected(
      st_bytes(R"({"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})",
               std::string(4, 0)),
      {"duplicate key \"dtype\""});
}

TEST(SafetensorsCorrupt, MetadataNotStringToString) {
  expect_rejected(st_bytes(R"({"__metadata__":{"format":1}})", ""), {"__metadata__", "format"});
  expect_rejected(st_bytes(R"({"__metadata__":["pt"]})", ""), {"__metadata__"});
}

TEST(SafetensorsLegal, ZeroSizeScalarAndEmptyFile) {
  const std::string path = loratune::test::make_temp_dir("legal") + "/ok.safetensors";
  // Zero-size tensors at the same offset, a scalar, an empty metadata map.
  const std::string h = R"({"__metadata__":{},"z":)" + entry("F32", "[0,3]", 0, 0) + R"(,"y":)" +
                        entry("I64", "[5,0]", 0, 0) + R"(,"s":)" + entry("F16", "[]", 0, 2) + "}";
  loratune::test::write_file(path, st_bytes(h, std::string("\x00\x3c", 2)));  // 1.0 in fp16
  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->tensor("z").sizes(), at::IntArrayRef({0, 3}));
  EXPECT_EQ(f->tensor("y").sizes(), at::IntArrayRef({5, 0}));
  EXPECT_EQ(f->tensor("s").dim(), 0);
  EXPECT_EQ(f->tensor("s").item<float>(), 1.0f);
  loratune::test::write_file(path, st_bytes("{}", ""));
  EXPECT_TRUE(SafetensorsFile::open(path)->tensors().empty());
}

// --- sharded checkpoints whose index and shards disagree ---------------------------

namespace {

struct ShardedFixture {
  std::string dir = loratune::test::make_temp_dir("ckbad");
  void shard(const std::string& file, const std::vector<std::string>& names) {
    loratune::io::NamedTensors t;
    for (const auto& n : names) t.emplace_back(n, loratune::test::pattern_tensor(at::kFloat, {2}));
    loratune::io::save_file(t, dir + "/" + file);
  }
  void index(const std::string& weight_map) {
    loratune::test::write_file(dir + "/model.safetensors.index.json",
                               R"({"metadata":{"total_size":16},"weight_map":)" + weight_map + "}");
  }
  void expect_rejected(std::initializer_list<std::string> parts) {
    try {
      Checkpoint::open(dir);
      ADD_FAILURE() << "opened an inconsistent checkpoint";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
      for (const auto& p : parts)
        EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    }
  }
};

}  // namespace

TEST(CheckpointCorrupt, IndexNamesMissingShard) {
  ShardedFixture f;
  f.shard("s1.safetensors", {"a"});
  f.index(R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  f.expect_rejected({"s2.safetensors", "missing"});
}

TEST(CheckpointCorrupt, ShardLacksTensor) {
  ShardedFixture f;
  f.shard("s1.safetensors", {"a"});
  f.shard("s2.safetensors", {"b"});
  f.index(R"({"a":"s1.safetensors","b":"s2.safetensors","c":"s2.safetensors"})");
  f.expect_rejected({"'c'", "s2.safetensors", "does not contain it"});
}

TEST(CheckpointCorrupt, TensorInTwoShards) {
  ShardedFixture f;
  f.shard("s1.safetensors", {"a", "b"});
  f.shard("s2.safetensors", {"b"});
  f.index(R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  f.expect_rejected({"'b'", "two shards", "s1.safetensors", "s2.safetensors"});
}

TEST(CheckpointCorrupt, TensorTwiceInWeightMap) {
  ShardedFixture f;
  f.shard("s1.safetensors", {"a"});
  f.index(R"({"a":"s1.safetensors","a":"s1.safetensors"})");
  f.expect_rejected({"duplicate key \"a\""});
}

TEST(CheckpointCorrupt, ShardPathEscapesDirectory) {
  ShardedFixture f;
  f.index(R"({"a":"../x.safetensors"})");
  f.expect_rejected({"'a'", "not a file name"});
}

TEST(CheckpointCorrupt, CorruptShardNamesShardFile) {
  ShardedFixture f;
  f.shard("s1.safetensors", {"a"});
  loratune::test::write_file(f.dir + "/s2.safetensors", "junk");
  f.index(R"({"a":"s1.safetensors","b":"s2.safetensors"})");
  try {
    Checkpoint::open(f.dir);
    ADD_FAILURE() << "opened a corrupt shard";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(f.dir + "/s2.safetensors"), std::string::npos) << e.what();
  }
}

// A file that is not there is an I/O error (exit 4); a JSON file that does
// not parse is corrupt (exit 5), whoever reads it.
TEST(ErrorKinds, MissingFilesAreIoAndMalformedJsonIsCorrupt) {
  const std::string dir = loratune::test::make_temp_dir("kinds");
  auto kind_of = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.kind();
    }
    ADD_FAILURE() << "no error";
    return loratune::ErrorKind::kInternal;
  };
  EXPECT_EQ(kind_of([&] { SafetensorsFile::open(dir + "/absent.safetensors"); }),
            loratune::ErrorKind::kIo);
  EXPECT_EQ(kind_of([&] { Checkpoint::open(dir); }), loratune::ErrorKind::kIo);
  EXPECT_EQ(kind_of([&] { loratune::io::read_json(dir + "/absent.json"); }),
            loratune::ErrorKind::kIo);
  loratune::test::write_file(dir + "/bad.json", "{\"a\": ");
  EXPECT_EQ(kind_of([&] { loratune::io::read_json(dir + "/bad.json"); }),
            loratune::ErrorKind::kCorrupt);
  loratune::test::write_file(dir + "/model.safetensors.index.json",
                             R"({"weight_map": {"w": "model-00001-of-00002.safetensors"}})");
  EXPECT_EQ(kind_of([&] { Checkpoint::open(dir); }), loratune::ErrorKind::kIo);  // shard missing
}
