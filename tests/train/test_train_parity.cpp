// Training parity with PEFT + a plain PyTorch loop (tests/python/ref_train.py):
// the same initial adapter and batches give the same loss at every step and
// the same final adapter; the lr schedules equal transformers' at every step.
#include <ATen/ops/abs.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>

#include "train_test_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"

using namespace loratune;

namespace {

double rel_err(double got, double want) {
  return std::abs(got - want) / std::max(std::abs(want), 1e-12);
}

class TrainParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainParity, StepLossesAndFinalAdapterMatchPeft) {
  const std::string variant = GetParam();
  const std::string dir = test::ref_train_dir() + "/" + variant;
  const auto ref = io::read_json(dir + "/ref.json");
  const auto& steps = ref.at("steps");
  ASSERT_GE(steps.size(), 16u);

  model::CausalLM m = model::load_model(test::tiny_model(variant));
  lora::LoraSpec spec;
  spec.r = 8;
  spec.alpha = 16;
  spec.dropout = 0.0;
  spec.target_modules = {"all-linear"};
  lora::inject_lora(*m, spec);
  lora::load_adapter_weights(dir + "/init_adapter", *m);

  config::TrainLoopConfig cfg;
  cfg.optimizer.lr = ref.at("lr").get<double>();
  cfg.optimizer.weight_decay = ref.at("weight_decay").get<double>();
  cfg.scheduler.name = config::SchedulerName::kCosine;
  cfg.scheduler.warmup_steps = ref.at("warmup").get<int64_t>();
  cfg.max_grad_norm = 1.0;
  const size_t accum = ref.at("accum").get<size_t>();
  train::Trainer trainer(*m, cfg, static_cast<int64_t>(steps.size()));

  auto batches = test::micro_batches(test::read_tokenized(dir + "/train.jsonl"),
                                     ref.at("micro").get<size_t>());
  ASSERT_EQ(batches.size(), steps.size() * accum);
  double worst_loss = 0, worst_norm = 0;
  for (size_t s = 0; s < steps.size(); ++s) {
    std::vector<train::MicroBatch> group(batches.begin() + s * accum,
                                         batches.begin() + (s + 1) * accum);
    train::StepResult r = trainer.step(group);
    const double loss = r.loss.item<double>();
    const double want = steps[s].at("loss").get<double>();
    EXPECT_EQ(r.target_tokens, steps[s].at("targets").get<int64_t>()) << "step " << s;
    EXPECT_EQ(r.lr, steps[s].at("lr").get<double>()) << "step " << s;
    EXPECT_EQ(r.found_inf.item<float>(), 0.0f);
    EXPECT_LE(rel_err(loss, want), 1e-4) << "step " << s << ": " << loss << " vs " << want;
    worst_loss = std::max(worst_loss, rel_err(loss, want));
    worst_norm = std::max(
        worst_norm, rel_err(r.grad_norm.item<double>(), steps[s].at("grad_norm").get<double>()));
  }
  auto fin = io::SafetensorsFile::open(dir + "/final_adapter/adapter_model.safetensors");
  double worst_tensor = 0;
  auto ours = lora::adapter_tensors(*m);
  ASSERT_EQ(ours.size(), fin->tensors().size());
  for (const auto& [name, t] : ours) {
    ASSERT_TRUE(fin->contains(name)) << name;
    at::Tensor want = fin->tensor(name);
    const double err =
        (t - want).abs().max().item<double>() / std::max(want.abs().max().item<double>(), 1e-12);
    EXPECT_LE(err, 1e-4) << name;
    worst_tensor = std::max(worst_tensor, err);
  }
  std::cout << variant << ": " << steps.size() << " steps, max rel err loss " << worst_loss
            << ", grad_norm " << worst_norm << ", final adapter " << worst_tensor << "\n";
}

INSTANTIATE_TEST_SUITE_P(Variants, TrainParity,
                         ::testing::Values("llama-rope3-tied", "qwen2", "qwen3"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(Schedule, EqualsTransformersAtEveryStep) {
  const auto cases = io::read_json(test::ref_train_dir() + "/schedules.json");
  ASSERT_GE(cases.size(), 15u);
  for (const auto& c : cases) {
    config::SchedulerConfig sc;
    const std::string name = c.at("name");
    sc.name = name == "constant" ? config::SchedulerName::kConstant
              : name == "linear" ? config::SchedulerName::kLinear
                                 : config::SchedulerName::kCosine;
    sc.warmup_steps = c.at("warmup").get<int64_t>();
    train::LrSchedule s(sc, c.at("lr").get<double>(), c.at("total").get<int64_t>());
    const auto& lrs = c.at("lrs");
    for (size_t k = 0; k < lrs.size(); ++k) {
      EXPECT_EQ(s.lr_at(static_cast<int64_t>(k)), lrs[k].get<double>())
          << name << " warmup " << sc.warmup_steps.value() << " step " << k;
    }
  }
}

TEST(Schedule, WarmupRatioRoundsUpAsTheHfTrainer) {
  config::SchedulerConfig sc;
  sc.warmup_ratio = 0.1;
  EXPECT_EQ(train::warmup_steps(sc, 16), 2);  // ceil(1.6)
  sc.warmup_ratio = 0.03;
  EXPECT_EQ(train::warmup_steps(sc, 100), 3);
  sc.warmup_ratio = 0.0;
  EXPECT_EQ(train::warmup_steps(sc, 100), 0);
}

}  // namespace
