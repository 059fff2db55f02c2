// The multimodal Gemma 3 (Gemma3ForConditionalGeneration, config.json
// model_type "gemma3"), whose language model loratune loads, trains and
// merges, against transformers + PEFT (tests/python/ref_gemma3_mm.py, the
// gemma3_mm fixture: a tiny random model saved in transformers 5's layout,
// "hub", and in transformers 4.52 .. 4.57's, "nested"):
//   * config.json's text_config is read with Gemma3TextConfig's defaults and
//     transformers' top-level keys (tie_word_embeddings, eos, dtype);
//   * text logits equal transformers' in both layouts;
//   * 16 training steps give PEFT's losses and final adapter;
//   * loratune's saved adapter loads in PEFT (exact keys, no vision module,
//     same logits), and PEFT's adapter loads in loratune;
//   * `loratune merge` (both layouts) gives a directory transformers loads as
//     Gemma3ForConditionalGeneration with PEFT merge_and_unload's logits, and
//     the base's vision tower and projector tensors byte for byte.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/max.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>
#include <sstream>

#include "common/test_env.h"
#include "train/train_test_util.h"
#include "trainer/export/merge.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/config.h"
#include "trainer/model/loader.h"

using namespace loratune;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string fixture_dir() {
  return test::testdata_dir() + "/gemma3_mm";
}

at::Tensor logits_of(model::CausalLMImpl& m, const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  return m.forward(ids.unsqueeze(0)).squeeze(0).to(at::kFloat);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>();
}

// config.json of gemma-3-4b-it as its hub repository has it (transformers
// 4.50): text_config lists only what differs from Gemma3TextConfig.
json hub_4b_config() {
  return json::parse(R"({
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
    "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16,
                      "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}
  })");
}

// The error parse_config throws for `j`, or "" when it accepts it.
std::string parse_error(const json& j) {
  try {
    model::parse_config(j, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The language model's projections, as the reference run targets them.
lora::LoraSpec train_spec() {
  lora::LoraSpec spec;
  spec.r = 8;
  spec.alpha = 16;
  spec.dropout = 0.0;
  spec.target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                         "gate_proj", "up_proj", "down_proj"};
  return spec;
}

}  // namespace

// Values as transformers' AutoConfig.from_pretrained(dir).text_config gives
// them for gemma-3-4b-it (checked in Python), eos as GenerationConfig takes it.
TEST(Gemma3MultimodalConfig, TextConfigWithTransformersDefaults) {
  const model::ModelConfig c = model::parse_config(hub_4b_config(), "config.json");
  EXPECT_TRUE(c.multimodal);
  EXPECT_EQ(c.checkpoint_prefix, "language_model.model.");
  EXPECT_EQ(c.model_type, "gemma3_text");
  EXPECT_EQ(c.hidden_size, 2560);
  EXPECT_EQ(c.intermediate_size, 10240);
  EXPECT_EQ(c.num_hidden_layers, 34);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.vocab_size, 262208);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c.attn_scale, 1.0 / 16.0);  // query_pre_attn_scalar 256
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{1, 106}));
  EXPECT_EQ(c.bos_token_id, std::optional<int64_t>(2));
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  ASSERT_TRUE(c.rope_local.has_value());
  EXPECT_DOUBLE_EQ(c.rope_local->theta, 1e4);
  ASSERT_EQ(c.layer_window.size(), 34u);
  for (size_t i = 0; i < 34; ++i) {
    EXPECT_EQ(c.layer_window[i], (i + 1) % 6 == 0 ? 0 : 1024) << "layer " << i;
  }
}

// tie_word_embeddings is Gemma3Config's (top level, default true); the text
// config's own value does not count (transformers ties by the top level).
TEST(Gemma3MultimodalConfig, TieWordEmbeddingsFromTheTopLevel) {
  json j = hub_4b_config();
  j["text_config"]["tie_word_embeddings"] = false;
  EXPECT_TRUE(model::parse_config(j, "config.json").tie_word_embeddings);
  j["tie_word_embeddings"] = false;
  j["text_config"]["tie_word_embeddings"] = true;
  EXPECT_FALSE(model::parse_config(j, "config.json").tie_word_embeddings);
}

TEST(Gemma3MultimodalConfig, RefusalsNameTheKey) {
  json j = hub_4b_config();
  j.erase("text_config");
  EXPECT_NE(parse_error(j).find("\"text_config\""), std::string::npos) << parse_error(j);
  j = hub_4b_config();
  j["text_config"]["model_type"] = "llama";
  EXPECT_NE(parse_error(j).find("text_config.model_type"), std::string::npos) << parse_error(j);
  j = hub_4b_config();
  j["text_config"]["hidden_size"] = "big";
  EXPECT_NE(parse_error(j).find("text_config: key \"hidden_size\""), std::string::npos)
      << parse_error(j);
  j = hub_4b_config();
  j["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}};
  EXPECT_NE(parse_error(j).find("quantization_config"), std::string::npos) << parse_error(j);
}

// Module paths of the adapter files are PEFT's on transformers 5's tree.
TEST(Gemma3MultimodalConfig, PeftModulePaths) {
  model::ModelConfig c = model::parse_config(hub_4b_config(), "config.json");
  EXPECT_EQ(model::peft_module_path(c, "model.layers.3.mlp.down_proj"),
            "model.language_model.layers.3.mlp.down_proj");
  EXPECT_EQ(model::module_path_of_peft(c, "model.language_model.layers.3.mlp.down_proj"),
            "model.layers.3.mlp.down_proj");
  EXPECT_EQ(model::checkpoint_name(c, "model.layers.3.mlp.down_proj.weight"),
            "language_model.model.layers.3.mlp.down_proj.weight");
  c.checkpoint_prefix = "model.language_model.";
  EXPECT_EQ(model::checkpoint_name(c, "model.norm.weight"), "model.language_model.norm.weight");
  EXPECT_TRUE(model::is_multimodal_extra(c, "vision_tower.vision_model.post_layernorm.weight"));
  EXPECT_TRUE(model::is_multimodal_extra(c, "model.multi_modal_projector.mm_soft_emb_norm.weight"));
  EXPECT_FALSE(model::is_multimodal_extra(c, "model.language_model.norm.weight"));
}

class Gemma3Multimodal : public ::testing::TestWithParam<std::string> {};

// (a) Logits on text-only input, both layouts; the checkpoint check accepts
// the vision tensors and still catches a missing language-model tensor.
TEST_P(Gemma3Multimodal, LoadsWithTransformersLogits) {
  const std::string dir = fixture_dir() + "/" + GetParam();
  model::CausalLM m = model::load_model(dir);
  m->eval();
  EXPECT_TRUE(m->config().multimodal);
  EXPECT_EQ(m->config().checkpoint_prefix,
            GetParam() == "hub" ? "language_model.model." : "model.language_model.");
  auto ref = io::SafetensorsFile::open(fixture_dir() + "/ref.safetensors");
  const double diff = max_diff(logits_of(*m, ref->tensor("input_ids")), ref->tensor("logits"));
  EXPECT_LE(diff, 1e-4);
  std::cout << GetParam() << ": max |logit diff| vs transformers " << diff << "\n";

  // The same checkpoint without one language-model tensor is refused by name.
  const std::string broken = test::make_temp_dir("gemma3mm_broken");
  io::Checkpoint ckpt = io::Checkpoint::open(dir);
  std::vector<std::pair<std::string, at::Tensor>> kept;
  const std::string dropped = m->config().checkpoint_prefix + "layers.1.mlp.up_proj.weight";
  for (const auto& name : ckpt.names()) {
    if (name != dropped) kept.emplace_back(name, ckpt.tensor(name));
  }
  ASSERT_EQ(kept.size() + 1, ckpt.names().size());
  io::save_file(kept, broken + "/model.safetensors");
  fs::copy_file(dir + "/config.json", broken + "/config.json");
  try {
    model::load_model(broken);
    ADD_FAILURE() << "a checkpoint without " << dropped << " was loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dropped), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("vision_tower"), std::string::npos) << e.what();
  }
}

// (d) PEFT's adapter (regex targets on the language model) in loratune.
TEST_P(Gemma3Multimodal, AppliesPeftsAdapter) {
  model::CausalLM m = model::load_model(fixture_dir() + "/" + GetParam());
  m->eval();
  const lora::LoraSpec spec = lora::load_adapter(fixture_dir() + "/peft/adapter", *m);
  EXPECT_FALSE(spec.target_regex.empty());
  EXPECT_EQ(lora::adapter_tensors(*m).size(), 3u * 3u * 2u);  // q, v, down x 3 layers x A, B
  auto ref = io::SafetensorsFile::open(fixture_dir() + "/peft/ref.safetensors");
  const double diff = max_diff(logits_of(*m, ref->tensor("input_ids")), ref->tensor("logits"));
  EXPECT_LE(diff, 1e-4);
  std::cout << GetParam() << ": PEFT's adapter in loratune: max |logit diff| " << diff << "\n";
}

// (d) The same adapter as PEFT saved it under transformers 4.50 and 4.51,
// whose module tree was language_model.model.* (keys and target_modules),
// gives the same logits; a file holding a tensor under both names is refused.
TEST_P(Gemma3Multimodal, ReadsAnAdapterSavedUnderTransformers450Names) {
  const std::string src = fixture_dir() + "/peft/adapter";
  const std::string old = test::make_temp_dir("gemma3mm_old_names");
  auto file = io::SafetensorsFile::open(src + "/adapter_model.safetensors");
  const std::string now = "base_model.model.model.language_model.";
  const std::string then = "base_model.model.language_model.model.";
  std::vector<std::pair<std::string, at::Tensor>> renamed;
  for (const auto& t : file->tensors()) {
    ASSERT_EQ(t.name.rfind(now, 0), 0u) << t.name;
    renamed.emplace_back(then + t.name.substr(now.size()), file->tensor(t.name));
  }
  io::save_file(renamed, old + "/adapter_model.safetensors");
  json cfg = io::read_json(src + "/adapter_config.json");
  // PEFT's fixture regex matches either tree; this one only the old paths.
  ASSERT_EQ(cfg.at("target_modules"), ".*language_model.*\\.(q_proj|v_proj|down_proj)");
  cfg["target_modules"] =
      "language_model\\.model\\.layers\\.[0-9]+\\.(self_attn\\.(q_proj|v_proj)|mlp\\.down_proj)";
  io::write_file_atomic(old + "/adapter_config.json", cfg.dump(2));

  model::CausalLM m = model::load_model(fixture_dir() + "/" + GetParam());
  m->eval();
  lora::load_adapter(old, *m);
  EXPECT_EQ(lora::adapter_tensors(*m).size(), 3u * 3u * 2u);
  auto ref = io::SafetensorsFile::open(fixture_dir() + "/peft/ref.safetensors");
  const double diff = max_diff(logits_of(*m, ref->tensor("input_ids")), ref->tensor("logits"));
  EXPECT_LE(diff, 1e-4);
  std::cout << GetParam() << ": PEFT's adapter under 4.50 names: max |logit diff| " << diff << "\n";

  // A factor missing: the error names it as read and says why it looks so.
  io::save_file({renamed.begin() + 1, renamed.end()}, old + "/adapter_model.safetensors");
  try {
    lora::load_adapter(old, *model::load_model(fixture_dir() + "/" + GetParam()));
    ADD_FAILURE() << "an adapter without " << renamed.front().first << " was loaded";
  } catch (const Error& e) {
    const std::string missing = now + renamed.front().first.substr(then.size());
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("transformers 4.50/4.51 names"), std::string::npos)
        << e.what();
  }

  // One factor under both names: which one PEFT would use is undefined.
  renamed.emplace_back(file->tensors().front().name, file->tensor(file->tensors().front().name));
  io::save_file(renamed, old + "/adapter_model.safetensors");
  model::CausalLM again = model::load_model(fixture_dir() + "/" + GetParam());
  try {
    lora::load_adapter(old, *again);
    ADD_FAILURE() << "an adapter with a factor under both names was loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(file->tensors().front().name), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("would both be read as"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, Gemma3Multimodal, ::testing::Values("hub", "nested"));

// (b) training, (d) loratune's adapter in PEFT, (c) merge in both layouts.
TEST(Gemma3MultimodalRun, TrainSaveMergeAgainstPeft) {
  const std::string fx = fixture_dir();
  const std::string dir = fx + "/train";
  model::CausalLM m = model::load_model(fx + "/hub");
  lora::inject_lora(*m, train_spec());
  lora::load_adapter_weights(dir + "/init_adapter", *m);
  const test::ReplayErrors e = test::replay_steps(*m, dir, 1e-5, 1e-3);
  EXPECT_EQ(e.steps, 16u);

  auto ref = io::SafetensorsFile::open(dir + "/ref.safetensors");
  const at::Tensor ids = ref->tensor("input_ids").clone();
  m->eval();
  const at::Tensor ours = logits_of(*m, ids);
  const double trained_diff = max_diff(ours, ref->tensor("logits"));
  EXPECT_LE(trained_diff, 1e-4);

  // The saved adapter: PEFT's names, and a target_modules regex that keeps
  // PEFT off the vision tower.
  const std::string out = test::make_temp_dir("gemma3mm_run");
  const std::string adapter = out + "/ours";
  lora::save_adapter(adapter, *m, train_spec(), /*overwrite=*/false);
  io::save_file({{"input_ids", ids}, {"logits", ours}}, out + "/ours.safetensors");
  const json cfg = io::read_json(adapter + "/adapter_config.json");
  ASSERT_TRUE(cfg.at("target_modules").is_string()) << cfg.dump();
  EXPECT_EQ(cfg.at("target_modules").get<std::string>().rfind("model\\.language_model\\.", 0), 0u)
      << cfg.dump();
  auto saved = io::SafetensorsFile::open(adapter + "/adapter_model.safetensors");
  EXPECT_TRUE(saved->contains(
      "base_model.model.model.language_model.layers.2.mlp.down_proj.lora_B.weight"));
  const std::string peft_check =
      test::run_python("tests/python/ref_gemma3_mm.py", "check-adapter --out " + test::quote(fx) +
                                                            " --adapter " + test::quote(adapter));

  // loratune reads its own adapter back to the same modules.
  model::CausalLM again = model::load_model(fx + "/nested");
  again->eval();
  lora::load_adapter(adapter, *again);
  const double reload_diff = max_diff(logits_of(*again, ids), ours);
  EXPECT_LE(reload_diff, 1e-5);

  std::string merge_checks;
  for (const std::string layout : {"hub", "nested"}) {
    exporter::MergeOptions opt;
    opt.model_dir = fx + "/" + layout;
    opt.adapter_dir = adapter;
    opt.out_dir = out + "/merged_" + layout;
    exporter::merge_adapter(opt);
    for (const char* f : {"preprocessor_config.json", "processor_config.json"}) {
      EXPECT_EQ(test::read_file(opt.out_dir + "/" + f), test::read_file(opt.model_dir + "/" + f))
          << f;
    }
    merge_checks += test::run_python("tests/python/ref_gemma3_mm.py",
                                     "check-merge --out " + test::quote(fx) + " --merged " +
                                         test::quote(opt.out_dir) + " --base " + layout);
    model::CausalLM mm = model::load_model(opt.out_dir);
    mm->eval();
    const double merged_diff = max_diff(logits_of(*mm, ids), ref->tensor("merged_logits"));
    EXPECT_LE(merged_diff, 1e-4) << layout;
    std::ostringstream line;
    line << layout << ": loratune on the merged dir vs PEFT merge_and_unload: max |logit diff| "
         << merged_diff << "\n";
    merge_checks += line.str();
  }

  std::cout << e.steps << " steps: max rel err loss " << e.loss << ", grad_norm " << e.grad_norm
            << ", final adapter " << e.adapter << "; trained logits max |diff| " << trained_diff
            << "; own adapter reloaded (nested layout) " << reload_diff
            << "; target_modules written: " << cfg.at("target_modules").get<std::string>() << "\n"
            << peft_check << merge_checks;
}
