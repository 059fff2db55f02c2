// Merged exports: transformers loads them with PEFT's merged logits, shards
// and index are right, and a crash mid-merge never leaves a model behind.
#include <ATen/ops/equal.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <filesystem>

#include "common/test_env.h"
#include "trainer/export/merge.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;
using namespace loratune;

namespace {

std::string models() {
  return test::testdata_dir() + "/models";
}
std::string peft() {
  return test::testdata_dir() + "/peft";
}

nlohmann::json cases() {
  return nlohmann::json::parse(test::read_file(peft() + "/cases.json"));
}

exporter::MergeOptions options(const std::string& name, const std::string& variant,
                               const std::string& out) {
  exporter::MergeOptions opt;
  opt.model_dir = models() + "/" + variant;
  opt.adapter_dir = peft() + "/" + name + "/adapter";
  opt.out_dir = out;
  return opt;
}

// Every PEFT case merged by loratune, loaded by transformers, equals PEFT's
// merge_and_unload (the first case goes through the CLI).
TEST(Merge, TransformersLoadsMergedModelWithPeftMergedLogits) {
  const std::string root = test::testdata_dir() + "/merged";
  fs::remove_all(root);
  fs::create_directories(root);
  bool first = true;
  for (const auto& c : cases()) {
    const std::string name = c["name"], variant = c["variant"];
    exporter::MergeOptions opt = options(name, variant, root + "/" + name);
    if (first) {
      auto r = test::run(test::quote(test::loratune_bin()) + " merge --model " +
                         test::quote(opt.model_dir) + " --adapter " + test::quote(opt.adapter_dir) +
                         " --out " + test::quote(opt.out_dir) + " --dtype float32");
      ASSERT_EQ(r.status, 0) << r.out;
      first = false;
    } else {
      exporter::merge_adapter(opt);
    }
    // Companion files and the model card come along; config keeps its keys.
    EXPECT_TRUE(fs::exists(opt.out_dir + "/generation_config.json")) << name;
    EXPECT_TRUE(fs::exists(opt.out_dir + "/README.md")) << name;
    auto base_cfg = io::read_json(opt.model_dir + "/config.json");
    auto out_cfg = io::read_json(opt.out_dir + "/config.json");
    EXPECT_EQ(base_cfg, out_cfg) << name << ": config.json changed beyond its dtype";
  }
  std::cout << test::run_python("tests/python/ref_merge.py",
                                "check --models " + test::quote(models()) + " --peft " +
                                    test::quote(peft()) + " --merged " + test::quote(root));
}

TEST(Merge, ShardedOutputEqualsSingleFileAndHasIndex) {
  auto c = cases()[0];
  const std::string dir = test::make_temp_dir("merge-shards");
  exporter::MergeOptions one = options(c["name"], c["variant"], dir + "/one");
  exporter::merge_adapter(one);
  exporter::MergeOptions many = options(c["name"], c["variant"], dir + "/many");
  many.max_shard_bytes = 200'000;
  exporter::merge_adapter(many);
  ASSERT_TRUE(fs::exists(dir + "/many/model.safetensors.index.json"));
  ASSERT_TRUE(fs::exists(dir + "/one/model.safetensors"));
  auto a = io::Checkpoint::open(dir + "/one");
  auto b = io::Checkpoint::open(dir + "/many");
  EXPECT_GT(b.shards().size(), 2u);
  ASSERT_EQ(a.names(), b.names());
  for (const auto& n : a.names()) EXPECT_TRUE(at::equal(a.tensor(n), b.tensor(n))) << n;
}

TEST(Merge, Bfloat16OutputIsCastOnceFromFloat32) {
  auto c = cases()[0];
  const std::string dir = test::make_temp_dir("merge-bf16");
  exporter::MergeOptions f32 = options(c["name"], c["variant"], dir + "/f32");
  exporter::merge_adapter(f32);
  exporter::MergeOptions bf16 = options(c["name"], c["variant"], dir + "/bf16");
  bf16.dtype = at::kBFloat16;
  exporter::merge_adapter(bf16);
  auto a = io::Checkpoint::open(dir + "/f32");
  auto b = io::Checkpoint::open(dir + "/bf16");
  for (const auto& n : a.names()) {
    ASSERT_EQ(b.tensor(n).scalar_type(), at::kBFloat16) << n;
    EXPECT_TRUE(at::equal(a.tensor(n).to(at::kBFloat16), b.tensor(n))) << n;
  }
  EXPECT_EQ(io::read_json(dir + "/bf16/config.json")["dtype"], "bfloat16");
}

TEST(Merge, ExistingOutputIsRefusedUnlessOverwrite) {
  auto c = cases()[0];
  const std::string dir = test::make_temp_dir("merge-exists");
  exporter::MergeOptions opt = options(c["name"], c["variant"], dir + "/out");
  exporter::merge_adapter(opt);
  try {
    exporter::merge_adapter(opt);
    FAIL() << "second merge into the same directory was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already exists"), std::string::npos) << e.what();
  }
  opt.overwrite = true;
  exporter::merge_adapter(opt);
  EXPECT_TRUE(fs::exists(dir + "/out/config.json"));
}

TEST(Merge, AdapterForAnotherModelIsRejected) {
  // qwen3's adapter (head_dim 32) does not fit qwen2's projections.
  const std::string dir = test::make_temp_dir("merge-misfit");
  exporter::MergeOptions opt = options("qwen3_subset_rslora", "qwen2", dir + "/out");
  try {
    exporter::merge_adapter(opt);
    FAIL() << "a mismatched adapter was merged";
  } catch (const Error& e) {
    // Refused by the same check as load_adapter, before anything is written.
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("which does not fit the base model's"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir + "/out"));
}

// kill -9 in the middle of writing shards: nothing appears under the final
// name, and running the merge again succeeds.
TEST(Merge, KilledMergeLeavesNothingAndRerunSucceeds) {
  auto c = cases()[0];
  const std::string dir = test::make_temp_dir("merge-kill");
  exporter::MergeOptions opt = options(c["name"], c["variant"], dir + "/out");
  const std::string cmd = test::quote(test::loratune_bin()) + " merge --model " +
                          test::quote(opt.model_dir) + " --adapter " +
                          test::quote(opt.adapter_dir) + " --out " + test::quote(opt.out_dir) +
                          " --shard-size 200000";
  auto killed = test::run("LORATUNE_FAULT_KILL_AFTER_SHARDS=2 " + cmd);
  EXPECT_EQ(killed.status, 128 + 9) << killed.out;
  EXPECT_FALSE(fs::exists(opt.out_dir));
  auto leftovers = [&] {
    int n = 0;
    for (const auto& e : fs::directory_iterator(dir)) {
      n += e.path().filename().string().rfind("out.tmp.", 0) == 0;
    }
    return n;
  };
  EXPECT_EQ(leftovers(), 1) << "the killed merge's temp directory";
  auto again = test::run(cmd);
  ASSERT_EQ(again.status, 0) << again.out;
  EXPECT_TRUE(fs::exists(opt.out_dir + "/model.safetensors.index.json"));
  io::Checkpoint::open(opt.out_dir);
  EXPECT_EQ(leftovers(), 0) << "the rerun removes the dead merge's temp directory";
}

// SIGTERM in the middle of `merge --overwrite` (the fault hook raises it once
// two shards are on disk): one line, exit 143, the temp directory removed and
// the existing output as it was.
TEST(Merge, SigtermMidMergeRemovesTheTempDirAndKeepsTheOldOutput) {
  auto c = cases()[0];
  const std::string dir = test::make_temp_dir("merge-term");
  exporter::MergeOptions opt = options(c["name"], c["variant"], dir + "/out");
  const std::string cmd = test::quote(test::loratune_bin()) + " merge --model " +
                          test::quote(opt.model_dir) + " --adapter " +
                          test::quote(opt.adapter_dir) + " --out " + test::quote(opt.out_dir) +
                          " --shard-size 200000 --overwrite 2>&1";
  ASSERT_EQ(test::run(cmd).status, 0);
  const std::string index = test::read_file(opt.out_dir + "/model.safetensors.index.json");
  test::write_file(opt.out_dir + "/marker", "old");
  auto stopped = test::run("LORATUNE_FAULT_SIGTERM_AFTER_SHARDS=2 " + cmd);
  EXPECT_EQ(stopped.status, 128 + 15) << stopped.out;
  EXPECT_NE(
      stopped.out.find("loratune: merge stopped by signal 15; " + opt.out_dir + " left as it was"),
      std::string::npos)
      << stopped.out;
  EXPECT_EQ(stopped.out.find("error"), std::string::npos) << stopped.out;
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
  EXPECT_EQ(test::read_file(opt.out_dir + "/marker"), "old");
  EXPECT_EQ(test::read_file(opt.out_dir + "/model.safetensors.index.json"), index);
}

// MergeOptions::stop_signal set: Interrupted before anything is written.
TEST(Merge, AStopSignalThrowsInterruptedAndWritesNothing) {
  auto c = cases()[0];
  const std::string dir = test::make_temp_dir("merge-stop");
  exporter::MergeOptions opt = options(c["name"], c["variant"], dir + "/out");
  std::atomic<int> stop{2};
  opt.stop_signal = &stop;
  try {
    exporter::merge_adapter(opt);
    FAIL() << "a stopped merge finished";
  } catch (const exporter::Interrupted& e) {
    EXPECT_EQ(e.signal(), 2);
  }
  EXPECT_FALSE(fs::exists(opt.out_dir));
  EXPECT_TRUE(fs::is_empty(dir));
}

}  // namespace
