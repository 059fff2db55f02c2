// LoRA+ (train.optimizer.loraplus_lr_ratio) against PEFT's
// create_loraplus_optimizer (tests/python/ref_loraplus.py): the same param
// groups, and replayed training runs with the same step losses, per-group
// lrs and final adapter, which a plain AdamW run misses by far.
#include <ATen/Context.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "train_test_util.h"
#include "trainer/config/config.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/model/loader.h"
#include "trainer/train/train.h"

using namespace loratune;

namespace {

std::string ref_loraplus_dir() {
  return test::testdata_dir() + "/ref_loraplus";
}

// The names of each group, sorted (a group is a set: the update is elementwise).
std::vector<std::vector<std::string>> group_names(
    const std::vector<train::ParamGroup>& groups,
    const std::vector<std::pair<std::string, at::Tensor>>& named) {
  std::vector<std::vector<std::string>> out;
  for (const auto& g : groups) {
    std::vector<std::string> names;
    for (size_t i : g.params) names.push_back(named.at(i).first);
    std::sort(names.begin(), names.end());
    out.push_back(names);
  }
  return out;
}

// Expects `groups` (of `named`) to be the "groups" of a ref_loraplus.py JSON
// record: same order, lr, weight decay and members.
void expect_groups_equal(const std::vector<train::ParamGroup>& groups,
                         const std::vector<std::pair<std::string, at::Tensor>>& named,
                         const nlohmann::json& want) {
  ASSERT_EQ(groups.size(), want.size());
  const auto names = group_names(groups, named);
  for (size_t g = 0; g < groups.size(); ++g) {
    SCOPED_TRACE("group " + std::to_string(g));
    EXPECT_EQ(groups[g].lr, want[g].at("lr").get<double>());
    EXPECT_EQ(groups[g].weight_decay, want[g].at("weight_decay").get<double>());
    auto want_names = want[g].at("params").get<std::vector<std::string>>();
    std::sort(want_names.begin(), want_names.end());
    EXPECT_EQ(names[g], want_names);
  }
}

config::OptimizerConfig loraplus_config(const nlohmann::json& ref) {
  config::OptimizerConfig oc;
  oc.lr = ref.at("lr").get<double>();
  oc.weight_decay = ref.at("weight_decay").get<double>();
  oc.loraplus_lr_ratio = ref.at("loraplus_lr_ratio").get<double>();
  return oc;
}

// The largest over the adapter tensors of max |ours - file| / max |file|.
double adapter_error(model::CausalLMImpl& m, const std::string& safetensors) {
  auto fin = io::SafetensorsFile::open(safetensors);
  const auto ours = lora::adapter_tensors(m);
  EXPECT_EQ(ours.size(), fin->tensors().size());
  double worst = 0;
  for (const auto& [name, t] : ours) {
    EXPECT_TRUE(fin->contains(name)) << name;
    if (!fin->contains(name)) continue;
    const at::Tensor want = fin->tensor(name);
    worst = std::max(worst, (t - want).abs().max().item<double>() /
                                std::max(want.abs().max().item<double>(), 1e-12));
  }
  return worst;
}

struct Replay {
  double loss = 0;  // worst relative step-loss error
  double adapter = 0;
};

// Replays the reference run in `dir` on a fresh `variant` model with
// loratune's Trainer (ref_train.py's loop: see train_test_util.h's
// replay_reference_run) with `oc` as the optimizer config; with `check`,
// expects (gtest) PEFT's groups, each step's targets, lr, group lrs and loss
// (within loss_tol) equal to the reference's.
Replay replay(const std::string& variant, const std::string& dir, const config::OptimizerConfig& oc,
              bool check, double loss_tol) {
  const auto ref = io::read_json(dir + "/ref.json");
  const auto& steps = ref.at("steps");
  model::CausalLM m = model::load_model(test::tiny_model(variant));
  test::inject_reference_lora(*m, dir);

  config::TrainLoopConfig cfg;
  cfg.optimizer = oc;
  cfg.scheduler.name = config::SchedulerName::kCosine;
  cfg.scheduler.warmup_steps = ref.at("warmup").get<int64_t>();
  cfg.max_grad_norm = 1.0;
  const size_t accum = ref.at("accum").get<size_t>();
  train::Trainer trainer(*m, cfg, static_cast<int64_t>(steps.size()));
  if (check)
    expect_groups_equal(trainer.optimizer().groups(), lora::adapter_tensors(*m), ref.at("groups"));
  const auto batches = test::micro_batches(test::read_tokenized(dir + "/train.jsonl"),
                                           ref.at("micro").get<size_t>());
  Replay out;
  EXPECT_EQ(batches.size(), steps.size() * accum);
  if (batches.size() != steps.size() * accum) return out;
  for (size_t s = 0; s < steps.size(); ++s) {
    std::vector<train::MicroBatch> group(batches.begin() + s * accum,
                                         batches.begin() + (s + 1) * accum);
    const train::StepResult r = trainer.step(group, train::StepTotals::of(group));
    const double loss = r.loss.item<double>();
    const double want = steps[s].at("loss").get<double>();
    out.loss = std::max(out.loss, test::rel_err(loss, want));
    if (!check) continue;
    EXPECT_EQ(r.target_tokens, steps[s].at("targets").get<int64_t>()) << "step " << s;
    EXPECT_EQ(r.lr, steps[s].at("lr").get<double>()) << "step " << s;
    EXPECT_EQ(r.group_lrs, steps[s].at("lr_groups").get<std::vector<double>>()) << "step " << s;
    EXPECT_EQ(r.found_inf.item<float>(), 0.0f) << "step " << s;
    EXPECT_LE(test::rel_err(loss, want), loss_tol)
        << "step " << s << ": " << loss << " vs " << want;
  }
  out.adapter = adapter_error(*m, dir + "/final_adapter/adapter_model.safetensors");
  return out;
}

class LoraPlusParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LoraPlusParity, StepLossesAndFinalAdapterMatchPeftAndDifferFromPlainAdamW) {
  // kAdapterTol is tighter than the 1e-3 asked for so that the weight decay
  // counts too: PEFT's literal call (weight_decay=0.01 without
  // loraplus_weight_decay, i.e. no decay) ends 1.3e-3 away.
  constexpr double kLossTol = 1e-4, kAdapterTol = 1e-4;
  const std::string variant = GetParam();
  const std::string dir = ref_loraplus_dir() + "/" + variant;
  const auto ref = io::read_json(dir + "/ref.json");
  ASSERT_GE(ref.at("steps").size(), 16u);
  ASSERT_GT(ref.at("loraplus_lr_ratio").get<double>(), 1.0);

  const config::OptimizerConfig oc = loraplus_config(ref);
  const Replay plus = replay(variant, dir, oc, /*check=*/true, kLossTol);
  EXPECT_LE(plus.adapter, kAdapterTol);

  // The same run with the ratio ignored: plain AdamW, one group.
  config::OptimizerConfig plain_oc = oc;
  plain_oc.loraplus_lr_ratio.reset();
  const Replay plain = replay(variant, dir, plain_oc, /*check=*/false, 0);
  EXPECT_GE(plain.adapter, 100 * kAdapterTol);
  std::cout << variant << ": LoRA+ max rel err loss " << plus.loss << ", final adapter "
            << plus.adapter << "; plain AdamW would be off by loss " << plain.loss
            << ", final adapter " << plain.adapter << "\n";
}

INSTANTIATE_TEST_SUITE_P(Variants, LoraPlusParity, ::testing::Values("llama-rope3-tied", "qwen3"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// Adapters with 1-D parameters (a DoRA magnitude, a lora_B bias), by name
// and shape only: the groups equal PEFT's for each case of groups.json.
TEST(LoraPlusGroups, EqualPeftCreateLoraplusOptimizer) {
  const auto ref = io::read_json(ref_loraplus_dir() + "/groups.json");
  const config::OptimizerConfig oc = loraplus_config(ref);
  ASSERT_EQ(ref.at("cases").size(), 2u);
  for (const auto& c : ref.at("cases")) {
    SCOPED_TRACE(c.at("case").get<std::string>());
    std::vector<std::pair<std::string, at::Tensor>> named;
    size_t one_d = 0;
    for (const auto& p : c.at("params")) {
      const auto shape = p.at("shape").get<std::vector<int64_t>>();
      one_d += shape.size() == 1;
      named.emplace_back(p.at("name").get<std::string>(), at::zeros(shape));
    }
    EXPECT_GT(one_d, 0u);
    expect_groups_equal(train::adapter_param_groups(named, oc), named, c.at("groups"));
  }
}

TEST(LoraPlusGroups, WithoutRatioOneGroupOfAll) {
  std::vector<std::pair<std::string, at::Tensor>> named = {
      {"m.q_proj.lora_A.weight", at::zeros({2, 4})},
      {"m.q_proj.lora_B.weight", at::zeros({4, 2})},
      {"m.q_proj.lora_magnitude_vector", at::zeros({4})}};
  config::OptimizerConfig oc;
  oc.lr = 3e-4;
  oc.weight_decay = 0.1;
  const auto groups = train::adapter_param_groups(named, oc);
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(groups[0].params, (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(groups[0].lr, 3e-4);
  EXPECT_EQ(groups[0].weight_decay, 0.1);

  oc.loraplus_lr_ratio = 4.0;
  const auto plus = train::adapter_param_groups(named, oc);
  ASSERT_EQ(plus.size(), 2u);
  EXPECT_EQ(plus[0].params, (std::vector<size_t>{0}));
  EXPECT_EQ(plus[0].lr, 3e-4);
  EXPECT_EQ(plus[1].params, (std::vector<size_t>{1, 2}));
  EXPECT_EQ(plus[1].lr, 3e-4 * 4.0);
  EXPECT_EQ(plus[1].weight_decay, 0.1);
}

// Each group steps exactly as a one-group AdamW with its lr and weight decay
// would; the state stays per parameter in params() order.
TEST(LoraPlusOptimizer, EachGroupStepsWithItsOwnLrAndDecay) {
  at::manual_seed(3);
  std::vector<at::Tensor> init = {at::randn({3, 5}), at::randn({5}), at::randn({4, 3})};
  std::vector<at::Tensor> grads = {at::randn({3, 5}), at::randn({5}), at::randn({4, 3})};
  config::OptimizerConfig oc;
  oc.lr = 0.01;
  oc.weight_decay = 0.3;
  auto fresh = [&](size_t i) { return init[i].clone().set_requires_grad(true); };

  std::vector<at::Tensor> ps = {fresh(0), fresh(1), fresh(2)};
  train::AdamW grouped(ps, oc, {{{0, 2}, 0.01, 0.3}, {{1}, 0.05, 0.0}});
  ASSERT_EQ(grouped.groups().size(), 2u);
  EXPECT_THROW(grouped.step(0.01), Error);  // one lr for two groups

  config::OptimizerConfig b_oc = oc;
  b_oc.weight_decay = 0.0;
  std::vector<at::Tensor> a_ps = {fresh(0), fresh(2)}, b_ps = {fresh(1)};
  train::AdamW a(a_ps, oc), b(b_ps, b_oc);
  for (int s = 0; s < 3; ++s) {
    const double k = 1.0 / (s + 1);
    for (size_t i = 0; i < 3; ++i) ps[i].mutable_grad() = grads[i] * k;
    a_ps[0].mutable_grad() = grads[0] * k;
    a_ps[1].mutable_grad() = grads[2] * k;
    b_ps[0].mutable_grad() = grads[1] * k;
    grouped.step({0.01 * k, 0.05 * k});
    a.step(0.01 * k);
    b.step(0.05 * k);
  }
  EXPECT_TRUE(ps[0].equal(a_ps[0]));
  EXPECT_TRUE(ps[2].equal(a_ps[1]));
  EXPECT_TRUE(ps[1].equal(b_ps[0]));
  EXPECT_TRUE(grouped.exp_avg()[1].equal(b.exp_avg()[0]));
  EXPECT_TRUE(grouped.exp_avg_sq()[2].equal(a.exp_avg_sq()[1]));
  EXPECT_FALSE(ps[0].equal(init[0]));

  // found_inf skips every group.
  std::vector<at::Tensor> before;
  for (const auto& p : ps) before.push_back(p.detach().clone());
  grouped.step({0.01, 0.05}, at::ones({}));
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(ps[i].equal(before[i])) << i;
  EXPECT_EQ(grouped.steps()[1].item<float>(), 3.0f);
}

TEST(LoraPlusOptimizer, GroupsMustCoverEveryParameterOnce) {
  config::OptimizerConfig oc;
  std::vector<at::Tensor> ps = {at::zeros({2}), at::zeros({2})};
  EXPECT_THROW((train::AdamW(ps, oc, {{{0}, 1e-3, 0}})), Error);                     // 1 missing
  EXPECT_THROW((train::AdamW(ps, oc, {{{0, 1}, 1e-3, 0}, {{1}, 1e-3, 0}})), Error);  // 1 twice
  EXPECT_THROW((train::AdamW(ps, oc, {{{0, 1, 2}, 1e-3, 0}})), Error);  // no parameter 2
  train::AdamW ok(ps, oc, {{{}, 1e-3, 0}, {{1, 0}, 1e-3, 0}});          // empty dropped
  EXPECT_EQ(ok.groups().size(), 1u);
}

// Changing the ratio on resume is a change of training, as changing lr is;
// a run whose config.yaml predates the key resumes unchanged without it.
TEST(LoraPlusResume, RatioChangeIsAConfigChange) {
  config::TrainConfig before;
  config::TrainConfig after = before;
  after.train.optimizer.loraplus_lr_ratio = 16.0;
  const auto changes = train::config_changes(config::to_yaml(before), config::to_yaml(after));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].key, "train.optimizer.loraplus_lr_ratio");
  EXPECT_EQ(changes[0].after, "16.0");

  std::string old_yaml = config::to_yaml(before);
  const size_t at = old_yaml.find("    loraplus_lr_ratio:");
  ASSERT_NE(at, std::string::npos) << old_yaml;
  old_yaml.erase(at, old_yaml.find('\n', at) + 1 - at);
  EXPECT_TRUE(train::config_changes(old_yaml, config::to_yaml(before)).empty());
  EXPECT_EQ(train::config_changes(old_yaml, config::to_yaml(after)).size(), 1u);
}

// A LoRA+ run stopped after a checkpoint and resumed from it in a fresh
// model and Trainer gives bitwise the losses and adapter of an uninterrupted
// one: the groups are rebuilt from the names, the state is per parameter.
TEST(LoraPlusResume, CheckpointThenResumeIsBitwise) {
  const std::string dir = ref_loraplus_dir() + "/llama-rope3-tied";
  const auto ref = io::read_json(dir + "/ref.json");
  config::TrainLoopConfig cfg;
  cfg.optimizer = loraplus_config(ref);
  cfg.scheduler.warmup_steps = 2;
  const size_t accum = ref.at("accum").get<size_t>();
  const auto batches = test::micro_batches(test::read_tokenized(dir + "/train.jsonl"),
                                           ref.at("micro").get<size_t>());
  constexpr int64_t kSteps = 6, kStop = 3;
  auto run_steps = [&](train::Trainer& t, int64_t from, int64_t to) {
    std::vector<double> out;
    for (int64_t s = from; s < to; ++s) {
      std::vector<train::MicroBatch> group(batches.begin() + s * accum,
                                           batches.begin() + (s + 1) * accum);
      out.push_back(t.step(group, train::StepTotals::of(group)).loss.item<double>());
    }
    return out;
  };
  model::CausalLM full = model::load_model(test::tiny_model("llama-rope3-tied"));
  test::inject_reference_lora(*full, dir);
  train::Trainer tf(*full, cfg, kSteps);
  ASSERT_EQ(tf.optimizer().groups().size(), 2u);
  const std::vector<double> want = run_steps(tf, 0, kSteps);

  lora::LoraSpec spec;
  spec.r = 8;
  spec.alpha = 16;
  spec.target_modules = {"all-linear"};
  const std::string run_dir = test::make_temp_dir("loraplus-resume");
  model::CausalLM first = model::load_model(test::tiny_model("llama-rope3-tied"));
  test::inject_reference_lora(*first, dir);
  train::Trainer t1(*first, cfg, kSteps);
  std::vector<double> got = run_steps(t1, 0, kStop);
  train::TrainState state;
  state.step = kStop;
  state.total_steps = kSteps;
  const std::string ckpt = train::save_checkpoint(run_dir, *first, spec, t1.optimizer(), state, 0);

  model::CausalLM second = model::load_model(test::tiny_model("llama-rope3-tied"));
  test::inject_reference_lora(*second, dir);
  train::Trainer t2(*second, cfg, kSteps);
  EXPECT_EQ(train::load_checkpoint(ckpt, *second, t2.optimizer()).step, kStop);
  t2.set_step_count(kStop);
  for (double l : run_steps(t2, kStop, kSteps)) got.push_back(l);
  EXPECT_EQ(got, want);
  const auto a = lora::adapter_tensors(*full);
  const auto b = lora::adapter_tensors(*second);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(a[i].second.equal(b[i].second)) << a[i].first;
}

}  // namespace
