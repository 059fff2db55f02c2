// LoRA projections and PEFT adapters: injection, PEFT's adapters loaded here
// give PEFT's logits, and PEFT loads loratune's adapters with the same logits.
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "common/test_env.h"
#include "trainer/io/error.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"

namespace fs = std::filesystem;
using namespace loratune;

namespace {

std::string tiny(const std::string& variant) {
  return test::testdata_dir() + "/models/" + variant;
}

// float32 logits [T,V] of one sequence.
at::Tensor logits_of(model::CausalLMImpl& m, const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  return m.forward(ids.unsqueeze(0)).squeeze(0).to(at::kFloat);
}

// For each case of tests/python/ref_peft.py (the peft_adapters fixture): PEFT
// wrote an adapter with random A and B; loratune loads it and must give PEFT's
// logits. loratune then saves the adapter again, and PEFT loading that must
// find exactly its own keys and give loratune's logits.
TEST(PeftParity, LoadsPeftAdaptersAndPeftLoadsOurs) {
  const std::string dir = test::testdata_dir() + "/peft";
  auto cases = nlohmann::json::parse(test::read_file(dir + "/cases.json"));
  ASSERT_GE(cases.size(), 5u);
  for (const auto& c : cases) {
    const std::string name = c["name"], variant = c["variant"];
    SCOPED_TRACE(name);
    auto ref = io::SafetensorsFile::open(dir + "/" + name + "/ref.safetensors");
    at::Tensor ids = ref->tensor("input_ids").clone();
    model::CausalLM m = model::load_model(tiny(variant));
    m->eval();
    lora::LoraSpec spec = lora::load_adapter(dir + "/" + name + "/adapter", *m);
    at::Tensor got = logits_of(*m, ids);
    double diff = (got - ref->tensor("logits")).abs().max().item<double>();
    std::cout << name << ": max |loratune - peft| logits = " << diff << "\n";
    EXPECT_LE(diff, 1e-4);
    std::string ours = dir + "/" + name + "/ours";
    std::filesystem::remove_all(ours);
    lora::save_adapter(ours, *m, spec, /*overwrite=*/false);
    io::save_file({{"input_ids", ids}, {"logits", got}}, dir + "/" + name + "/ours.safetensors");
  }
  std::cout << test::run_python("tests/python/ref_peft.py",
                                "check --models " + test::quote(test::testdata_dir() + "/models") +
                                    " --dir " + test::quote(dir));
}

// `loratune logits --adapter` applies a PEFT adapter unmerged: PEFT's logits.
TEST(PeftParity, LogitsCommandWithAdapter) {
  const std::string dir = test::testdata_dir() + "/peft";
  auto c = nlohmann::json::parse(test::read_file(dir + "/cases.json"))[0];
  const std::string name = c["name"], variant = c["variant"];
  auto ref = io::SafetensorsFile::open(dir + "/" + name + "/ref.safetensors");
  std::string ids;
  for (int64_t id : std::vector<int64_t>(
           ref->tensor("input_ids").data_ptr<int64_t>(),
           ref->tensor("input_ids").data_ptr<int64_t>() + ref->tensor("input_ids").numel())) {
    ids += std::to_string(id) + " ";
  }
  const std::string out = test::make_temp_dir("logits-adapter") + "/logits.safetensors";
  auto r = test::run(test::quote(test::loratune_bin()) + " logits --model " +
                     test::quote(tiny(variant)) + " --adapter " +
                     test::quote(dir + "/" + name + "/adapter") + " --ids " + test::quote(ids) +
                     " --out " + test::quote(out));
  ASSERT_EQ(r.status, 0) << r.out;
  auto got = io::SafetensorsFile::open(out)->tensor("logits");
  EXPECT_LE((got - ref->tensor("logits")).abs().max().item<double>(), 1e-4);
}

TEST(Lora, FreshAdapterLeavesLogitsUnchangedAndTrainsOnlyAB) {
  model::CausalLM m = model::load_model(tiny("qwen2"));
  at::Tensor ids = at::arange(11, at::kLong);
  at::Tensor before = logits_of(*m, ids);
  lora::LoraSpec spec;
  spec.target_modules = {"all-linear"};
  auto paths = lora::inject_lora(*m, spec);
  EXPECT_EQ(paths.size(), static_cast<size_t>(7 * m->config().num_hidden_layers));
  EXPECT_TRUE(at::allclose(logits_of(*m, ids), before, 0, 0));
  size_t trainable = 0;
  for (const auto& p : m->named_parameters()) {
    if (p.value().requires_grad()) {
      ++trainable;
      EXPECT_NE(p.key().find(".lora_"), std::string::npos) << p.key();
    }
  }
  EXPECT_EQ(trainable, 2 * paths.size());
  auto named = lora::adapter_tensors(*m);
  EXPECT_EQ(named.front().first, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
}

TEST(Lora, ScaleIsAlphaOverROrSqrtR) {
  EXPECT_DOUBLE_EQ(lora::lora_scale(16, 8, false), 2.0);
  EXPECT_DOUBLE_EQ(lora::lora_scale(16, 16, true), 4.0);
}

// lora.init gaussian (PEFT's init_lora_weights="gaussian"): A ~ N(0, 1/r),
// B = 0, so the model is unchanged; the saved config records the init.
TEST(Lora, GaussianInitIsNormalOneOverRWithBZero) {
  model::CausalLM m = model::load_model(tiny("qwen2"));
  at::Tensor ids = at::arange(11, at::kLong);
  at::Tensor before = logits_of(*m, ids);
  lora::LoraSpec spec;
  spec.r = 4;
  spec.target_modules = {"all-linear"};
  spec.init = lora::LoraInit::kGaussian;
  at::manual_seed(0);
  lora::inject_lora(*m, spec);
  EXPECT_TRUE(at::allclose(logits_of(*m, ids), before, 0, 0));
  std::vector<at::Tensor> a_values;
  for (const auto& [name, t] : lora::adapter_tensors(*m)) {
    if (name.find("lora_B") != std::string::npos) {
      EXPECT_EQ(t.abs().max().item<double>(), 0.0) << name;
    } else {
      a_values.push_back(t.flatten());
    }
  }
  const at::Tensor a = at::cat(a_values).to(at::kDouble);
  ASSERT_GT(a.numel(), 4000);
  // Kaiming-uniform (the default) would give std 1/sqrt(3 in), far below 1/r = 0.25.
  EXPECT_NEAR(a.std().item<double>(), 0.25, 0.25 * 0.05);
  EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.25 * 0.05);
  // A normal sample: ~4.6% of values beyond 2 std (a uniform one has none).
  const double tail = (a.abs() > 0.5).to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(tail, 0.0455, 0.015);
  const std::string dir = test::make_temp_dir("gauss");
  lora::save_adapter(dir + "/adapter", *m, spec, /*overwrite=*/false);
  const lora::LoraSpec saved = lora::read_adapter_config(dir + "/adapter");
  EXPECT_EQ(nlohmann::json::parse(lora::adapter_config_json(spec))["init_lora_weights"],
            "gaussian");
  EXPECT_EQ(saved.r, 4);
}

TEST(Lora, UnknownTargetNamesClosestModule) {
  model::CausalLM m = model::load_model(tiny("qwen2"));
  lora::LoraSpec spec;
  spec.target_modules = {"q_prj"};
  try {
    lora::inject_lora(*m, spec);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'q_proj'"), std::string::npos) << e.what();
  }
}

// adapter_config.json: a valid LoRA config with `key` set to `value` (JSON).
void write_config(const std::string& dir, const std::string& key, const std::string& value) {
  nlohmann::json j = {
      {"peft_type", "LORA"}, {"r", 8}, {"lora_alpha", 16}, {"target_modules", {"q_proj"}}};
  j[key] = nlohmann::json::parse(value);
  std::ofstream(dir + "/adapter_config.json") << j.dump();
}

TEST(Lora, RefusesWhatItDoesNotSupport) {
  struct Bad {
    std::string key, value, needle;
  };
  const Bad cases[] = {
      {"use_qalora", "true", "QALoRA"},
      {"bias", "\"all\"", "bias training"},
      {"modules_to_save", "[\"lm_head\"]", "modules_to_save"},
      {"peft_type", "\"IA3\"", "peft_type"},
      {"lora_bias", "true", "lora_bias"},
      {"init_lora_weights", "\"olora\"", "olora"},
  };
  for (const Bad& b : cases) {
    std::string dir = test::make_temp_dir("badcfg");
    write_config(dir, b.key, b.value);
    try {
      lora::read_adapter_config(dir);
      ADD_FAILURE() << "accepted: " << b.key << " = " << b.value;
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << msg;
      EXPECT_NE(msg.find(b.needle), std::string::npos) << msg;
      EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
    }
  }
}

// rank_pattern / alpha_pattern: the first key in the file's order that
// matches wins (PEFT's get_pattern_key over the dict json.load makes), and a
// saved adapter keeps that order.
TEST(Lora, PatternKeysAreTriedInFileOrder) {
  const std::string path = "model.layers.1.self_attn.q_proj";
  for (const bool short_first : {true, false}) {
    const std::string a = R"("q_proj": 2)", b = R"("layers.1.self_attn.q_proj": 40)";
    const std::string dir = test::make_temp_dir("pattern_order");
    std::ofstream(dir + "/adapter_config.json")
        << R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],)"
        << R"( "alpha_pattern": {)" << (short_first ? a + ", " + b : b + ", " + a) << "}}";
    const lora::LoraSpec spec = lora::read_adapter_config(dir);
    EXPECT_EQ(lora::rank_and_alpha(spec, path).second, short_first ? 2.0 : 40.0);
    EXPECT_EQ(lora::rank_and_alpha(spec, "model.layers.0.self_attn.q_proj").second, 2.0);
    const std::string saved = lora::adapter_config_json(spec);
    EXPECT_LT(saved.find(short_first ? "\"q_proj\": 2" : "\"layers.1"),
              saved.find(short_first ? "\"layers.1" : "\"q_proj\": 2"))
        << saved;
  }
}

// Patterns are matched with std::regex where PEFT uses Python's re: what the
// two read differently is refused, naming the file and key; the rest works.
TEST(Lora, PatternsPythonReadsDifferentlyAreRefused) {
  for (const std::string key : {R"(layers\\.[[:digit:]]\\.self_attn\\.q_proj)", R"(\\Aq_proj)",
                                R"(q_proj\\Z)", "layers.{,3}q_proj", "q_proj("}) {
    const std::string dir = test::make_temp_dir("pattern_syntax");
    std::ofstream(dir + "/adapter_config.json")
        << R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],)"
        << R"( "rank_pattern": {")" << key << R"(": 4}})";
    try {
      lora::read_adapter_config(dir);
      ADD_FAILURE() << "accepted " << key;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << msg;
      EXPECT_NE(msg.find("adapter_config.json: rank_pattern key"), std::string::npos) << msg;
    }
  }
  const std::string dir = test::make_temp_dir("target_syntax");
  std::ofstream(dir + "/adapter_config.json")
      << R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ".*[[:alpha:]]_proj"})";
  try {
    lora::read_adapter_config(dir);
    ADD_FAILURE() << "accepted a POSIX class in target_modules";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("adapter_config.json: target_modules '"),
              std::string::npos)
        << e.what();
  }
  for (const std::string ok : {"[.]q_proj", "[]x]?q_proj", R"(layers\.\d+\.self_attn\.q_proj)",
                               "(q|k)_proj", "[^a]_proj"}) {
    EXPECT_NO_THROW(lora::check_regex(ok, "test")) << ok;
  }
  lora::LoraSpec spec;
  spec.rank_pattern = {{R"(layers\.1\.self_attn\.q_proj)", 4}};
  EXPECT_EQ(lora::rank_and_alpha(spec, "model.layers.1.self_attn.q_proj").first, 4);
  EXPECT_EQ(lora::rank_and_alpha(spec, "model.layers.11.self_attn.q_proj").first, spec.r);
}

TEST(Lora, AdapterThatDoesNotFitIsRejectedByName) {
  model::CausalLM m = model::load_model(tiny("qwen2"));
  lora::LoraSpec spec;
  spec.target_modules = {"q_proj"};
  lora::inject_lora(*m, spec);
  std::string dir = test::make_temp_dir("misfit") + "/adapter";
  lora::save_adapter(dir, *m, spec, false);
  model::CausalLM other = model::load_model(tiny("qwen2"));
  spec.target_modules = {"q_proj", "v_proj"};
  lora::inject_lora(*other, spec);
  try {
    lora::load_adapter_weights(dir, *other);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'base_model.model.model.layers.0.self_attn."
                                         "v_proj.lora_A.weight' is missing"),
              std::string::npos)
        << e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kCorrupt);
  }
}

}  // namespace
