// Adapters that lie or use what loratune does not implement are refused the
// same way by every command that reads one (merge, logits, generate, eval):
// merge applies exactly the LoRA layers PEFT would create. Adapters start
// from the PEFT-written fixtures (tests/python/ref_peft.py) and are edited.
#include <ATen/ops/allclose.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>

#include "common/test_env.h"
#include "trainer/export/merge.h"
#include "trainer/io/error.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"

namespace fs = std::filesystem;
using namespace loratune;

namespace {

using Tensors = std::vector<std::pair<std::string, at::Tensor>>;

std::string models() {
  return test::testdata_dir() + "/models";
}

// A copy of the PEFT fixture adapter `name` with its config and tensors edited.
std::string edited_adapter(const std::string& name,
                           const std::function<void(nlohmann::json&)>& edit_config,
                           const std::function<void(Tensors&)>& edit_tensors = nullptr) {
  const std::string src = test::testdata_dir() + "/peft/" + name + "/adapter";
  const std::string dir = test::make_temp_dir("hostile-adapter") + "/adapter";
  fs::copy(src, dir, fs::copy_options::recursive);
  nlohmann::json cfg = nlohmann::json::parse(test::read_file(dir + "/adapter_config.json"));
  if (edit_config) edit_config(cfg);
  test::write_file(dir + "/adapter_config.json", cfg.dump(2));
  if (edit_tensors) {
    const std::string path = dir + "/adapter_model.safetensors";
    Tensors t;
    {
      auto f = io::SafetensorsFile::open(path);
      for (const auto& info : f->tensors()) t.emplace_back(info.name, f->tensor(info.name).clone());
    }
    edit_tensors(t);
    io::save_file(t, path);
  }
  return dir;
}

size_t lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

struct Outcome {
  int status = -1;
  std::string err;
};

Outcome run_cli(const std::string& args) {
  const std::string tmp = test::make_temp_dir("adapter-run");
  // A subshell, so that run()'s own 2>&1 does not merge the two again.
  test::RunResult r =
      test::run("(" + test::quote(test::loratune_bin()) + " " + args + " >" +
                test::quote(tmp + "/out") + " 2>" + test::quote(tmp + "/err") + ")");
  return {r.status, test::read_file(tmp + "/err")};
}

struct Case {
  std::string name;
  std::string adapter;  // fixture
  std::string variant;  // base model
  std::function<void(nlohmann::json&)> config;
  std::function<void(Tensors&)> tensors;
  int status;
  std::vector<std::string> needles;
};

std::vector<Case> cases() {
  auto set = [](const char* key, nlohmann::json v) {
    return [key, v](nlohmann::json& c) { c[key] = v; };
  };
  const std::string q0 = "base_model.model.model.layers.0.self_attn.q_proj";
  return {
      {"r lies (8, tensors rank 4)",
       "qwen3_subset_rslora",
       "qwen3",
       set("r", 8),
       nullptr,
       5,
       {"adapter_model.safetensors: tensor '" + q0 + ".lora_A.weight' has rank 4 (shape [4, 64])",
        "adapter_config.json gives model.layers.0.self_attn.q_proj r = 8"}},
      {"rank_pattern dropped (down_proj tensors rank 2)",
       "qwen2_patterns",
       "qwen2",
       [](nlohmann::json& c) { c.erase("rank_pattern"); },
       nullptr,
       5,
       {"'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight' has rank 2",
        "gives model.layers.0.mlp.down_proj r = 8"}},
      {"alpha_pattern value not a number",
       "qwen2_patterns",
       "qwen2",
       set("alpha_pattern", {{"k_proj", "three"}}),
       nullptr,
       5,
       {"adapter_config.json: alpha_pattern must be an object of numbers"}},
      {"target_modules narrower than the tensors",
       "llama_all_linear",
       "llama-rope3-tied",
       set("target_modules", {"q_proj"}),
       nullptr,
       5,
       {"adapter_model.safetensors: tensor 'base_model.model.model.layers.0.",
        ", which target_modules does not select (PEFT would not create a LoRA layer there)",
        "problems in all"}},
      {"lm_head factors for a tied model",
       "llama_all_linear",
       "llama-rope3-tied",
       nullptr,
       [](Tensors& t) {
         t.emplace_back("base_model.model.lm_head.lora_A.weight", at::zeros({8, 64}));
         t.emplace_back("base_model.model.lm_head.lora_B.weight", at::zeros({1000, 8}));
       },
       5,
       {"tensor 'base_model.model.lm_head.lora_A.weight' is for lm_head: this model ties "
        "lm_head to embed_tokens (tie_word_embeddings)"}},
      {"target_modules names a module that holds projections",
       "qwen2_patterns",
       "qwen2",
       [](nlohmann::json& c) { c["target_modules"].push_back("self_attn"); },
       nullptr,
       5,
       {"adapter_config.json: target_modules selects model.layers.0.self_attn, which holds "
        "projections rather than being one (PEFT refuses it too)"}},
      {"layers_to_transform narrower than the tensors",
       "qwen3_subset_rslora",
       "qwen3",
       set("layers_to_transform", {0}),
       nullptr,
       5,
       {"'base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight' is for "
        "model.layers.1.self_attn.q_proj, which target_modules does not select"}},
      {"exclude_modules narrower than the tensors",
       "qwen3_subset_rslora",
       "qwen3",
       set("exclude_modules", {"v_proj"}),
       nullptr,
       5,
       {"v_proj, which target_modules does not select"}},
      {"tensor for a module the base lacks",
       "qwen3_subset_rslora",
       "qwen3",
       nullptr,
       [](Tensors& t) {
         t.emplace_back("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
                        t.front().second.clone());
       },
       5,
       {"is for model.layers.7.self_attn.q_proj, which is not a projection of the base model"}},
      {"not a LoRA key",
       "qwen3_subset_rslora",
       "qwen3",
       nullptr,
       [](Tensors& t) {
         t.emplace_back("base_model.model.model.layers.0.self_attn.q_proj.lora_E.weight",
                        t.front().second.clone());
       },
       5,
       {"is not a LoRA factor loratune reads"}},
      {"DoRA magnitude without use_dora",
       "qwen3_subset_rslora",
       "qwen3",
       nullptr,
       [](Tensors& t) {
         t.emplace_back("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                        t.front().second.clone());
       },
       5,
       {"is a DoRA magnitude, but use_dora is false in adapter_config.json"}},
      {"shape does not fit the base",
       "qwen3_subset_rslora",
       "qwen3",
       nullptr,
       [q0](Tensors& t) {
         for (auto& e : t) {
           if (e.first == q0 + ".lora_A.weight") e.second = e.second.narrow(1, 0, 32).clone();
         }
       },
       5,
       {"tensor '" + q0 +
        ".lora_A.weight' is [4, 32], which does not fit the base model's "
        "model.layers.0.self_attn.q_proj (in_features 64"}},
      {"adapter of another model",
       "qwen3_subset_rslora",
       "qwen2",
       nullptr,
       nullptr,
       5,
       {"which does not fit the base model's"}},
      {"integer tensor",
       "qwen3_subset_rslora",
       "qwen3",
       nullptr,
       [q0](Tensors& t) {
         for (auto& e : t) {
           if (e.first == q0 + ".lora_B.weight") e.second = e.second.to(at::kInt);
         }
       },
       5,
       {"tensor '" + q0 + ".lora_B.weight' is I32; LoRA factors must be floating point"}},
      {"a factor missing",
       "qwen3_subset_rslora",
       "qwen3",
       nullptr,
       [q0](Tensors& t) {
         Tensors keep;
         for (auto& e : t) {
           if (e.first != q0 + ".lora_B.weight") keep.push_back(e);
         }
         t = keep;
       },
       5,
       {"tensor '" + q0 + ".lora_B.weight' is missing"}},
      {"use_dora",
       "qwen3_subset_rslora",
       "qwen3",
       set("use_dora", true),
       nullptr,
       5,
       {"lora_magnitude_vector' is missing (use_dora is true in"}},
      {"modules_to_save",
       "qwen3_subset_rslora",
       "qwen3",
       set("modules_to_save", {"lm_head"}),
       nullptr,
       6,
       {"modules_to_save"}},
      {"lora_bias",
       "qwen3_subset_rslora",
       "qwen3",
       set("lora_bias", true),
       nullptr,
       6,
       {"lora_bias"}},
      {"fan_in_fan_out",
       "qwen3_subset_rslora",
       "qwen3",
       set("fan_in_fan_out", true),
       nullptr,
       6,
       {"fan_in_fan_out"}},
      {"bias all",
       "qwen3_subset_rslora",
       "qwen3",
       set("bias", "all"),
       nullptr,
       6,
       {"bias training is not supported"}},
      {"peft_type IA3",
       "qwen3_subset_rslora",
       "qwen3",
       set("peft_type", "IA3"),
       nullptr,
       6,
       {"peft_type 'IA3' is not supported"}},
      {"init pissa",
       "qwen3_subset_rslora",
       "qwen3",
       set("init_lora_weights", "pissa"),
       nullptr,
       6,
       {"init_lora_weights = \"pissa\""}},
      {"r not an integer",
       "qwen3_subset_rslora",
       "qwen3",
       set("r", "4"),
       nullptr,
       5,
       {"adapter_config.json: r must be an integer >= 1, got \"4\""}},
  };
}

void expect_refused(const Outcome& o, const Case& c, const std::string& what) {
  EXPECT_EQ(o.status, c.status) << what << ": " << o.err;
  EXPECT_EQ(lines(o.err), 1u) << what << ": " << o.err;
  EXPECT_EQ(o.err.rfind("loratune: error: ", 0), 0u) << what << ": " << o.err;
  for (const auto& n : c.needles) {
    EXPECT_NE(o.err.find(n), std::string::npos) << what << ": no \"" << n << "\" in " << o.err;
  }
}

TEST(HostileAdapter, EveryCommandRefusesTheSameWay) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const std::string adapter = edited_adapter(c.adapter, c.config, c.tensors);
    const std::string model = models() + "/" + c.variant;
    const std::string tmp = test::make_temp_dir("hostile-out");
    const std::string base =
        " --model " + test::quote(model) + " --adapter " + test::quote(adapter);
    expect_refused(run_cli("merge" + base + " --out " + test::quote(tmp + "/merged")), c, "merge");
    EXPECT_FALSE(fs::exists(tmp + "/merged"));
    expect_refused(run_cli("logits" + base + " --ids '1 2 3' --out " + test::quote(tmp + "/l")), c,
                   "logits");
    expect_refused(run_cli("generate" + base + " --ids '1 2 3' --max-new-tokens 2"), c, "generate");
    test::write_file(tmp + "/data.jsonl", "{\"input_ids\": [1, 2, 3, 4]}\n");
    expect_refused(run_cli("eval" + base + " --data " + test::quote(tmp + "/data.jsonl")), c,
                   "eval");
  }
}

// The same checks run in the library, before any LoRA weight is allocated:
// an adapter_config.json claiming r = 2^40 with the fixture's rank-4 tensors
// is refused, not allocated.
TEST(HostileAdapter, HugeRankIsRefusedBeforeAllocation) {
  const std::string adapter =
      edited_adapter("qwen3_subset_rslora", [](nlohmann::json& c) { c["r"] = int64_t{1} << 40; });
  model::CausalLM m = model::load_model(models() + "/qwen3");
  try {
    lora::load_adapter(adapter, *m);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("r = 1099511627776"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(lora::adapter_tensors(*m).empty());  // nothing was attached
}

// layers_to_transform and a regex target_modules select what PEFT selects,
// and merge applies exactly those layers: layer 1's q_proj changes by
// s * B @ A, every other weight is the base's.
TEST(HostileAdapter, MergeAppliesOnlyTheSelectedLayers) {
  const std::string q1 = "base_model.model.model.layers.1.self_attn.q_proj";
  auto keep_q1 = [&](Tensors& t) {
    Tensors keep;
    for (auto& e : t) {
      if (e.first.rfind(q1 + ".", 0) == 0) keep.push_back(e);
    }
    t = keep;
  };
  const std::vector<std::function<void(nlohmann::json&)>> configs = {
      [](nlohmann::json& c) {
        c["layers_to_transform"] = {1};
        c["target_modules"] = {"q_proj"};
      },
      [](nlohmann::json& c) { c["target_modules"] = R"(.*\.1\.self_attn\.q_proj)"; },
      [](nlohmann::json& c) {
        c["target_modules"] = {"q_proj", "v_proj"};
        c["exclude_modules"] = R"(.*\.(0|2)\..*|.*v_proj)";
      },
  };
  for (size_t i = 0; i < configs.size(); ++i) {
    SCOPED_TRACE(i);
    const std::string adapter = edited_adapter("qwen3_subset_rslora", configs[i], keep_q1);
    exporter::MergeOptions opt;
    opt.model_dir = models() + "/qwen3";
    opt.adapter_dir = adapter;
    opt.out_dir = test::make_temp_dir("selected") + "/merged";
    opt.dtype = at::kFloat;
    exporter::merge_adapter(opt);
    auto base = io::Checkpoint::open(opt.model_dir);
    auto merged = io::Checkpoint::open(opt.out_dir);
    auto f = io::SafetensorsFile::open(adapter + "/adapter_model.safetensors");
    const double scale = lora::lora_scale(8, 4, /*use_rslora=*/true);  // fixture: r 4, alpha 8
    for (const auto& name : base.names()) {
      at::Tensor want = base.tensor(name).to(at::kFloat);
      if (name == "model.layers.1.self_attn.q_proj.weight") {
        want =
            want +
            at::matmul(f->tensor(q1 + ".lora_B.weight"), f->tensor(q1 + ".lora_A.weight")) * scale;
      }
      EXPECT_TRUE(at::allclose(merged.tensor(name), want, 1e-5, 1e-6)) << name;
    }
  }
}

TEST(HostileAdapter, TargetMatchingFollowsPeft) {
  lora::LoraSpec s;
  s.target_modules = {"q_proj"};
  s.layers_to_transform = {1};
  EXPECT_TRUE(lora::is_targeted(s, "model.layers.1.self_attn.q_proj"));
  EXPECT_FALSE(lora::is_targeted(s, "model.layers.0.self_attn.q_proj"));
  EXPECT_FALSE(lora::is_targeted(s, "model.layers.11.self_attn.q_proj"));
  s.layers_pattern = {"layers"};
  EXPECT_TRUE(lora::is_targeted(s, "model.layers.1.self_attn.q_proj"));
  // A full module path bypasses layers_to_transform (PEFT: key in target_modules).
  s.target_modules = {"model.layers.0.self_attn.q_proj"};
  EXPECT_TRUE(lora::is_targeted(s, "model.layers.0.self_attn.q_proj"));
  lora::LoraSpec r;
  r.target_modules.clear();
  r.target_regex = R"(.*(q|v)_proj)";
  EXPECT_TRUE(lora::is_targeted(r, "model.layers.3.self_attn.v_proj"));
  EXPECT_FALSE(lora::is_targeted(r, "model.layers.3.self_attn.k_proj"));
  r.exclude_modules = {"v_proj"};
  EXPECT_FALSE(lora::is_targeted(r, "model.layers.3.self_attn.v_proj"));
  lora::LoraSpec all;
  all.target_modules = {"all-linear"};
  EXPECT_TRUE(lora::is_targeted(all, "model.layers.0.mlp.down_proj"));
  EXPECT_FALSE(lora::is_targeted(all, "lm_head"));
}

}  // namespace
