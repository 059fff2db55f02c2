// The LoRA extension point: an adapter attached to a projection adds its
// delta to the output and its parameters appear under the projection's path
// with PEFT's names; linear_modules lists every projection by HF path.
#include <ATen/ops/allclose.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <set>

#include "trainer/io/error.h"
#include "trainer/model/model.h"

namespace loratune::model {
namespace {

// A LoRA-shaped adapter: delta(x) = B(A(x)) with A [r,in], B [out,r].
class TwoLayerAdapter : public LinearAdapter {
 public:
  TwoLayerAdapter(int64_t in, int64_t out, int64_t r) {
    lora_A = register_module("lora_A", Linear(in, r, false));
    lora_B = register_module("lora_B", Linear(r, out, false));
    torch::NoGradGuard g;
    lora_A->weight.copy_(at::randn({r, in}));
    lora_B->weight.copy_(at::randn({out, r}));
  }
  at::Tensor delta(const at::Tensor& x) override { return lora_B->forward(lora_A->forward(x)); }
  Linear lora_A{nullptr}, lora_B{nullptr};
};

ModelConfig tiny_config() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 50;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.max_position_embeddings = 64;
  c.layer_window.assign(2, 0);
  return c;
}

TEST(Linear, AdapterDeltaIsAddedAndNamedLikePeft) {
  torch::NoGradGuard g;
  Linear lin(16, 8, /*bias=*/true);
  lin->weight.copy_(at::randn({8, 16}));
  lin->bias.copy_(at::randn({8}));
  at::Tensor x = at::randn({2, 3, 16});
  at::Tensor base = lin->forward(x);
  EXPECT_TRUE(at::allclose(base, at::linear(x, lin->weight, lin->bias)));

  auto adapter = std::make_shared<TwoLayerAdapter>(16, 8, 2);
  lin->set_adapter(adapter);
  std::set<std::string> names;
  for (const auto& p : lin->named_parameters()) names.insert(p.key());
  EXPECT_EQ(names, (std::set<std::string>{"weight", "bias", "lora_A.weight", "lora_B.weight"}));
  at::Tensor want =
      base + at::linear(at::linear(x, adapter->lora_A->weight), adapter->lora_B->weight);
  EXPECT_TRUE(at::allclose(lin->forward(x), want, 1e-5, 1e-5));
  EXPECT_THROW(lin->set_adapter(std::make_shared<TwoLayerAdapter>(16, 8, 2)), Error);
}

TEST(Linear, ModelEnumeratesProjectionsWithHfPaths) {
  CausalLM lm(tiny_config());
  auto linears = linear_modules(*lm);
  std::vector<std::string> paths;
  for (const auto& [path, m] : linears) paths.push_back(path);
  ASSERT_EQ(paths.size(), 2u * 7u + 1u);  // 7 per layer + lm_head
  EXPECT_EQ(paths[0], "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(paths[6], "model.layers.0.mlp.down_proj");
  EXPECT_EQ(paths.back(), "lm_head");

  // After attaching an adapter the adapter's own layers are not listed, and
  // the parameter name is PEFT's.
  linears[0].second->set_adapter(std::make_shared<TwoLayerAdapter>(16, 16, 2));
  EXPECT_EQ(linear_modules(*lm).size(), paths.size());
  EXPECT_TRUE(lm->named_parameters().contains("model.layers.0.self_attn.q_proj.lora_A.weight"));
}

TEST(Linear, AdapterNameCollisionIsRejected) {
  class Bad : public LinearAdapter {
   public:
    Bad() { register_parameter("weight", at::randn({2})); }
    at::Tensor delta(const at::Tensor& x) override { return x; }
  };
  Linear lin(4, 4, false);
  EXPECT_THROW(lin->set_adapter(std::make_shared<Bad>()), Error);
}

}  // namespace
}  // namespace loratune::model
