// A .gguf file wherever a model directory goes (model.path, --model, inspect
// DIR): every command gives what it gives on the directory `loratune import`
// writes from the same file. The file is imported once into
// $LORATUNE_CACHE/gguf/<stem>-<hash>/ (float32) and reused; a changed file
// gets a fresh import; training keeps the .gguf path as the adapter's base
// model, and merging onto it writes a float32 Hugging Face model.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "common/test_env.h"
#include "gguf/tiny_gguf.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;
namespace t = loratune::test;
using nlohmann::json;

namespace {

class GgufModelPath : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(t::make_temp_dir("gguf_model_path"));
    t::write_file(gguf(), t::build(t::tiny_llama()));
    const auto r = t::run(t::quote(t::loratune_bin()) + " import " + gguf() + " --out " + hf());
    ASSERT_EQ(r.status, 0) << r.out;
  }
  static std::string gguf() { return *root_ + "/tiny.gguf"; }
  static std::string hf() { return *root_ + "/hf"; }
  static std::string cache() { return *root_ + "/cache"; }

  // Runs `loratune ARGS` with the test's cache; stdout only in `out`, stderr in `err`.
  struct Out {
    int status;
    std::string out, err;
  };
  static Out loratune(const std::string& args) {
    const std::string err_file = *root_ + "/stderr.txt";
    // t::run appends 2>&1 to the command: the group keeps stderr in its own file.
    const auto r =
        t::run("{ LORATUNE_CACHE=" + t::quote(cache()) + " " + t::quote(t::loratune_bin()) + " " +
               args + " 2>" + t::quote(err_file) + "; }");
    return {r.status, r.out, t::read_file(err_file)};
  }
  static std::vector<std::string> imports() {
    std::vector<std::string> dirs;
    if (fs::exists(cache() + "/gguf")) {
      for (const auto& e : fs::directory_iterator(cache() + "/gguf")) {
        dirs.push_back(e.path().filename().string());
      }
    }
    return dirs;
  }
  // Every tensor of two safetensors files, bitwise.
  static void expect_same_tensors(const std::string& a, const std::string& b) {
    auto fa = loratune::io::SafetensorsFile::open(a), fb = loratune::io::SafetensorsFile::open(b);
    ASSERT_EQ(fa->tensors().size(), fb->tensors().size());
    for (const auto& info : fa->tensors()) {
      SCOPED_TRACE(info.name);
      const at::Tensor x = fa->tensor(info.name), y = fb->tensor(info.name);
      EXPECT_EQ(x.scalar_type(), y.scalar_type());
      EXPECT_TRUE(x.equal(y));
    }
  }
  static std::string* root_;
};
std::string* GgufModelPath::root_ = nullptr;

TEST_F(GgufModelPath, GenerateImportsOnceAndMatchesTheImportedDirectory) {
  const std::string args = " --ids \"1 2 3\" --max-new-tokens 8 --ignore-eos --json";
  const Out dir = loratune("generate --model " + hf() + args);
  ASSERT_EQ(dir.status, 0) << dir.err;
  const Out first = loratune("generate --model " + gguf() + args);
  ASSERT_EQ(first.status, 0) << first.err;
  EXPECT_EQ(first.out, dir.out);
  EXPECT_NE(json::parse(first.out)["ids"].size(), 0u);
  const auto made = imports();
  ASSERT_EQ(made.size(), 1u);
  EXPECT_EQ(made[0].rfind("tiny-", 0), 0u) << made[0];
  const std::string where = cache() + "/gguf/" + made[0];
  EXPECT_NE(first.err.find(gguf() + ": importing it (float32) into " + where), std::string::npos)
      << first.err;
  EXPECT_EQ(json::parse(t::read_file(where + "/config.json"))["dtype"], "float32");
  // The second run reuses the import.
  const Out second = loratune("generate --model " + gguf() + args);
  ASSERT_EQ(second.status, 0) << second.err;
  EXPECT_EQ(second.out, dir.out);
  EXPECT_NE(second.err.find(gguf() + ": using its float32 import in " + where), std::string::npos)
      << second.err;
  EXPECT_EQ(imports().size(), 1u);
}

TEST_F(GgufModelPath, LogitsTokenizeInspectEvalMatchTheImportedDirectory) {
  for (const auto& [model, tag] : {std::make_pair(hf(), "dir"), std::make_pair(gguf(), "gguf")}) {
    const Out r = loratune("logits --model " + model + " --ids \"0 1 2 3 2 1\" --out " + *root_ +
                           "/logits_" + tag + ".safetensors");
    ASSERT_EQ(r.status, 0) << r.err;
  }
  expect_same_tensors(*root_ + "/logits_dir.safetensors", *root_ + "/logits_gguf.safetensors");

  const Out tok_dir = loratune("tokenize --model " + hf() + " --text abab --json");
  const Out tok_gguf = loratune("tokenize --model " + gguf() + " --text abab --json");
  ASSERT_EQ(tok_gguf.status, 0) << tok_gguf.err;
  EXPECT_EQ(tok_gguf.out, tok_dir.out);
  EXPECT_NE(tok_gguf.out.find("\"ids\""), std::string::npos) << tok_gguf.out;

  const Out in_dir = loratune("inspect " + hf() + " --json");
  const Out in_gguf = loratune("inspect " + gguf() + " --json");
  ASSERT_EQ(in_gguf.status, 0) << in_gguf.err;
  json a = json::parse(in_dir.out), b = json::parse(in_gguf.out);
  a.erase("dir");
  b.erase("dir");
  EXPECT_EQ(a, b);
  EXPECT_EQ(b["family"], "llama");

  const std::string data = *root_ + "/eval.jsonl";
  t::write_file(data, "{\"input_ids\": [0, 1, 2, 3, 2]}\n{\"input_ids\": [3, 2, 1, 0]}\n");
  const Out ev_dir = loratune("eval --model " + hf() + " --data " + data + " --json");
  const Out ev_gguf = loratune("eval --model " + gguf() + " --data " + data + " --json");
  ASSERT_EQ(ev_gguf.status, 0) << ev_gguf.err;
  EXPECT_EQ(ev_gguf.out, ev_dir.out);
  EXPECT_GT(json::parse(ev_gguf.out)["tokens"].get<int64_t>(), 0);
}

TEST_F(GgufModelPath, TrainAndMergeOnAGgufBase) {
  const std::string data = *root_ + "/train.jsonl";
  std::string records;
  for (int i = 0; i < 8; ++i) {
    records += "{\"input_ids\": [" + std::to_string(i % 4) + ", 1, 2, 3, " +
               std::to_string((i + 1) % 4) + ", 0]}\n";
  }
  t::write_file(data, records);
  const std::string run = *root_ + "/run";
  const std::string cfg = *root_ + "/train.yaml";
  t::write_file(cfg, "model: {path: " + gguf() +
                         ", dtype: float32}\n"
                         "device: cpu\nseed: 3\n"
                         "lora: {r: 2, alpha: 4, dropout: 0.0, target_modules: all-linear}\n"
                         "data: {train: " +
                         data +
                         ", format: tokenized, max_seq_len: 16, val_fraction: 0.0}\n"
                         "train: {max_steps: 3, micro_batch_size: 2, optimizer: {lr: 1.0e-2}}\n"
                         "output: {dir: " +
                         run + ", merge: true}\n");
  const Out tr = loratune("train --plain " + cfg);
  ASSERT_EQ(tr.status, 0) << tr.out << tr.err;
  // The adapter names the .gguf file as its base, not the cache directory.
  const json adapter = json::parse(t::read_file(run + "/adapter/adapter_config.json"));
  EXPECT_EQ(adapter["base_model_name_or_path"], gguf());
  // The merged model is full precision (float32, the import's dtype).
  EXPECT_EQ(json::parse(t::read_file(run + "/merged/config.json"))["dtype"], "float32");
  auto merged = loratune::io::SafetensorsFile::open(run + "/merged/model.safetensors");
  for (const auto& info : merged->tensors()) {
    EXPECT_EQ(merged->tensor(info.name).scalar_type(), at::kFloat) << info.name;
  }
  // merge --model x.gguf writes what merge --model <imported dir> writes.
  for (const auto& [model, tag] : {std::make_pair(hf(), "dir"), std::make_pair(gguf(), "gguf")}) {
    const Out m = loratune("merge --model " + model + " --adapter " + run + "/adapter --out " +
                           *root_ + "/merged_" + tag);
    ASSERT_EQ(m.status, 0) << m.err;
  }
  expect_same_tensors(*root_ + "/merged_dir/model.safetensors",
                      *root_ + "/merged_gguf/model.safetensors");
  expect_same_tensors(*root_ + "/merged_gguf/model.safetensors", run + "/merged/model.safetensors");
}

TEST_F(GgufModelPath, AChangedFileGetsAFreshImportAndAMissingOneIsRefused) {
  const std::string other = *root_ + "/other.gguf";
  fs::copy_file(gguf(), other, fs::copy_options::overwrite_existing);
  ASSERT_EQ(loratune("inspect " + other + " --json").status, 0);
  const size_t before = imports().size();
  fs::last_write_time(other, fs::last_write_time(other) + std::chrono::seconds(5));
  const Out r = loratune("inspect " + other + " --json");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("importing it"), std::string::npos) << r.err;
  EXPECT_EQ(imports().size(), before + 1);

  const Out missing = loratune("generate --model " + *root_ + "/absent.gguf --ids \"1\"");
  EXPECT_EQ(missing.status, 4) << missing.err;
  EXPECT_NE(missing.err.find("absent.gguf': no such .gguf file"), std::string::npos) << missing.err;
  EXPECT_EQ(std::count(missing.err.begin(), missing.err.end(), '\n'), 1) << missing.err;
}

}  // namespace
