// Generation: greedy decoding equals transformers' generate(do_sample=False)
// token for token, with and without an adapter; sampling is reproducible.
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <limits>

#include "common/test_env.h"
#include "trainer/generate/generate.h"
#include "trainer/io/error.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"

using namespace loratune;

namespace {

std::string model_dir(const std::string& variant) {
  return test::testdata_dir() + "/models/" + variant;
}

TEST(Generate, GreedyEqualsTransformersForEveryFamilyWithAndWithoutAdapter) {
  auto cases = nlohmann::json::parse(test::read_file(test::testdata_dir() + "/greedy.json"));
  ASSERT_GE(cases.size(), 10u);
  for (const auto& c : cases) {
    const std::string variant = c["variant"];
    const bool adapted = !c["adapter"].is_null();
    SCOPED_TRACE(variant + (adapted ? " + " + c["adapter"].get<std::string>() : ""));
    model::CausalLM m = model::load_model(model_dir(variant));
    if (adapted) lora::load_adapter(c["adapter"].get<std::string>(), *m);
    m->eval();
    generate::SamplingOptions opt;
    opt.max_new_tokens = static_cast<int64_t>(c["generated"].size());
    auto got = generate::generate(*m, c["prompt"].get<std::vector<int64_t>>(), opt);
    EXPECT_EQ(got, c["generated"].get<std::vector<int64_t>>());
  }
}

TEST(Generate, SamplingWithASeedIsReproducibleAndSeedsDiffer) {
  model::CausalLM m = model::load_model(model_dir("qwen3"));
  m->eval();
  generate::SamplingOptions opt;
  opt.max_new_tokens = 24;
  opt.temperature = 1.0;
  opt.top_k = 50;
  opt.top_p = 0.9;
  opt.seed = 7;
  auto a = generate::generate(*m, {5, 6, 7}, opt);
  auto b = generate::generate(*m, {5, 6, 7}, opt);
  EXPECT_EQ(a, b);
  opt.seed = 8;
  EXPECT_NE(a, generate::generate(*m, {5, 6, 7}, opt));
}

TEST(Generate, StopsAtEosAndKeepsIt) {
  model::CausalLM m = model::load_model(model_dir("qwen2"));
  m->eval();
  generate::SamplingOptions opt;
  opt.max_new_tokens = 16;
  auto free_run = generate::generate(*m, {3, 4, 5}, opt);
  ASSERT_GE(free_run.size(), 3u);
  opt.eos_ids = {free_run[2]};
  auto stopped = generate::generate(*m, {3, 4, 5}, opt);
  EXPECT_EQ(stopped.back(), free_run[2]);
  EXPECT_LE(stopped.size(), 3u);
  opt.ignore_eos = true;
  EXPECT_EQ(generate::generate(*m, {3, 4, 5}, opt), free_run);
}

TEST(Generate, LogitsProcessorsFollowTransformers) {
  at::Tensor logits = at::tensor({2.0, -1.0, 0.5, 3.0, -2.0}, at::kFloat);
  generate::SamplingOptions opt;
  opt.repetition_penalty = 2.0;
  // Penalty: positive / p, negative * p, only for seen tokens.
  auto s = generate::process_logits(logits, {0, 1}, opt);
  EXPECT_FLOAT_EQ(s[0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(s[1].item<float>(), -2.0f);
  EXPECT_FLOAT_EQ(s[3].item<float>(), 3.0f);
  opt.repetition_penalty = 1.0;
  opt.temperature = 1.0;
  opt.top_k = 2;
  s = generate::process_logits(logits, {}, opt);
  EXPECT_EQ((s > -std::numeric_limits<float>::infinity()).sum().item<int64_t>(), 2);
  opt.top_k = 0;
  opt.top_p = 0.5;  // softmax mass of 3.0 alone is ~0.63 > 0.5: only it survives
  s = generate::process_logits(logits, {}, opt);
  EXPECT_EQ((s > -std::numeric_limits<float>::infinity()).sum().item<int64_t>(), 1);
}

TEST(Generate, ATemperatureTooSmallToScaleByIsTheGreedyLimit) {
  // 1 / 1e-40 overflows float: the scaled logits would be inf and the
  // probabilities NaN. The limit T -> 0 puts all mass on the largest logit.
  at::Tensor logits = at::tensor({2.0, -1.0, 0.0, 3.0, -2.0}, at::kFloat);
  generate::SamplingOptions opt;
  for (double t : {1e-40, 1e-300, 1e-39}) {
    SCOPED_TRACE(t);
    opt.temperature = t;
    at::Tensor s = generate::process_logits(logits, {}, opt);
    EXPECT_FALSE(s.isnan().any().item<bool>());
    EXPECT_EQ(s.argmax().item<int64_t>(), 3);
    EXPECT_EQ((s > -std::numeric_limits<float>::infinity()).sum().item<int64_t>(), 1);
  }
  opt.temperature = 0.5;  // an ordinary one is plain division
  EXPECT_FLOAT_EQ(generate::process_logits(logits, {}, opt)[0].item<float>(), 4.0f);
  model::CausalLM m = model::load_model(model_dir("qwen2"));
  m->eval();
  generate::SamplingOptions greedy;
  greedy.max_new_tokens = 8;
  opt = greedy;
  opt.temperature = 1e-40;
  EXPECT_EQ(generate::generate(*m, {3, 4, 5}, opt), generate::generate(*m, {3, 4, 5}, greedy));
}

TEST(Generate, PromptPastTheContextIsAnError) {
  model::CausalLM m = model::load_model(model_dir("qwen2"));
  generate::SamplingOptions opt;
  opt.max_new_tokens = m->config().max_position_embeddings;
  EXPECT_THROW(generate::generate(*m, {1, 2}, opt), Error);
}

// The library's greedy ids for the prompt 9 8 7 of llama-bias, never stopping.
std::vector<int64_t> library_greedy(int64_t n) {
  model::CausalLM m = model::load_model(model_dir("llama-bias"));
  m->eval();
  generate::SamplingOptions opt;
  opt.max_new_tokens = n;
  opt.ignore_eos = true;
  return generate::generate(*m, {9, 8, 7}, opt);
}

// The ids `loratune generate --model DIR --ids '9 8 7' ARGS --json` prints.
std::vector<int64_t> cli_ids(const std::string& dir, const std::string& args) {
  auto r = test::run(test::quote(test::loratune_bin()) + " generate --model " + test::quote(dir) +
                     " --ids '9 8 7' " + args + " --json");
  EXPECT_EQ(r.status, 0) << r.out;
  if (r.status != 0) return {};
  auto line = r.out.substr(r.out.find('{'));
  return nlohmann::json::parse(line.substr(0, line.find('\n')))["ids"].get<std::vector<int64_t>>();
}

TEST(Generate, CliPrintsJsonWithTheLibrarysIds) {
  EXPECT_EQ(cli_ids(model_dir("llama-bias"), "--max-new-tokens 10 --ignore-eos"),
            library_greedy(10));
}

// Which EOS ids `generate` stops at, as transformers' generate finds them:
// generation_config.json's when the file exists (even when it names none),
// config.json's only without the file. The stop id here is the first greedy
// token, so stopping shows as a one-token reply.
TEST(Generate, CliStopsAtTheEosIdsTransformersUses) {
  const int64_t first = library_greedy(1).at(0);
  const std::string dir = test::make_temp_dir("gen_eos") + "/m";
  std::filesystem::copy(model_dir("llama-bias"), dir);
  nlohmann::json cfg = nlohmann::json::parse(test::read_file(dir + "/config.json"));
  cfg["eos_token_id"] = first;
  test::write_file(dir + "/config.json", cfg.dump());
  auto reply = [&]() { return cli_ids(dir, "--max-new-tokens 6").size(); };
  test::write_file(dir + "/generation_config.json",
                   "{\"eos_token_id\": " + std::to_string(first) + "}");
  EXPECT_EQ(reply(), 1u);
  test::write_file(dir + "/generation_config.json", "{\"pad_token_id\": 0}");
  EXPECT_EQ(reply(), 6u);  // the file names no EOS: config.json's is not used
  std::filesystem::remove(dir + "/generation_config.json");
  EXPECT_EQ(reply(), 1u);  // no file: config.json's
  test::write_file(dir + "/generation_config.json", "{\"eos_token_id\": [\"x\"]}");
  auto bad = test::run(test::quote(test::loratune_bin()) + " generate --model " + test::quote(dir) +
                       " --ids '9 8 7' --max-new-tokens 6");
  EXPECT_EQ(bad.status, 5) << bad.out;
  EXPECT_NE(bad.out.find("generation_config.json: eos_token_id must be a token id or a list"),
            std::string::npos)
      << bad.out;
}

}  // namespace
