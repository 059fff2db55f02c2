// trainer/io safetensors: round trips, layout, sharding, atomicity, fuzzing.
// Corrupt-file cases live in test_safetensors_corrupt.cpp.
#include <ATen/ops/empty.h>
#include <ATen/ops/randn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <random>

#include "common/test_env.h"
#include "io/safetensors_bytes.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;
using loratune::Error;
using namespace loratune::io;
using loratune::test::make_temp_dir;
using loratune::test::pattern_tensor;
using loratune::test::same_bytes;

namespace {

const at::ScalarType kAllTypes[] = {at::kFloat,  at::kHalf,          at::kBFloat16,   at::kDouble,
                                    at::kLong,   at::kInt,           at::kShort,      at::kChar,
                                    at::kByte,   at::kBool,          at::kUInt16,     at::kUInt32,
                                    at::kUInt64, at::kFloat8_e4m3fn, at::kFloat8_e5m2};

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

TEST(SafetensorsRoundTrip, EveryDtypeAndShape) {
  const std::string path = make_temp_dir("st") + "/all.safetensors";
  const std::vector<std::vector<int64_t>> shapes = {{2, 3}, {}, {0, 4}, {7}};
  NamedTensors tensors;
  for (auto t : kAllTypes) {
    for (size_t s = 0; s < shapes.size(); ++s) {
      tensors.emplace_back(dtype_name(t) + "." + std::to_string(s), pattern_tensor(t, shapes[s]));
    }
  }
  save_file(tensors, path);
  auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->tensors().size(), tensors.size());
  for (const auto& [name, want] : tensors) {
    at::Tensor got = f->tensor(name);
    EXPECT_TRUE(same_bytes(got, want)) << name;
    EXPECT_EQ(f->find(name)->dtype, dtype_name(want.scalar_type()));
  }
  EXPECT_EQ(f->metadata().at("format"), "pt");
}

TEST(SafetensorsRoundTrip, LargeNonContiguousAndMetadata) {
  const std::string path = make_temp_dir("st") + "/big.safetensors";
  at::Tensor big = at::randn({1024, 4096});         // 16 MiB
  at::Tensor transposed = at::randn({96, 64}).t();  // non-contiguous view
  save_file({{"big", big}, {"tt", transposed}}, path, {{"step", "12"}, {"format", "pt"}});
  auto f = SafetensorsFile::open(path);
  EXPECT_TRUE(same_bytes(f->tensor("big"), big));
  EXPECT_TRUE(same_bytes(f->tensor("tt"), transposed.contiguous()));
  EXPECT_EQ(f->metadata(), (Metadata{{"format", "pt"}, {"step", "12"}}));
}

TEST(SafetensorsReader, TensorOutlivesFileAndWritesStayPrivate) {
  const std::string path = make_temp_dir("st") + "/a.safetensors";
  at::Tensor want = pattern_tensor(at::kFloat, {4, 4});
  save_file({{"w", want}}, path);
  const std::string before = loratune::test::read_file(path);
  at::Tensor view;
  {
    auto f = SafetensorsFile::open(path);
    view = f->tensor("w");
  }  // the file object is gone; the mapping lives on in the view's deleter
  EXPECT_TRUE(same_bytes(view, want));
  view.fill_(42.0);  // copy-on-write: never reaches the file
  EXPECT_EQ(view[0][0].item<float>(), 42.0f);
  EXPECT_EQ(loratune::test::read_file(path), before);
  EXPECT_TRUE(same_bytes(SafetensorsFile::open(path)->tensor("w"), want));
}

TEST(SafetensorsReader, ReleaseKeepsViewsReadable) {
  const std::string path = make_temp_dir("st") + "/r.safetensors";
  at::Tensor want = at::randn({256, 1024});
  save_file({{"a", want}, {"b", pattern_tensor(at::kHalf, {3})}}, path);
  auto f = SafetensorsFile::open(path);
  at::Tensor v = f->tensor("a");
  f->release(*f->find("a"));
  EXPECT_TRUE(same_bytes(v, want));  // pages fault back in from the file
}

TEST(SafetensorsReader, MisalignedDataIsCopied) {
  // A header of length 10 puts the data at offset 18: not 4-byte aligned.
  const std::string header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string h = header + std::string(10 - header.size() % 10, ' ');
  float vals[2] = {1.5f, -2.0f};
  const std::string path = make_temp_dir("st") + "/m.safetensors";
  std::string bytes = loratune::test::st_bytes(h, std::string(reinterpret_cast<char*>(vals), 8));
  loratune::test::write_file(path, bytes);
  at::Tensor t = SafetensorsFile::open(path)->tensor("x");
  EXPECT_EQ(t[0].item<float>(), 1.5f);
  EXPECT_EQ(t[1].item<float>(), -2.0f);
}

TEST(SafetensorsReader, OpenReadsOnlyTheHeader) {
  // A sparse 8 GiB file: opening it must not touch (or allocate) the data.
  const std::string path = make_temp_dir("st") + "/sparse.safetensors";
  const uint64_t n = 8ull << 30;
  std::string header = R"({"w":{"dtype":"U8","shape":[)" + std::to_string(n) +
                       R"(],"data_offsets":[0,)" + std::to_string(n) + "]}}";
  header.append((8 - header.size() % 8) % 8, ' ');
  loratune::test::write_file(path, loratune::test::st_bytes(header, ""));
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(8 + header.size() + n)), 0);
  auto t0 = std::chrono::steady_clock::now();
  auto f = SafetensorsFile::open(path);
  at::Tensor w = f->tensor("w");
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(w.numel(), static_cast<int64_t>(n));
  EXPECT_LT(ms, 200.0);
}

TEST(SafetensorsWriter, ReferenceLayout) {
  std::string bytes =
      serialize({{"b", pattern_tensor(at::kFloat, {3})}, {"a", pattern_tensor(at::kByte, {1})}});
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  ASSERT_EQ(n % 8, 0u);
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(
      header.substr(0, header.find_last_not_of(' ') + 1),
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("a":{"dtype":"U8","shape":[1],"data_offsets":[12,13]}})");
  EXPECT_EQ(bytes.size(), 8 + n + 13);
}

TEST(SafetensorsWriter, RejectsDuplicatesAndUnsupportedTypes) {
  at::Tensor t = pattern_tensor(at::kFloat, {2});
  EXPECT_THROW(serialize({{"x", t}, {"x", t}}), Error);
  EXPECT_THROW(serialize({{"c", t.to(at::kComplexFloat)}}), Error);
  EXPECT_THROW(serialize({{"u", at::Tensor()}}), Error);
  EXPECT_THROW(serialize({{"m", at::empty({2}, at::TensorOptions().device(at::kMeta))}}), Error);
}

TEST(SafetensorsWriter, AtomicNoTempLeftAndTargetUntouchedOnFailure) {
  const std::string dir = make_temp_dir("st");
  const std::string path = dir + "/m.safetensors";
  save_file({{"x", pattern_tensor(at::kFloat, {2})}}, path);
  const std::string before = loratune::test::read_file(path);
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"m.safetensors"});
  try {
    save_file({{"y", pattern_tensor(at::kFloat, {2})}, {"bad", at::Tensor()}}, path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad"), std::string::npos) << e.what();
  }
  EXPECT_EQ(loratune::test::read_file(path), before);
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"m.safetensors"});
}

TEST(ShardedWriter, SplitsWritesIndexAndReadsBack) {
  const std::string dir = make_temp_dir("shard");
  NamedTensors all;
  for (int i = 0; i < 7; ++i) {
    all.emplace_back("layer." + std::to_string(i) + ".w", pattern_tensor(at::kFloat, {10 + i}));
  }
  all.emplace_back("huge", pattern_tensor(at::kBFloat16, {400}));  // 800 B > limit
  all.emplace_back("tail", pattern_tensor(at::kInt, {3}));
  ShardedWriter w(dir, 100, "model", {{"note", "x"}});
  for (const auto& [name, t] : all) w.add(name, t);
  std::vector<std::string> files = w.finish();
  // bytes 40,44 | 48,52 | 56 | 60 | 64 | huge | tail  -> 7 shards
  ASSERT_EQ(files.size(), 8u);
  EXPECT_EQ(files[0], "model-00001-of-00007.safetensors");
  EXPECT_EQ(files[6], "model-00007-of-00007.safetensors");
  EXPECT_EQ(files[7], "model.safetensors.index.json");
  const nlohmann::json index = read_json(dir + "/model.safetensors.index.json");
  uint64_t total = 0, params = 0;
  for (const auto& [name, t] : all) total += t.numel() * t.element_size(), params += t.numel();
  EXPECT_EQ(index["metadata"]["total_size"], total);
  EXPECT_EQ(index["metadata"]["total_parameters"], params);
  EXPECT_EQ(index["weight_map"]["huge"], "model-00006-of-00007.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.1.w"], "model-00001-of-00007.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.3.w"], "model-00002-of-00007.safetensors");
  EXPECT_EQ(index["weight_map"].size(), all.size());

  Checkpoint ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.shards().size(), 7u);
  EXPECT_EQ(ck.total_bytes(), total);
  EXPECT_EQ(ck.names().size(), all.size());
  for (const auto& [name, t] : all) EXPECT_TRUE(same_bytes(ck.tensor(name), t)) << name;
  EXPECT_EQ(ck.file_of("tail").metadata().at("note"), "x");
  std::vector<std::string> on_disk = dir_entries(dir);
  EXPECT_EQ(on_disk.size(), 8u);  // no temp files left

  // Saving again as one shard removes the old shards and the stale index.
  ShardedWriter one(dir, 1 << 20);
  one.add("only", pattern_tensor(at::kHalf, {5}));
  EXPECT_EQ(one.finish(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(Checkpoint::open(dir).names(), std::vector<std::string>{"only"});
}

// model.safetensors beside an index: the single file is read, as
// transformers' from_pretrained looks for it first.
TEST(Checkpoint, ASingleFileBesideAnIndexIsTheOneRead) {
  const std::string dir = make_temp_dir("both");
  ShardedWriter w(dir, 30);
  w.add("a", pattern_tensor(at::kFloat, {6}));
  w.add("b", pattern_tensor(at::kFloat, {6}));
  ASSERT_EQ(w.finish().size(), 3u);  // two shards and the index
  save_file({{"c", pattern_tensor(at::kHalf, {4})}}, dir + "/model.safetensors");
  EXPECT_EQ(Checkpoint::open(dir).names(), std::vector<std::string>{"c"});
  std::filesystem::remove(dir + "/model.safetensors");
  EXPECT_EQ(Checkpoint::open(dir).names(), (std::vector<std::string>{"a", "b"}));
}

TEST(ShardedWriter, UnfinishedWriterLeavesNothing) {
  const std::string dir = make_temp_dir("shard");
  {
    ShardedWriter w(dir, 8);
    w.add("a", pattern_tensor(at::kFloat, {4}));
    w.add("b", pattern_tensor(at::kFloat, {4}));  // flushes "a"
    EXPECT_THROW(w.add("a", pattern_tensor(at::kFloat, {1})), Error);
  }
  EXPECT_TRUE(dir_entries(dir).empty());
}

TEST(ParseSize, UnitsAndJunk) {
  EXPECT_EQ(parse_size("5GB"), 5000000000ull);
  EXPECT_EQ(parse_size("256MB"), 256000000ull);
  EXPECT_EQ(parse_size("500MiB"), 500ull << 20);
  EXPECT_EQ(parse_size("1000000"), 1000000ull);
  EXPECT_EQ(parse_size(" 2kb "), 2000ull);
  EXPECT_EQ(parse_size("1.5GB"), 1500000000ull);
  EXPECT_EQ(parse_size("3GiB"), 3ull << 30);
  for (const char* bad :
       {"", "GB", "5XB", "-5GB", "5 G B", "1.2.3MB", "abc", "99999999999TB", "1.5"}) {
    EXPECT_THROW(parse_size(bad), Error) << bad;
  }
}

TEST(Checkpoint, OpensEightBScaleShardsQuickly) {
  // Llama-3-8B's 291 tensors over 4 sparse shards: open reads headers only.
  const std::string dir = make_temp_dir("ck8b");
  struct Spec {
    std::string name;
    std::vector<int64_t> shape;
  };
  std::vector<Spec> specs = {{"model.embed_tokens.weight", {128256, 4096}},
                             {"lm_head.weight", {128256, 4096}},
                             {"model.norm.weight", {4096}}};
  const char* mats[][3] = {
      {"self_attn.q_proj", "4096", "4096"}, {"self_attn.k_proj", "1024", "4096"},
      {"self_attn.v_proj", "1024", "4096"}, {"self_attn.o_proj", "4096", "4096"},
      {"mlp.gate_proj", "14336", "4096"},   {"mlp.up_proj", "14336", "4096"},
      {"mlp.down_proj", "4096", "14336"}};
  for (int l = 0; l < 32; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    for (auto& m : mats)
      specs.push_back({p + m[0] + ".weight", {std::stoll(m[1]), std::stoll(m[2])}});
    specs.push_back({p + "input_layernorm.weight", {4096}});
    specs.push_back({p + "post_attention_layernorm.weight", {4096}});
  }
  nlohmann::json index;
  uint64_t total = 0;
  for (int s = 0; s < 4; ++s) {
    std::string file = "model-0000" + std::to_string(s + 1) + "-of-00004.safetensors";
    std::string h = "{";
    uint64_t off = 0;
    for (size_t i = s; i < specs.size(); i += 4) {
      uint64_t n = 2;
      for (auto d : specs[i].shape) n *= d;
      h += (off ? "," : "") + nlohmann::json(specs[i].name).dump() +
           ":{\"dtype\":\"BF16\",\"shape\":" + nlohmann::json(specs[i].shape).dump() +
           ",\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + n) + "]}";
      off += n;
      index["weight_map"][specs[i].name] = file;
    }
    h += "}";
    loratune::test::write_file(dir + "/" + file, loratune::test::st_bytes(h, ""));
    ASSERT_EQ(::truncate((dir + "/" + file).c_str(), static_cast<off_t>(8 + h.size() + off)), 0);
    total += off;
  }
  write_json_atomic(dir + "/model.safetensors.index.json", index);
  auto t0 = std::chrono::steady_clock::now();
  Checkpoint ck = Checkpoint::open(dir);
  double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("Checkpoint::open of 8B-shaped checkpoint (%zu tensors, %.1f GB): %.2f ms\n",
              ck.names().size(), total / 1e9, ms);
  EXPECT_EQ(ck.names().size(), specs.size());
  EXPECT_EQ(ck.total_bytes(), total);
  EXPECT_LT(ms, 500.0);
}

TEST(SafetensorsFuzz, MutationsLoadOrThrowLoratuneError) {
  const std::string dir = make_temp_dir("fuzz");
  const std::string valid = serialize({{"a", pattern_tensor(at::kFloat, {3, 2})},
                                       {"b", pattern_tensor(at::kBFloat16, {0})},
                                       {"c", pattern_tensor(at::kBool, {})},
                                       {"d", pattern_tensor(at::kLong, {2})}},
                                      {{"k", "v"}});
  std::mt19937_64 rng(1234);
  int loaded = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string b = valid;
    const int kind = static_cast<int>(rng() % 4);
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !b.empty(); ++e) {
      if (kind == 0) {  // bit flips anywhere
        b[rng() % b.size()] ^= static_cast<char>(1u << (rng() % 8));
      } else if (kind == 1) {  // truncation
        b.resize(rng() % b.size());
      } else if (kind == 2 && b.size() >= 8) {  // header length edits
        uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(b[i]);
        const uint64_t choices[] = {n + 1, n - 1, n + 8, 0, ~0ull, 100000001, n * 2, rng()};
        n = choices[rng() % 8];
        for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(n >> (8 * i));
      } else {  // byte overwrite inside the header with JSON-ish characters
        const char js[] = "{}[],:\"0123456789-e. \\";
        if (b.size() > 8)
          b[8 + rng() % std::min<size_t>(b.size() - 8, 200)] = js[rng() % (sizeof js - 1)];
      }
    }
    // A fresh name each time: rewriting a truncated file makes ext4 flush it.
    const std::string path = dir + "/f" + std::to_string(iter) + ".safetensors";
    loratune::test::write_file(path, b);
    try {
      auto f = SafetensorsFile::open(path);
      for (const auto& t : f->tensors()) {
        at::Tensor x = f->tensor(t.name);
        EXPECT_EQ(static_cast<uint64_t>(x.numel()) * x.element_size(), t.nbytes());
      }
      ++loaded;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      ++rejected;
    }
    fs::remove(path);
  }
  std::printf("fuzz: %d loaded, %d rejected\n", loaded, rejected);
  EXPECT_GT(loaded, 0);
  EXPECT_GT(rejected, 0);
}
