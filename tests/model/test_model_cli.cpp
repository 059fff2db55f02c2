// `loratune logits` writes what the library computes; `loratune inspect`
// reports the family, dimensions and parameter count.
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <nlohmann/json.hpp>

#include "common/test_env.h"
#include "model/model_test_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/loader.h"

namespace loratune::test {
namespace {

TEST(CliLogits, OutputEqualsTheLibrary) {
  for (const std::string dtype : {"float32", "bfloat16"}) {
    const std::string out = make_temp_dir("logits") + "/l.safetensors";
    const std::string dir = tiny_model_dir("qwen3");
    RunResult r = run(quote(loratune_bin()) + " logits --model " + quote(dir) +
                      " --ids '5 17 3 999 42' --dtype " + dtype + " --out " + quote(out));
    ASSERT_EQ(r.status, 0) << r.out;
    auto f = io::SafetensorsFile::open(out);
    at::Tensor got = f->tensor("logits");
    EXPECT_EQ(got.scalar_type(), at::kFloat);
    ASSERT_EQ(got.sizes(), at::IntArrayRef({5, 1000}));

    torch::NoGradGuard no_grad;
    model::CausalLM lm = model::load_model(dir, {model::parse_dtype(dtype), "cpu"});
    at::Tensor ids = at::tensor(std::vector<int64_t>{5, 17, 3, 999, 42}).unsqueeze(0);
    at::Tensor want = lm->forward(ids)[0].to(at::kFloat);
    EXPECT_LE(max_abs_diff(got, want), 1e-6) << dtype;
  }
}

TEST(CliLogits, BadIdsAreErrors) {
  const std::string out = make_temp_dir("logits") + "/l.safetensors";
  RunResult r = run(quote(loratune_bin()) + " logits --model " + quote(tiny_model_dir("qwen2")) +
                    " --ids '1 2 1000' --out " + quote(out));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("token id 1000 is outside the vocabulary"), std::string::npos) << r.out;
  r = run(quote(loratune_bin()) + " logits --model " + quote(tiny_model_dir("qwen2")) +
          " --ids '1 x' --out " + quote(out));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("\"x\" is not an integer"), std::string::npos) << r.out;
}

int64_t parameter_count(const std::string& dir) {
  int64_t n = 0;
  for (const auto& p : model::load_model(dir)->parameters()) n += p.numel();
  return n;
}

TEST(CliInspect, TextNamesFamilyAndParameterCount) {
  const std::string dir = tiny_model_dir("llama-rope3-tied");
  RunResult r = run(quote(loratune_bin()) + " inspect " + quote(dir));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("family:      llama"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("parameters:  " + std::to_string(parameter_count(dir))), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("llama3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tied embeddings yes"), std::string::npos) << r.out;
}

TEST(CliInspect, JsonDescribesShardsDtypesAndWindows) {
  const std::string dir = tiny_model_dir("llama-bias-sharded");
  RunResult r = run(quote(loratune_bin()) + " inspect --json " + quote(dir));
  ASSERT_EQ(r.status, 0) << r.out;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["family"], "llama");
  EXPECT_EQ(j["parameters"].get<int64_t>(), parameter_count(dir));
  EXPECT_EQ(j["checkpoint_parameters"], j["parameters"]);
  EXPECT_EQ(j["shards"].size(), io::Checkpoint::open(dir).shards().size());
  EXPECT_GT(j["shards"].size(), 1u);
  EXPECT_TRUE(j["dtypes"].contains("F32"));
  EXPECT_TRUE(j["biases"]["mlp"].get<bool>());

  r = run(quote(loratune_bin()) + " inspect --json --load " +
          quote(tiny_model_dir("qwen2-window")));
  ASSERT_EQ(r.status, 0) << r.out;
  j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["sliding_windows"].size(), 1u);
  EXPECT_EQ(j["sliding_windows"][0]["window"], 48);
  EXPECT_EQ(j["sliding_windows"][0]["layers"], nlohmann::json({1, 2}));
  EXPECT_GT(j["load"]["peak_rss_bytes"].get<int64_t>(), 0);
}

// The family's structure beyond the Llama block: Gemma 2's norms, GeGLU,
// embedding scale and soft-caps; Phi-4-mini's fused projections, longrope
// and partial rotary; Gemma 3's second RoPE.
TEST(CliInspect, ShowsGemmaAndPhiStructure) {
  RunResult r = run(quote(loratune_bin()) + " inspect " + quote(tiny_model_dir("gemma2")));
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* want :
       {"GeGLU (gelu_pytorch_tanh)", "RMSNorm x (1 + w)", "four norms per layer", "embeddings x 8",
        "scores soft-capped at 5", "logits soft-capped at 10"}) {
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  }
  r = run(quote(loratune_bin()) + " inspect " + quote(tiny_model_dir("phi3-longrope")));
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* want : {"longrope", "original context 64", "rotating 12 of 16 dims",
                           "fused qkv_proj", "fused gate_up_proj"}) {
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  }
  r = run(quote(loratune_bin()) + " inspect --json " + quote(tiny_model_dir("gemma3")));
  ASSERT_EQ(r.status, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["rope"]["type"], "linear");
  EXPECT_EQ(j["rope_local"]["theta"].get<double>(), 10000.0);
  EXPECT_TRUE(j["norms"]["sandwich"].get<bool>());
  EXPECT_EQ(j["softcap"]["final"].get<double>(), 0.0);
}

TEST(CliInspect, MissingDirectoryIsOneLineError) {
  RunResult r = run(quote(loratune_bin()) + " inspect /nonexistent/model");
  EXPECT_EQ(r.status, 4) << r.out;  // ErrorKind::kIo: a missing file
  EXPECT_NE(r.out.find("loratune: error: /nonexistent/model"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace loratune::test
