// trainer/io safetensors against the Python reference (label: parity):
// loratune reads what safetensors.torch writes, Python (safetensors,
// transformers' sharded-checkpoint logic, huggingface_hub's loader) reads
// what loratune writes, and serialize() is byte-identical to the reference.
#include <gtest/gtest.h>

#include "common/test_env.h"
#include "io/safetensors_bytes.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

using namespace loratune::io;
using loratune::test::pattern_tensor;
using loratune::test::same_bytes;

namespace {

constexpr const char* kScript = "tests/python/safetensors_interop.py";

// The files the reference writes, written once per process.
const std::string& python_written_dir() {
  static const std::string dir = [] {
    std::string d = loratune::test::make_temp_dir("interop");
    loratune::test::run_python(kScript, "write " + loratune::test::quote(d));
    return d;
  }();
  return dir;
}

}  // namespace

TEST(SafetensorsInterop, ReadsFilesWrittenByPython) {
  auto f = SafetensorsFile::open(python_written_dir() + "/py_all.safetensors");
  EXPECT_EQ(f->tensors().size(), 15u * 4u);  // every dtype x 4 shapes
  for (const auto& t : f->tensors()) {
    EXPECT_EQ(t.name.substr(0, t.name.find('.')), t.dtype);
    EXPECT_TRUE(same_bytes(f->tensor(t.name), pattern_tensor(t.scalar_type, t.shape))) << t.name;
  }
  EXPECT_EQ(f->metadata(), (Metadata{{"format", "pt"}, {"origin", "python"}}));
}

TEST(SafetensorsInterop, SerializeIsByteIdenticalToPython) {
  // The reference sorts tensors (alignment, then name); loratune keeps the
  // caller's order, so the same order gives the same bytes.
  const std::string path = python_written_dir() + "/py_layout.safetensors";
  auto f = SafetensorsFile::open(path);
  NamedTensors tensors;
  for (const auto& t : f->tensors())
    tensors.emplace_back(t.name, pattern_tensor(t.scalar_type, t.shape));
  ASSERT_EQ(tensors.size(), 6u);
  EXPECT_EQ(serialize(tensors), read_file(path));
}

TEST(SafetensorsInterop, PythonReadsFilesWrittenByLoratune) {
  const std::string dir = loratune::test::make_temp_dir("interop");
  const at::ScalarType types[] = {at::kFloat,  at::kHalf,          at::kBFloat16,   at::kDouble,
                                  at::kLong,   at::kInt,           at::kShort,      at::kChar,
                                  at::kByte,   at::kBool,          at::kUInt16,     at::kUInt32,
                                  at::kUInt64, at::kFloat8_e4m3fn, at::kFloat8_e5m2};
  NamedTensors all;
  for (auto t : types) {
    all.emplace_back(dtype_name(t) + ".m", pattern_tensor(t, {3, 4}));
    all.emplace_back(dtype_name(t) + ".s", pattern_tensor(t, {}));
    all.emplace_back(dtype_name(t) + ".z", pattern_tensor(t, {0}));
  }
  save_file(all, dir + "/lt_all.safetensors");

  const std::string sharded = dir + "/lt_sharded";
  std::filesystem::create_directory(sharded);
  ShardedWriter w(sharded, 200);
  int n = 0;
  for (int layer = 0; layer < 3; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    w.add(p + "self_attn.q_proj.weight", pattern_tensor(at::kBFloat16, {8, 8})), ++n;
    w.add(p + "input_layernorm.weight", pattern_tensor(at::kFloat, {8})), ++n;
  }
  w.add("lm_head.weight", pattern_tensor(at::kHalf, {16, 8})), ++n;
  ASSERT_GT(w.finish().size(), 2u);

  const std::string out =
      loratune::test::run_python(kScript, "check " + loratune::test::quote(dir));
  const nlohmann::json j = nlohmann::json::parse(out.substr(out.rfind('{')));
  EXPECT_EQ(j["ok"], true) << out;
  EXPECT_EQ(j["single"], all.size()) << out;
  EXPECT_EQ(j["sharded"], n) << out;
  EXPECT_EQ(j["shards"], Checkpoint::open(sharded).shards().size()) << out;
}
