// Training parity with PEFT + a plain PyTorch loop (tests/python/ref_train.py):
// the same initial adapter and batches give the same loss at every step and
// the same final adapter; the lr schedules equal transformers' at every step.
#include <ATen/ops/abs.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>

#include "common/test_env.h"
#include "train_test_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/lora.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"

using namespace loratune;

namespace {

class TrainParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainParity, StepLossesAndFinalAdapterMatchPeft) {
  const std::string variant = GetParam();
  const std::string dir = test::ref_train_dir() + "/" + variant;
  const auto ref = io::read_json(dir + "/ref.json");
  const auto& steps = ref.at("steps");
  ASSERT_GE(steps.size(), 16u);

  model::CausalLM m = model::load_model(test::tiny_model(variant));
  const test::ReplayErrors e = test::replay_reference_run(*m, dir, 1e-4, 1e-4);
  std::cout << variant << ": " << e.steps << " steps, max rel err loss " << e.loss << ", grad_norm "
            << e.grad_norm << ", final adapter " << e.adapter << "\n";
}

INSTANTIATE_TEST_SUITE_P(Variants, TrainParity, ::testing::ValuesIn(test::variants("train")),
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
