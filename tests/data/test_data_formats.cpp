// Every format's input_ids and labels equal what transformers builds for the
// same records (tests/python/ref_data.py, cases in tests/data/ref_cases.json).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <sstream>

#include "data/data_test_util.h"
#include "trainer/io/file_util.h"

namespace loratune::test {
namespace {

std::string show(const std::vector<int32_t>& v) {
  std::ostringstream s;
  for (size_t i = 0; i < v.size(); ++i) s << (i ? " " : "") << v[i];
  return s.str();
}

config::DataFormat parse_format(const std::string& s) {
  for (auto f : {config::DataFormat::kAuto, config::DataFormat::kText,
                 config::DataFormat::kInstruction, config::DataFormat::kPromptCompletion,
                 config::DataFormat::kChat, config::DataFormat::kTokenized}) {
    if (config::to_string(f) == s) return f;
  }
  throw std::runtime_error("unknown format " + s);
}

TEST(DataFormats, InputIdsAndLabelsMatchTransformers) {
  nlohmann::json cases = io::read_json(source_dir() + "/tests/data/ref_cases.json")["cases"];
  ASSERT_GT(cases.size(), 10u);
  std::map<std::string, std::unique_ptr<tokenizer::Tokenizer>> toks;
  for (const auto& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE("case " + name);
    auto& tok = toks[c["tokenizer"]];
    if (!tok) tok = data_tokenizer(c["tokenizer"]);
    config::DataConfig cfg = data_config({source_dir() + "/" + c["file"].get<std::string>()});
    cfg.format = parse_format(c["format"]);
    cfg.train_on_prompt = c.value("train_on_prompt", false);
    cfg.allow_special_tokens = c.value("allow_special_tokens", false);
    data::ExampleEncoder enc(*tok, cfg);
    data::DataStats stats;
    std::vector<data::Example> got = data::read_files(cfg.train, enc, cfg, &stats);

    nlohmann::json ref = io::read_json(testdata_dir() + "/data/ref/" + name + ".json")["examples"];
    ASSERT_EQ(got.size(), ref.size());
    EXPECT_EQ(stats.records, static_cast<int64_t>(ref.size()));
    for (size_t i = 0; i < ref.size(); ++i) {
      auto ids = ref[i]["input_ids"].get<std::vector<int32_t>>();
      auto labels = ref[i]["labels"].get<std::vector<int32_t>>();
      EXPECT_EQ(show(got[i].input_ids), show(ids)) << "record " << i << " input_ids";
      EXPECT_EQ(show(got[i].labels), show(labels)) << "record " << i << " labels";
    }
  }
}

// The masking rules themselves, on one tokenizer, independent of the
// reference: EOS last and a target; prompt tokens masked; one BOS.
TEST(DataFormats, EosIsTargetAndBosIsSingle) {
  auto tok = data_tokenizer("llama3_gen");
  const int32_t bos = tok->special_tokens().bos_id;
  const int32_t eos = tok->special_tokens().eos_id;
  config::DataConfig cfg = data_config({});
  data::ExampleEncoder enc(*tok, cfg);
  data::Json pc = {{"prompt", "Question?"}, {"completion", " Answer."}};
  data::Example ex = enc.encode(pc, config::DataFormat::kPromptCompletion);
  ASSERT_GE(ex.input_ids.size(), 4u);
  EXPECT_EQ(ex.input_ids.front(), bos);
  EXPECT_EQ(ex.labels.front(), data::kIgnoreIndex);
  EXPECT_EQ(ex.input_ids.back(), eos);
  EXPECT_EQ(ex.labels.back(), eos);

  data::Json chat = {
      {"messages",
       {{{"role", "user"}, {"content", "hi"}}, {{"role", "assistant"}, {"content", "hello"}}}}};
  data::Example c = enc.encode(chat, config::DataFormat::kChat);
  EXPECT_EQ(std::count(c.input_ids.begin(), c.input_ids.end(), bos), 1);
  EXPECT_EQ(c.input_ids.front(), bos);
  const int32_t eot = *tok->token_to_id("<|eot_id|>");
  EXPECT_EQ(c.input_ids.back(), eot);
  EXPECT_EQ(c.labels.back(), eot);  // the template's turn end is learned
  EXPECT_EQ(c.labels.front(), data::kIgnoreIndex);
}

TEST(DataFormats, AlpacaPromptIsStanfordAlpacas) {
  EXPECT_EQ(data::alpaca_prompt("Do X.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nDo X.\n\n### Response:\n");
  EXPECT_NE(data::alpaca_prompt("Do X.", "ctx").find("### Input:\nctx\n\n### Response:\n"),
            std::string::npos);
}

TEST(DataFormats, AutoDetectionByKeys) {
  using F = config::DataFormat;
  EXPECT_EQ(data::ExampleEncoder::detect({{"text", "a"}}), F::kText);
  EXPECT_EQ(data::ExampleEncoder::detect({{"instruction", "a"}, {"output", "b"}, {"text", "c"}}),
            F::kInstruction);
  EXPECT_EQ(data::ExampleEncoder::detect({{"prompt", "a"}, {"completion", "b"}}),
            F::kPromptCompletion);
  EXPECT_EQ(data::ExampleEncoder::detect({{"messages", data::Json::array()}}), F::kChat);
  EXPECT_EQ(data::ExampleEncoder::detect({{"input_ids", {1}}}), F::kTokenized);
  EXPECT_THROW(data::ExampleEncoder::detect({{"question", "a"}}), Error);
}

}  // namespace
}  // namespace loratune::test
