// Config loading: defaults, every key, overrides, to_yaml round trips and the
// shipped configs. Bad configs and their one-line errors: test_config_errors.cpp.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "common/test_env.h"
#include "trainer/config/config.h"
#include "trainer/io/error.h"

namespace loratune::config {
namespace {

namespace fs = std::filesystem;

// The three required keys; everything else at its default.
const char* kMinimal = R"(
model:
  path: models/m
data:
  train: data/train.jsonl
output:
  dir: runs/out
)";

// Every key set to a value different from its default.
const char* kEveryKey = R"(
model:
  path: /models/llama
  dtype: float16
device: cuda:1
seed: 7
lora:
  r: 32
  alpha: 64.5
  dropout: 0.1
  target_modules: [q_proj, v_proj, down_proj]
  use_rslora: true
  init_from: adapters/start
data:
  train: [a.jsonl, b.jsonl]
  validation: v.jsonl
  val_fraction: 0
  format: prompt_completion
  chat_template: gemma
  max_seq_len: 4096
  packing: true
  shuffle: false
  train_on_prompt: true
  allow_special_tokens: true
  skip_malformed: true
  cache_dir: cache/tok
train:
  epochs: 3
  max_steps: 500
  micro_batch_size: 4
  gradient_accumulation_steps: 8
  global_batch: 64
  dist_timeout_s: 120
  shard_base: true
  grad_bucket_mb: 0.5
  optimizer:
    name: adamw
    lr: 3e-5
    betas: [0.85, 0.95]
    eps: 1.0e-6
    weight_decay: 0.01
    loraplus_lr_ratio: 16
  scheduler:
    name: linear
    warmup_steps: 50
  max_grad_norm: 0.5
  mixed_precision: fp16
  gradient_checkpointing: true
  eval_every: 25
  save_every: 100
  keep_checkpoints: 0
  log_every: 5
  max_bad_steps: 2
output:
  dir: runs/every
  merge: true
  merge_dtype: float32
  overwrite: true
  gguf:
    type: q8_0
    adapter: true
)";

// Every key path to_yaml must write, in schema order.
const std::vector<std::string> kAllKeys = {"model.path",
                                           "model.dtype",
                                           "model.quantize",
                                           "model.double_quant",
                                           "device",
                                           "seed",
                                           "lora.r",
                                           "lora.alpha",
                                           "lora.dropout",
                                           "lora.target_modules",
                                           "lora.use_rslora",
                                           "lora.use_dora",
                                           "lora.init",
                                           "lora.init_from",
                                           "data.train",
                                           "data.validation",
                                           "data.val_fraction",
                                           "data.format",
                                           "data.chat_template",
                                           "data.max_seq_len",
                                           "data.packing",
                                           "data.shuffle",
                                           "data.train_on_prompt",
                                           "data.allow_special_tokens",
                                           "data.skip_malformed",
                                           "data.cache_dir",
                                           "train.epochs",
                                           "train.max_steps",
                                           "train.micro_batch_size",
                                           "train.gradient_accumulation_steps",
                                           "train.global_batch",
                                           "train.dist_timeout_s",
                                           "train.shard_base",
                                           "train.grad_bucket_mb",
                                           "train.optimizer.name",
                                           "train.optimizer.lr",
                                           "train.optimizer.betas",
                                           "train.optimizer.eps",
                                           "train.optimizer.weight_decay",
                                           "train.optimizer.loraplus_lr_ratio",
                                           "train.scheduler.name",
                                           "train.scheduler.warmup_steps",
                                           "train.scheduler.warmup_ratio",
                                           "train.max_grad_norm",
                                           "train.mixed_precision",
                                           "train.gradient_checkpointing",
                                           "train.eval_every",
                                           "train.save_every",
                                           "train.keep_checkpoints",
                                           "train.log_every",
                                           "train.max_bad_steps",
                                           "output.dir",
                                           "output.merge",
                                           "output.merge_dtype",
                                           "output.overwrite",
                                           "output.gguf.type",
                                           "output.gguf.adapter"};

// Leaf key paths of a YAML map, depth first, in file order.
void collect_leaves(const YAML::Node& map, const std::string& prefix,
                    std::vector<std::string>& out) {
  for (const auto& kv : map) {
    const std::string path = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    if (kv.second.IsMap()) {
      collect_leaves(kv.second, path, out);
    } else {
      out.push_back(path);
    }
  }
}

TEST(ConfigDefaults, MinimalFileGetsDocumentedDefaults) {
  const TrainConfig c = config_from_yaml_string(kMinimal);
  EXPECT_EQ(c.model.path, "models/m");
  EXPECT_EQ(c.model.dtype, DType::kBFloat16);
  EXPECT_EQ(c.device, "auto");
  EXPECT_EQ(c.seed, 42);
  EXPECT_EQ(c.lora.r, 8);
  EXPECT_EQ(c.lora.alpha, 16.0);
  EXPECT_EQ(c.lora.dropout, 0.05);
  EXPECT_EQ(c.lora.target_modules,
            (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"}));
  EXPECT_FALSE(c.lora.all_linear());
  EXPECT_FALSE(c.lora.use_rslora);
  EXPECT_EQ(c.lora.init_from, "");
  EXPECT_EQ(c.data.train, std::vector<std::string>{"data/train.jsonl"});
  EXPECT_TRUE(c.data.validation.empty());
  EXPECT_EQ(c.data.val_fraction, 0.0);
  EXPECT_EQ(c.data.format, DataFormat::kAuto);
  EXPECT_EQ(c.data.chat_template, "auto");
  EXPECT_EQ(c.data.max_seq_len, 2048);
  EXPECT_FALSE(c.data.packing);
  EXPECT_TRUE(c.data.shuffle);
  EXPECT_FALSE(c.data.train_on_prompt);
  EXPECT_FALSE(c.data.allow_special_tokens);
  EXPECT_FALSE(c.data.skip_malformed);
  EXPECT_EQ(c.data.cache_dir, "");
  EXPECT_EQ(c.train.epochs, 1);
  EXPECT_EQ(c.train.max_steps, 0);
  EXPECT_EQ(c.train.micro_batch_size, 1);
  EXPECT_EQ(c.train.gradient_accumulation_steps, 1);
  EXPECT_EQ(c.train.optimizer.name, OptimizerName::kAdamW);
  EXPECT_EQ(c.train.optimizer.lr, 2e-4);
  EXPECT_EQ(c.train.optimizer.beta1, 0.9);
  EXPECT_EQ(c.train.optimizer.beta2, 0.999);
  EXPECT_EQ(c.train.optimizer.eps, 1e-8);
  EXPECT_EQ(c.train.optimizer.weight_decay, 0.0);
  EXPECT_FALSE(c.train.optimizer.loraplus_lr_ratio.has_value());
  EXPECT_EQ(c.train.scheduler.name, SchedulerName::kCosine);
  EXPECT_FALSE(c.train.scheduler.warmup_steps.has_value());
  ASSERT_TRUE(c.train.scheduler.warmup_ratio.has_value());  // resolved by validate()
  EXPECT_EQ(*c.train.scheduler.warmup_ratio, 0.03);
  EXPECT_EQ(c.train.max_grad_norm, 1.0);
  EXPECT_EQ(c.train.mixed_precision, MixedPrecision::kNone);
  EXPECT_FALSE(c.train.gradient_checkpointing);
  EXPECT_EQ(c.train.eval_every, 0);
  EXPECT_EQ(c.train.save_every, 0);
  EXPECT_EQ(c.train.keep_checkpoints, 3);
  EXPECT_EQ(c.train.log_every, 1);
  EXPECT_EQ(c.train.max_bad_steps, 5);
  EXPECT_FALSE(c.train.global_batch.has_value());
  EXPECT_EQ(c.train.dist_timeout_s, 600);
  EXPECT_EQ(c.train.grad_bucket_mb, 25.0);
  EXPECT_FALSE(c.train.shard_base);
  EXPECT_EQ(c.output.dir, "runs/out");
  EXPECT_FALSE(c.output.merge);
  EXPECT_FALSE(c.output.merge_dtype.has_value());
  EXPECT_FALSE(c.output.overwrite);
  EXPECT_EQ(c.output.gguf.type, GgufType::kNone);
  EXPECT_FALSE(c.output.gguf.adapter);
}

TEST(ConfigParse, EveryKeyIsRead) {
  const TrainConfig c = config_from_yaml_string(kEveryKey);
  EXPECT_EQ(c.model.path, "/models/llama");
  EXPECT_EQ(c.model.dtype, DType::kFloat16);
  EXPECT_EQ(c.device, "cuda:1");
  EXPECT_EQ(c.seed, 7);
  EXPECT_EQ(c.lora.r, 32);
  EXPECT_EQ(c.lora.alpha, 64.5);
  EXPECT_EQ(c.lora.dropout, 0.1);
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj", "down_proj"}));
  EXPECT_TRUE(c.lora.use_rslora);
  EXPECT_EQ(c.lora.init_from, "adapters/start");
  EXPECT_EQ(c.data.train, (std::vector<std::string>{"a.jsonl", "b.jsonl"}));
  EXPECT_EQ(c.data.validation, std::vector<std::string>{"v.jsonl"});
  EXPECT_EQ(c.data.format, DataFormat::kPromptCompletion);
  EXPECT_EQ(c.data.chat_template, "gemma");
  EXPECT_EQ(c.data.max_seq_len, 4096);
  EXPECT_TRUE(c.data.packing);
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_TRUE(c.data.train_on_prompt);
  EXPECT_TRUE(c.data.allow_special_tokens);
  EXPECT_TRUE(c.data.skip_malformed);
  EXPECT_EQ(c.data.cache_dir, "cache/tok");
  EXPECT_EQ(c.train.epochs, 3);
  EXPECT_EQ(c.train.max_steps, 500);
  EXPECT_EQ(c.train.micro_batch_size, 4);
  EXPECT_EQ(c.train.gradient_accumulation_steps, 8);
  EXPECT_EQ(c.train.global_batch, std::optional<int64_t>(64));
  EXPECT_EQ(c.train.dist_timeout_s, 120);
  EXPECT_EQ(c.train.grad_bucket_mb, 0.5);
  EXPECT_TRUE(c.train.shard_base);
  EXPECT_EQ(c.train.optimizer.lr, 3e-5);  // "3e-5" without a '.' is a number here
  EXPECT_EQ(c.train.optimizer.beta1, 0.85);
  EXPECT_EQ(c.train.optimizer.beta2, 0.95);
  EXPECT_EQ(c.train.optimizer.eps, 1e-6);
  EXPECT_EQ(c.train.optimizer.weight_decay, 0.01);
  EXPECT_EQ(c.train.optimizer.loraplus_lr_ratio, std::optional<double>(16.0));
  EXPECT_EQ(c.train.scheduler.name, SchedulerName::kLinear);
  EXPECT_EQ(c.train.scheduler.warmup_steps, std::optional<int64_t>(50));
  EXPECT_FALSE(c.train.scheduler.warmup_ratio.has_value());  // no default next to steps
  EXPECT_EQ(c.train.max_grad_norm, 0.5);
  EXPECT_EQ(c.train.mixed_precision, MixedPrecision::kFP16);
  EXPECT_TRUE(c.train.gradient_checkpointing);
  EXPECT_EQ(c.train.eval_every, 25);
  EXPECT_EQ(c.train.save_every, 100);
  EXPECT_EQ(c.train.keep_checkpoints, 0);
  EXPECT_EQ(c.train.log_every, 5);
  EXPECT_EQ(c.train.max_bad_steps, 2);
  EXPECT_EQ(c.output.dir, "runs/every");
  EXPECT_TRUE(c.output.merge);
  EXPECT_EQ(c.output.merge_dtype, std::optional<DType>(DType::kFloat32));
  EXPECT_TRUE(c.output.overwrite);
  EXPECT_EQ(c.output.gguf.type, GgufType::kQ8_0);
  EXPECT_TRUE(c.output.gguf.adapter);
}

TEST(ConfigParse, AllLinearAndSinglePathsAndNullUnsets) {
  const TrainConfig c = config_from_yaml_string(std::string(kMinimal) + R"(
lora:
  target_modules: all-linear
  init_from: ~
train:
  scheduler:
    warmup_steps: 10
    warmup_ratio: null
)");
  EXPECT_TRUE(c.lora.all_linear());
  EXPECT_EQ(c.lora.init_from, "");
  EXPECT_EQ(c.train.scheduler.warmup_steps, std::optional<int64_t>(10));
  EXPECT_FALSE(c.train.scheduler.warmup_ratio.has_value());
}

TEST(ConfigParse, EmptySectionKeepsDefaults) {
  const TrainConfig c = config_from_yaml_string(std::string(kMinimal) + "lora:\ntrain:\n");
  EXPECT_EQ(c.lora.r, 8);
  EXPECT_EQ(c.train.epochs, 1);
}

TEST(ConfigOverrides, ScalarsListsAndSectionsApplyInOrder) {
  const TrainConfig c = config_from_yaml_string(
      kMinimal, {"train.optimizer.lr=1e-4", "lora.target_modules=[q_proj,v_proj]", "lora.r=4",
                 "lora.r = 16", "data.packing=true", "device=cuda:0",
                 "train.optimizer={eps: 1e-6, betas: [0.9, 0.95]}", "data.train=[x.jsonl, y.jsonl]",
                 "train.scheduler.warmup_steps=20", "train.scheduler.warmup_ratio=null",
                 "output.merge_dtype=bfloat16", "data.val_fraction=0.25", "train.eval_every=10"});
  EXPECT_EQ(c.train.optimizer.lr, 1e-4);  // the section override keeps keys it does not name
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.lora.r, 16);  // later overrides win
  EXPECT_TRUE(c.data.packing);
  EXPECT_EQ(c.device, "cuda:0");
  EXPECT_EQ(c.train.optimizer.eps, 1e-6);
  EXPECT_EQ(c.train.optimizer.beta2, 0.95);
  EXPECT_EQ(c.data.train, (std::vector<std::string>{"x.jsonl", "y.jsonl"}));
  EXPECT_EQ(c.train.scheduler.warmup_steps, std::optional<int64_t>(20));
  EXPECT_FALSE(c.train.scheduler.warmup_ratio.has_value());
  EXPECT_EQ(c.output.merge_dtype, std::optional<DType>(DType::kBFloat16));
  EXPECT_EQ(c.data.val_fraction, 0.25);  // a held-out fraction is validation data for eval_every
  EXPECT_EQ(c.train.eval_every, 10);
}

TEST(ConfigOverrides, ReplaceFileValuesAndSupplyRequiredKeys) {
  const std::string dir = test::make_temp_dir("config-override");
  const std::string path = dir + "/run.yaml";
  test::write_file(path, "model:\n  path: m\nlora:\n  r: 8\n  alpha: 16\n");
  const TrainConfig c = load_train_config(
      path, {"lora.alpha=8", "data.train=t.jsonl", "output.dir=o", "train.max_steps=3"});
  EXPECT_EQ(c.lora.alpha, 8.0);
  EXPECT_EQ(c.lora.r, 8);
  EXPECT_EQ(c.data.train, std::vector<std::string>{"t.jsonl"});
  EXPECT_EQ(c.train.max_steps, 3);
}

TEST(ConfigPaths, RelativePathsStayAsWritten) {
  // Relative paths resolve against the working directory (torchtune/axolotl
  // behaviour), so loading from another directory must not rewrite them.
  const std::string dir = test::make_temp_dir("config-paths");
  test::write_file(dir + "/c.yaml", kMinimal);
  const TrainConfig c = load_train_config(dir + "/c.yaml", {});
  EXPECT_EQ(c.model.path, "models/m");
  EXPECT_EQ(c.data.train, std::vector<std::string>{"data/train.jsonl"});
  EXPECT_EQ(c.output.dir, "runs/out");
}

TEST(ConfigToYaml, WritesEveryKeyInSchemaOrder) {
  const std::string text = to_yaml(config_from_yaml_string(kMinimal));
  std::vector<std::string> leaves;
  collect_leaves(YAML::Load(text), "", leaves);
  EXPECT_EQ(leaves, kAllKeys) << text;
}

TEST(ConfigToYaml, RoundTripsDefaultsEveryKeyAndOddValues) {
  std::vector<TrainConfig> configs = {config_from_yaml_string(kMinimal),
                                      config_from_yaml_string(kEveryKey)};
  TrainConfig odd = config_from_yaml_string(kMinimal, {"lora.target_modules=all-linear"});
  odd.model.path = "true";  // strings a YAML reader would take for a bool or number
  odd.output.dir = "123";
  odd.data.train = {"data: with colon.jsonl", "null"};
  odd.lora.alpha = 0.1 + 0.2;  // needs 17 significant digits
  odd.train.optimizer.lr = 1.0 / 3.0 * 1e-4;
  configs.push_back(odd);
  for (const TrainConfig& c : configs) {
    const std::string text = to_yaml(c);
    const TrainConfig back = config_from_yaml_string(text, {}, "<to_yaml>");
    EXPECT_TRUE(back == c) << text;
    EXPECT_EQ(to_yaml(back), text);
  }
}

TEST(ConfigEquality, EachFieldChangeIsSeen) {
  const TrainConfig base = config_from_yaml_string(kMinimal);
  std::vector<TrainConfig> changed(12, base);
  changed[11].train.grad_bucket_mb = 100;
  changed[8].train.global_batch = 32;
  changed[9].train.dist_timeout_s = 60;
  changed[10].train.shard_base = true;
  changed[0].lora.dropout = 0.0;
  changed[1].data.validation = {"v.jsonl"};
  changed[2].train.scheduler.warmup_steps = 0;
  changed[3].train.optimizer.beta2 = 0.99;
  changed[4].output.merge_dtype = DType::kFloat16;
  changed[5].data.allow_special_tokens = true;
  changed[6].output.gguf.type = GgufType::kF16;
  changed[7].output.gguf.adapter = true;
  for (const auto& c : changed) EXPECT_TRUE(c != base) << to_yaml(c);
  EXPECT_TRUE(base == config_from_yaml_string(kMinimal));
}

TEST(ConfigValidate, StructsWithoutAFile) {
  TrainConfig c;
  try {
    validate(c);
    FAIL() << "a default TrainConfig has no model.path";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("model.path: required", 0), 0u) << e.what();
  }
  c.model.path = "m";
  c.data.train = {"t.jsonl"};
  c.output.dir = "o";
  validate(c);
  EXPECT_EQ(c.train.scheduler.warmup_ratio, std::optional<double>(0.03));
  c.lora.r = 0;
  EXPECT_THROW(validate(c), Error);
}

TEST(ConfigValidate, MaxStepsAloneDecidesLength) {
  const TrainConfig c = config_from_yaml_string(kMinimal, {"train.epochs=0", "train.max_steps=10"});
  EXPECT_EQ(c.train.epochs, 0);
  EXPECT_EQ(c.train.max_steps, 10);
}

TEST(ShippedConfigs, EveryConfigLoadsValidatesAndRoundTrips) {
  const fs::path dir = fs::path(test::source_dir()) / "configs";
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    names.insert(entry.path().filename().string());
    SCOPED_TRACE(entry.path().string());
    const TrainConfig c = load_train_config(entry.path().string(), {});
    EXPECT_TRUE(config_from_yaml_string(to_yaml(c)) == c);
  }
  for (const char* want : {"tiny-smoke.yaml", "llama3.1-8b-lora.yaml", "mistral-7b-lora.yaml",
                           "qwen2.5-7b-lora.yaml", "gemma-2-9b-it-lora.yaml",
                           "gemma-3-1b-it-lora.yaml", "phi-4-lora.yaml", "phi-4-mini-lora.yaml"}) {
    EXPECT_TRUE(names.count(want)) << want << " missing from " << dir;
  }
}

TEST(ShippedConfigs, TinySmokeRunsOnCpuAndGpuConfigsUseBf16) {
  const std::string dir = test::source_dir() + "/configs/";
  const TrainConfig tiny = load_train_config(dir + "tiny-smoke.yaml", {});
  EXPECT_EQ(tiny.device, "cpu");
  EXPECT_EQ(tiny.model.dtype, DType::kFloat32);
  EXPECT_EQ(tiny.train.mixed_precision, MixedPrecision::kNone);
  for (const char* name : {"llama3.1-8b-lora.yaml", "mistral-7b-lora.yaml", "qwen2.5-7b-lora.yaml",
                           "gemma-2-9b-it-lora.yaml", "gemma-3-1b-it-lora.yaml", "phi-4-lora.yaml",
                           "phi-4-mini-lora.yaml"}) {
    SCOPED_TRACE(name);
    const TrainConfig c = load_train_config(dir + name, {});
    EXPECT_EQ(c.model.dtype, DType::kBFloat16);
    EXPECT_EQ(c.train.mixed_precision, MixedPrecision::kBF16);
    EXPECT_GE(c.data.max_seq_len, 2048);
    EXPECT_TRUE(c.train.gradient_checkpointing);
    EXPECT_EQ(c.device, "cuda");
  }
}

}  // namespace
}  // namespace loratune::config
