// QLoRA against transformers + bitsandbytes + PEFT on the CPU
// (tests/python/ref_nf4.py): a tiny model loaded with NF4 projections gives
// transformers' 4-bit logits; 16 QLoRA training steps give PEFT's step
// losses and final adapter; the QLoRA merge writes the dequantized NF4 base
// plus the LoRA delta, so the merged float model computes what the QLoRA
// model computes; and model.quantize is a validated config key.
#include <ATen/ops/matmul.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>

#include "common/test_env.h"
#include "train/train_test_util.h"
#include "trainer/config/config.h"
#include "trainer/export/merge.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"
#include "trainer/train/train.h"

using namespace loratune;

namespace {

std::string ref_dir(const std::string& variant) {
  return test::testdata_dir() + "/ref_nf4/" + variant;
}

model::LoadOptions nf4_options() {
  model::LoadOptions o;
  o.dtype = at::kFloat;
  o.quantize = {model::Quantization::kNf4, /*double_quant=*/true};
  return o;
}

std::string name_of(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = info.param;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

class Qlora : public ::testing::TestWithParam<std::string> {};

TEST_P(Qlora, Nf4ModelLogitsEqualTransformersBitsandbytes) {
  auto ref = io::SafetensorsFile::open(ref_dir(GetParam()) + "/logits.safetensors");
  model::CausalLM m = model::load_model(test::tiny_model(GetParam()), nf4_options());
  // Only the decoder projections are NF4; embeddings and norms stay float.
  size_t nf4 = 0;
  for (const auto& [path, linear] : model::linear_modules(*m)) {
    EXPECT_EQ(linear->nf4() != nullptr, model::is_quantized_projection(path)) << path;
    nf4 += linear->nf4() != nullptr;
  }
  EXPECT_EQ(nf4, 7u * static_cast<size_t>(m->config().num_hidden_layers));
  EXPECT_EQ(m->model->embed_tokens->weight.scalar_type(), at::kFloat);
  torch::NoGradGuard g;
  const at::Tensor logits = m->forward(ref->tensor("ids"));
  const at::Tensor want = ref->tensor("logits");
  ASSERT_EQ(logits.sizes(), want.sizes());
  const double diff = (logits - want).abs().max().item<double>();
  std::cout << GetParam() << ": NF4 logits max abs diff vs transformers+bitsandbytes " << diff
            << " (logits max " << want.abs().max().item<double>() << ")\n";
  EXPECT_LE(diff, 1e-5);
  // The float model differs: the check above is not vacuous.
  const at::Tensor f32 =
      model::load_model(test::tiny_model(GetParam()))->forward(ref->tensor("ids"));
  EXPECT_GT((f32 - want).abs().max().item<double>(), 1e-3);
}

TEST_P(Qlora, TrainingStepLossesAndFinalAdapterMatchPeftBitsandbytes) {
  const std::string dir = ref_dir(GetParam());
  const auto ref = io::read_json(dir + "/ref.json");
  const auto& steps = ref.at("steps");
  ASSERT_GE(steps.size(), 16u);
  model::CausalLM m = model::load_model(test::tiny_model(GetParam()), nf4_options());
  const test::ReplayErrors e = test::replay_reference_run(*m, dir, 1e-4, 1e-3);
  std::cout << GetParam() << " QLoRA: " << e.steps << " steps, max rel err loss " << e.loss
            << ", grad_norm " << e.grad_norm << ", final adapter " << e.adapter << "\n";
}

// merge_adapter with the run's quantization writes W_nf4 + s·B·A: loaded as
// a plain float32 model it gives the logits of the NF4 model with the
// adapter unmerged; every NF4 projection is replaced, the rest is copied.
TEST_P(Qlora, MergeWritesDequantizedBasePlusDeltaAndSaysSo) {
  const std::string dir = ref_dir(GetParam());
  const std::string out = test::make_temp_dir("qlora-merge") + "/merged";
  exporter::MergeOptions mo;
  mo.model_dir = test::tiny_model(GetParam());
  mo.adapter_dir = dir + "/final_adapter";
  mo.out_dir = out;
  mo.dtype = at::kFloat;
  mo.base_quantize = {model::Quantization::kNf4, true};
  mo.quantized_dtype = at::kFloat;
  exporter::merge_adapter(mo);
  EXPECT_NE(io::read_file(out + "/README.md").find("dequantized NF4"), std::string::npos);

  model::CausalLM qlora = model::load_model(mo.model_dir, nf4_options());
  lora::load_adapter(mo.adapter_dir, *qlora);
  model::CausalLM merged = model::load_model(out);
  auto base = io::Checkpoint::open(mo.model_dir);
  auto ckpt = io::Checkpoint::open(out);
  const auto adapter = io::SafetensorsFile::open(mo.adapter_dir + "/adapter_model.safetensors");
  for (const auto& [path, linear] : model::linear_modules(*qlora)) {
    if (!linear->nf4()) continue;
    const std::string a = "base_model.model." + path;
    const at::Tensor want = model::dequantize_nf4(*linear->nf4(), at::kFloat) +
                            at::matmul(adapter->tensor(a + ".lora_B.weight"),
                                       adapter->tensor(a + ".lora_A.weight")) *
                                2.0;  // alpha 16 / r 8
    const double err = (ckpt.tensor(path + ".weight") - want).abs().max().item<double>();
    EXPECT_LE(err, 1e-6) << path;
  }
  EXPECT_TRUE(
      ckpt.tensor("model.embed_tokens.weight").equal(base.tensor("model.embed_tokens.weight")));

  torch::NoGradGuard g;
  const at::Tensor ids = io::SafetensorsFile::open(dir + "/logits.safetensors")->tensor("ids");
  const double diff = (merged->forward(ids) - qlora->forward(ids)).abs().max().item<double>();
  std::cout << GetParam() << ": merged float32 vs QLoRA (NF4 + adapter) logits max abs diff "
            << diff << "\n";
  EXPECT_LE(diff, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Variants, Qlora, ::testing::Values("llama-rope3-tied", "qwen2"), name_of);

TEST(QloraConfig, QuantizeKeyIsAChoiceWithSuggestions) {
  const std::string base = "model: {path: m}\ndata: {train: t.jsonl}\noutput: {dir: o}\n";
  const config::TrainConfig c = config::config_from_yaml_string(base, {"model.quantize=nf4"});
  EXPECT_EQ(c.model.quantize, config::Quantize::kNf4);
  EXPECT_TRUE(c.model.double_quant);
  EXPECT_EQ(config::config_from_yaml_string(base).model.quantize, config::Quantize::kNone);
  EXPECT_EQ(config::config_from_yaml_string(config::to_yaml(c)), c);
  for (const auto& [value, hint] :
       std::vector<std::pair<std::string, std::string>>{{"nf5", "did you mean 'nf4'?"},
                                                        {"4bit", "did you mean 'nf4'?"},
                                                        {"false", "did you mean 'none'?"}}) {
    try {
      config::config_from_yaml_string(base, {"model.quantize=" + value});
      FAIL() << value;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kConfig);
      EXPECT_NE(std::string(e.what()).find("model.quantize"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(hint), std::string::npos) << e.what();
    }
  }
}

}  // namespace
