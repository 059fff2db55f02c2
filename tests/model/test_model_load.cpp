// Loading: HF parameter names, frozen parameters, dtype conversion, sharded
// checkpoints, both config.json styles, and errors for checkpoints that do not
// match the config (missing, unexpected, misshapen tensors).
#include <ATen/ops/randint.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>

#include "common/test_env.h"
#include "model/model_test_util.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/loader.h"

namespace loratune::test {
namespace {

// Rewrites DIR/model.safetensors with `edit` applied to its tensors.
void edit_weights(const std::string& dir, const std::function<void(io::NamedTensors&)>& edit) {
  const std::string path = dir + "/model.safetensors";
  io::NamedTensors tensors;
  {
    auto f = io::SafetensorsFile::open(path);
    for (const auto& info : f->tensors())
      tensors.emplace_back(info.name, f->tensor(info.name).clone());
  }
  edit(tensors);
  io::save_file(tensors, path);
}

std::string load_error(const std::string& dir) {
  try {
    model::load_model(dir);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "load_model(" << dir << ") did not throw";
  return "";
}

TEST(Load, ParameterNamesAreTheCheckpointNamesAndFrozen) {
  for (const std::string v : {"llama-bias", "llama-rope3-tied", "qwen3"}) {
    model::CausalLM lm = model::load_model(tiny_model_dir(v));
    io::Checkpoint ckpt = io::Checkpoint::open(tiny_model_dir(v));
    std::set<std::string> names;
    for (const auto& p : lm->named_parameters()) {
      names.insert(p.key());
      EXPECT_FALSE(p.value().requires_grad()) << p.key();
      EXPECT_EQ(p.value().scalar_type(), at::kFloat) << p.key();
    }
    std::set<std::string> file_names;
    for (const auto& n : ckpt.names()) file_names.insert(n);
    EXPECT_EQ(names, file_names) << v;
  }
  model::CausalLM tied = model::load_model(tiny_model_dir("llama-rope3-tied"));
  EXPECT_FALSE(tied->named_parameters().contains("lm_head.weight"));
  EXPECT_TRUE(tied->lm_head_weight().is_same(tied->model->embed_tokens->weight));
}

TEST(Load, Float32OnCpuUsesTheFileBytes) {
  // Same dtype on CPU: the parameter is a view of the mapping, equal to the file.
  model::CausalLM lm = model::load_model(tiny_model_dir("qwen2"));
  io::Checkpoint ckpt = io::Checkpoint::open(tiny_model_dir("qwen2"));
  for (const auto& p : lm->named_parameters()) {
    EXPECT_TRUE(p.value().equal(ckpt.tensor(p.key()))) << p.key();
    // A view of the mapping (at::from_blob storage), not an allocated copy.
    EXPECT_FALSE(p.value().storage().resizable()) << p.key();
  }
}

TEST(Load, BFloat16ConvertsEveryParameter) {
  model::CausalLM lm = model::load_model(tiny_model_dir("qwen3"), {at::kBFloat16, "cpu"});
  io::Checkpoint ckpt = io::Checkpoint::open(tiny_model_dir("qwen3"));
  for (const auto& p : lm->named_parameters()) {
    EXPECT_EQ(p.value().scalar_type(), at::kBFloat16) << p.key();
    EXPECT_TRUE(p.value().equal(ckpt.tensor(p.key()).to(at::kBFloat16))) << p.key();
    EXPECT_TRUE(p.value().storage().resizable()) << p.key();  // its own allocation
  }
}

TEST(Load, ShardedCheckpointLoadsEveryShard) {
  const std::string dir = tiny_model_dir("llama-bias-sharded");
  ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  io::Checkpoint ckpt = io::Checkpoint::open(dir);
  EXPECT_GT(ckpt.shards().size(), 1u);
  model::CausalLM lm = model::load_model(dir);
  for (const auto& p : lm->named_parameters()) {
    EXPECT_TRUE(p.value().equal(ckpt.tensor(p.key()))) << p.key();
  }
}

TEST(Load, TransformersV4ConfigGivesTheSameModel) {
  // Rewrite the 5.x config.json (rope_parameters, dtype) in 4.x spelling.
  const std::string dir = copy_model("llama-rope3-tied", "cfg4");
  nlohmann::json j = io::read_json(dir + "/config.json");
  nlohmann::json rope = j["rope_parameters"];
  ASSERT_EQ(rope["rope_type"], "llama3");
  j["rope_theta"] = rope["rope_theta"];
  rope.erase("rope_theta");
  rope.erase("rope_type");
  rope["type"] = "llama3";
  j["rope_scaling"] = rope;
  j.erase("rope_parameters");
  j["torch_dtype"] = j["dtype"];
  j.erase("dtype");
  io::write_json_atomic(dir + "/config.json", j);

  torch::NoGradGuard no_grad;
  model::CausalLM a = model::load_model(tiny_model_dir("llama-rope3-tied"));
  model::CausalLM b = model::load_model(dir);
  EXPECT_EQ(b->config().rope.type, "llama3");
  EXPECT_EQ(b->config().dtype, "float32");
  at::Tensor ids = at::randint(3, 900, {1, 40}, at::TensorOptions().dtype(at::kLong));
  EXPECT_TRUE(a->forward(ids).equal(b->forward(ids)));
}

TEST(LoadErrors, MissingTensorsAreNamedAndCounted) {
  const std::string dir = copy_model("llama-bias", "missing");
  edit_weights(dir, [](io::NamedTensors& t) {
    t.erase(std::remove_if(t.begin(), t.end(),
                           [](const auto& p) {
                             return p.first == "model.norm.weight" ||
                                    p.first == "model.layers.1.mlp.up_proj.bias";
                           }),
            t.end());
  });
  const std::string msg = load_error(dir);
  EXPECT_NE(msg.find(dir + "/config.json: the checkpoint lacks 2 tensors the config implies: "),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("model.norm.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.1.mlp.up_proj.bias"), std::string::npos) << msg;
}

TEST(LoadErrors, ManyMissingTensorsAreListedUpToAFew) {
  const std::string dir = copy_model("qwen2", "many");
  edit_weights(dir, [](io::NamedTensors& t) {
    t.erase(
        std::remove_if(t.begin(), t.end(),
                       [](const auto& p) { return p.first.find("_proj.") != std::string::npos; }),
        t.end());
  });
  const std::string msg = load_error(dir);
  // 3 layers x (q, k, v with bias: 6; o, gate, up, down: 4).
  EXPECT_NE(msg.find("the checkpoint lacks 30 tensors the config implies: "), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("and 27 more"), std::string::npos) << msg;
}

TEST(LoadErrors, MissingLayerIsNamedBeforeItsTensors) {
  const std::string dir = copy_model("qwen2", "layer");
  edit_weights(dir, [](io::NamedTensors& t) {
    t.erase(std::remove_if(
                t.begin(), t.end(),
                [](const auto& p) { return p.first.find("layers.2.") != std::string::npos; }),
            t.end());
  });
  const std::string msg = load_error(dir);
  EXPECT_NE(msg.find("config.json: num_hidden_layers is 3 but the checkpoint has 2 layers "
                     "(model.layers.0 .. model.layers.1)"),
            std::string::npos)
      << msg;
}

TEST(LoadErrors, UnexpectedTensorIsNamed) {
  const std::string dir = copy_model("mistral-window", "unexpected");
  edit_weights(dir, [](io::NamedTensors& t) {
    t.emplace_back("model.layers.7.self_attn.q_proj.weight", at::zeros({64, 64}));
  });
  const std::string msg = load_error(dir);
  EXPECT_NE(msg.find("num_hidden_layers is 3 but the checkpoint has 4 layers (model.layers.0, 1, "
                     "2, 7)"),
            std::string::npos)
      << msg;
  const std::string dir2 = copy_model("mistral-window", "unexpected2");
  edit_weights(dir2, [](io::NamedTensors& t) {
    t.emplace_back("model.layers.1.self_attn.rope.weight", at::zeros({64}));
  });
  const std::string msg2 = load_error(dir2);
  EXPECT_NE(msg2.find("the checkpoint has 1 tensor the config does not describe: "
                      "model.layers.1.self_attn.rope.weight"),
            std::string::npos)
      << msg2;
}

TEST(LoadErrors, MisshapenTensorNamesExpectedAndActualShape) {
  const std::string dir = copy_model("qwen3", "shape");
  edit_weights(dir, [](io::NamedTensors& t) {
    for (auto& p : t) {
      if (p.first == "model.layers.0.self_attn.k_proj.weight") p.second = at::zeros({32, 64});
    }
  });
  const std::string msg = load_error(dir);
  EXPECT_NE(msg.find("num_key_value_heads * head_dim (2 * 32) is 64 but the checkpoint's "
                     "model.layers.0.self_attn.k_proj.weight is [32, 64] (expected [64, 64])"),
            std::string::npos)
      << msg;
}

// A tied model whose checkpoint also stores lm_head.weight: an equal copy
// loads (tied); a different one is refused (transformers 5 would untie and
// use it, 4.x would tie), as is one of another shape.
TEST(LoadErrors, TiedModelWithADifferentStoredHeadIsRefused) {
  const std::string same = copy_model("llama-rope3-tied", "tied_same");
  edit_weights(same, [](io::NamedTensors& t) {
    at::Tensor e;
    for (auto& p : t) {
      if (p.first == "model.embed_tokens.weight") e = p.second;
    }
    t.emplace_back("lm_head.weight", e.clone());
  });
  model::CausalLM m = model::load_model(same);
  EXPECT_TRUE(m->lm_head_weight().is_same(m->model->embed_tokens->weight));

  const std::string diff = copy_model("llama-rope3-tied", "tied_diff");
  edit_weights(diff, [](io::NamedTensors& t) {
    at::Tensor e;
    for (auto& p : t) {
      if (p.first == "model.embed_tokens.weight") e = p.second;
    }
    at::Tensor h = e.clone();
    h[e.size(0) - 1][0] += 1;  // the last row of the last block differs
    t.emplace_back("lm_head.weight", h);
  });
  const std::string msg = load_error(diff);
  EXPECT_NE(msg.find("tie_word_embeddings is true but the checkpoint's lm_head.weight differs "
                     "from model.embed_tokens.weight"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("set tie_word_embeddings to false"), std::string::npos) << msg;

  const std::string shape = copy_model("llama-rope3-tied", "tied_shape");
  edit_weights(shape, [](io::NamedTensors& t) {
    t.emplace_back("lm_head.weight", at::zeros({5, 5}));
  });
  EXPECT_NE(load_error(shape).find("lm_head.weight is [5, 5], not model.embed_tokens.weight's"),
            std::string::npos);
}

TEST(LoadErrors, BadOptionsAreRejected) {
  EXPECT_THROW(model::parse_dtype("float8"), Error);
  EXPECT_THROW(model::load_model(tiny_model_dir("qwen2"), {at::kFloat, "tpu"}), Error);
  EXPECT_THROW(model::load_model(tiny_model_dir("qwen2"), {at::kInt, "cpu"}), Error);
  try {
    model::parse_dtype("bfloat61");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean \"bfloat16\""), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace loratune::test
