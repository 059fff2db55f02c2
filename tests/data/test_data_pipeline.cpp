// prepare_data: validation split, truncation counts, and the tokenized-data
// cache (hit, invalidated by a file or setting change, corrupt file rebuilt).
#include <gtest/gtest.h>

#include <filesystem>

#include "data/data_test_util.h"

namespace loratune::test {
namespace {

std::vector<std::string> chat_lines(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(R"({"messages": [{"role": "user", "content": "Question number )" +
                  std::to_string(i) + R"(?"}, {"role": "assistant", "content": "Answer )" +
                  std::to_string(i) + R"(, with some more words to make it longer."}]})");
  }
  return out;
}

bool same(const std::vector<data::Example>& a, const std::vector<data::Example>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].input_ids != b[i].input_ids || a[i].labels != b[i].labels) return false;
  }
  return true;
}

class DataPipeline : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir("data_pipeline");
    tok_ = data_tokenizer("llama3_gen");
    tok_dir_ = data_tokenizer_dir("llama3_gen");
  }
  data::PreparedData prepare(const config::DataConfig& cfg, uint64_t seed = 1) {
    return data::prepare_data(cfg, seed, *tok_, tok_dir_,
                              [this](const std::string& w) { warnings_.push_back(w); });
  }
  std::string dir_, tok_dir_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
  std::vector<std::string> warnings_;
};

TEST_F(DataPipeline, ValidationFractionSplitsDeterministicallyBySeed) {
  config::DataConfig cfg = data_config({write_jsonl(dir_, "c.jsonl", chat_lines(40))});
  auto all = prepare(cfg);
  cfg.val_fraction = 0.1;
  auto a = prepare(cfg, 7), b = prepare(cfg, 7), c = prepare(cfg, 8);
  EXPECT_EQ(a.validation.size(), 4u);  // ceil(0.1 * 40)
  EXPECT_EQ(a.train.size(), 36u);
  EXPECT_TRUE(same(a.train, b.train));
  EXPECT_TRUE(same(a.validation, b.validation));
  EXPECT_FALSE(same(a.validation, c.validation));
  // A partition of the examples; each part keeps file order.
  size_t ti = 0, vi = 0;
  for (const auto& e : all.train) {
    if (ti < a.train.size() && a.train[ti].input_ids == e.input_ids) {
      ++ti;
    } else {
      ASSERT_LT(vi, a.validation.size());
      EXPECT_EQ(a.validation[vi++].input_ids, e.input_ids);
    }
  }
  EXPECT_EQ(ti, a.train.size());
  EXPECT_EQ(vi, a.validation.size());
}

TEST_F(DataPipeline, ValidationFilesAndTruncationCount) {
  config::DataConfig cfg = data_config({write_jsonl(dir_, "t.jsonl", chat_lines(5))});
  cfg.validation = {write_jsonl(dir_, "v.jsonl", chat_lines(2))};
  cfg.max_seq_len = 20;
  auto d = prepare(cfg);
  EXPECT_EQ(d.train.size(), 5u);
  EXPECT_EQ(d.validation.size(), 2u);
  EXPECT_EQ(d.train_stats.truncated, 5);
  EXPECT_EQ(d.validation_stats.truncated, 2);
  for (const auto& e : d.train) EXPECT_EQ(e.input_ids.size(), 20u);
  EXPECT_EQ(d.train_stats.tokens, 100);
}

TEST_F(DataPipeline, CacheHitMissAndCorruption) {
  const std::string cache = dir_ + "/cache";
  const std::string file = write_jsonl(dir_, "t.jsonl", chat_lines(6));
  config::DataConfig cfg = data_config({file});
  cfg.cache_dir = cache;
  auto first = prepare(cfg);
  EXPECT_FALSE(first.cache_hit);
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(cache)) files.push_back(e.path());
  ASSERT_EQ(files.size(), 1u);

  auto second = prepare(cfg);
  EXPECT_TRUE(second.cache_hit);
  EXPECT_TRUE(same(first.train, second.train));
  EXPECT_EQ(second.train_stats.records, 6);

  // Settings applied after the cache (max_seq_len) still hit.
  config::DataConfig shorter = cfg;
  shorter.max_seq_len = 16;
  EXPECT_TRUE(prepare(shorter).cache_hit);

  // A setting that changes encoding misses and gives different labels.
  config::DataConfig top = cfg;
  top.train_on_prompt = true;
  auto t = prepare(top);
  EXPECT_FALSE(t.cache_hit);
  EXPECT_FALSE(same(t.train, first.train));

  // A changed data file misses.
  write_jsonl(dir_, "t.jsonl", chat_lines(7));
  auto changed = prepare(cfg);
  EXPECT_FALSE(changed.cache_hit);
  EXPECT_EQ(changed.train.size(), 7u);
  write_jsonl(dir_, "t.jsonl", chat_lines(6));
  EXPECT_TRUE(prepare(cfg).cache_hit);

  // The key is the tokenizer files' content, not their path: a copy hits,
  // an edited tokenizer_config.json misses.
  const std::string copy = dir_ + "/tok_copy";
  std::filesystem::copy(tok_dir_, copy);
  EXPECT_TRUE(data::prepare_data(cfg, 1, *tok_, copy).cache_hit);
  write_file(copy + "/tokenizer_config.json", read_file(copy + "/tokenizer_config.json") + "\n");
  EXPECT_FALSE(data::prepare_data(cfg, 1, *tok_, copy).cache_hit);

  // Corruptions are reported, never trusted, and the file is rebuilt.
  const std::string path = files[0];
  const std::string good = read_file(path);
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x40;
  for (const std::string& bad : {flipped, good.substr(0, good.size() - 9), std::string("LTDC"),
                                 std::string("XXXXXXXX") + good.substr(8)}) {
    write_file(path, bad);
    warnings_.clear();
    auto rebuilt = prepare(cfg);
    EXPECT_FALSE(rebuilt.cache_hit);
    EXPECT_TRUE(same(rebuilt.train, first.train));
    ASSERT_EQ(warnings_.size(), 1u);
    EXPECT_NE(warnings_[0].find("ignoring unusable data cache " + path), std::string::npos)
        << warnings_[0];
    EXPECT_EQ(read_file(path), good);
    EXPECT_TRUE(prepare(cfg).cache_hit);
  }
}

TEST_F(DataPipeline, LoaderOverPackedData) {
  config::DataConfig cfg = data_config({write_jsonl(dir_, "t.jsonl", chat_lines(30))});
  cfg.max_seq_len = 128;
  auto d = prepare(cfg);
  auto seqs = data::make_sequences(d.train, cfg.max_seq_len, true);
  EXPECT_LT(seqs.size(), d.train.size());
  data::DataLoader loader(seqs, 2, data::pad_id_for(*tok_), 3, true);
  int64_t targets = 0;
  for (int64_t i = 0; i < loader.batches_per_epoch(); ++i) targets += loader.next().target_tokens;
  // Packing masks the first label of each example after the first in a row:
  // exactly the labels[0] that truncate_and_filter does not count.
  EXPECT_EQ(targets, d.train_stats.target_tokens);
}

}  // namespace
}  // namespace loratune::test
