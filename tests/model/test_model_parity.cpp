// The decoder against transformers (eager attention) on every tiny variant:
// float32 logits within 1e-4, bfloat16 argmax agreement, a left-padded batch.
#include <ATen/TensorIndexing.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cstdio>
#include <filesystem>
#include <set>

#include "common/test_env.h"
#include "model/model_test_util.h"
#include "trainer/model/loader.h"

namespace loratune::test {
namespace {

constexpr double kF32Tol = 1e-4;
constexpr double kBf16Agreement = 0.99;     // positions with a clear winner
constexpr double kBf16AgreementAll = 0.93;  // every position
constexpr double kMargin = 0.05;            // f32 top-2 logit margin of a "clear winner"
constexpr double kBf16MaxDiff = 0.25;       // transformers' bf16 vs its f32: ~0.1 here
const int64_t kLengths[] = {1, 17, 300};

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, Float32LogitsMatchTransformers) {
  torch::NoGradGuard no_grad;
  const std::string v = GetParam();
  model::CausalLM lm = model::load_model(tiny_model_dir(v));
  for (int64_t t : kLengths) {
    at::Tensor ids = ref_tensor(v, "ids_" + std::to_string(t)).unsqueeze(0);  // [1,T]
    at::Tensor got = lm->forward(ids)[0];                                     // [T,V]
    at::Tensor want = ref_tensor(v, "f32_" + std::to_string(t));              // [T,V]
    ASSERT_EQ(got.sizes(), want.sizes());
    const double diff = max_abs_diff(got, want);
    std::printf("%-20s f32  T=%-4lld max|diff| = %.3g\n", v.c_str(), static_cast<long long>(t),
                diff);
    EXPECT_LE(diff, kF32Tol) << v << " T=" << t;
  }
}

// Random tiny models have many near-ties between the top two logits, and two
// correct bfloat16 implementations break those differently (transformers' own
// sdpa and eager bf16 agree on only ~96% of argmaxes here). So agreement is
// required on the positions whose float32 top-2 margin is at least kMargin,
// well above bf16 noise; every position must agree on most of the rest and the
// logits must stay within kBf16MaxDiff.
TEST_P(Parity, BFloat16ArgmaxMatchesTransformers) {
  torch::NoGradGuard no_grad;
  const std::string v = GetParam();
  model::CausalLM lm = model::load_model(tiny_model_dir(v), {at::kBFloat16, "cpu"});
  ASSERT_EQ(lm->dtype(), at::kBFloat16);
  int64_t rows = 0, decisive = 0;
  double agree = 0, agree_decisive = 0, worst = 0;
  for (int64_t t : kLengths) {
    at::Tensor ids = ref_tensor(v, "ids_" + std::to_string(t)).unsqueeze(0);  // [1,T]
    at::Tensor got = lm->forward(ids)[0];                                     // [T,V] bf16
    ASSERT_EQ(got.scalar_type(), at::kBFloat16);
    at::Tensor want = ref_tensor(v, "bf16_" + std::to_string(t));                          // [T,V]
    at::Tensor top2 = std::get<0>(ref_tensor(v, "f32_" + std::to_string(t)).topk(2, -1));  // [T,2]
    at::Tensor clear = (top2.select(1, 0) - top2.select(1, 1)) >= kMargin;                 // [T]
    at::Tensor same = got.to(at::kFloat).argmax(-1).eq(want.argmax(-1));                   // [T]
    agree += same.sum().item<int64_t>();
    agree_decisive += (same & clear).sum().item<int64_t>();
    decisive += clear.sum().item<int64_t>();
    rows += t;
    worst = std::max(worst, max_abs_diff(got, want));
  }
  std::printf(
      "%-20s bf16 argmax agreement %.4f over %lld positions, %.4f over the %lld with "
      "margin >= %.2f; max|diff| = %.3g\n",
      v.c_str(), agree / rows, static_cast<long long>(rows), agree_decisive / decisive,
      static_cast<long long>(decisive), kMargin, worst);
  ASSERT_GE(decisive, rows / 2) << "too few decisive positions for a meaningful check";
  EXPECT_GE(agree_decisive / decisive, kBf16Agreement) << v;
  EXPECT_GE(agree / rows, kBf16AgreementAll) << v;
  EXPECT_LE(worst, kBf16MaxDiff) << v;
}

TEST_P(Parity, LeftPaddedBatchMatchesTransformersAndUnpadded) {
  torch::NoGradGuard no_grad;
  const std::string v = GetParam();
  model::CausalLM lm = model::load_model(tiny_model_dir(v));
  at::Tensor ids = ref_tensor(v, "pad_ids");    // [2,P]
  at::Tensor mask = ref_tensor(v, "pad_mask");  // [2,P]
  model::ForwardOptions opt;
  opt.attention_mask = mask;
  opt.position_ids = ref_tensor(v, "pad_pos");
  at::Tensor got = lm->forward(ids, opt);      // [2,P,V]
  at::Tensor want = ref_tensor(v, "pad_f32");  // [2,P,V]
  at::Tensor keep = mask.to(at::kBool);        // [2,P]
  const double diff = max_abs_diff(got.index({keep}), want.index({keep}));
  std::printf("%-20s padded batch max|diff| = %.3g\n", v.c_str(), diff);
  EXPECT_LE(diff, kF32Tol);
  // The padded row's real tokens give the logits of that sequence alone.
  const int64_t pad = (mask[1] == 0).sum().item<int64_t>();
  ASSERT_GT(pad, 0);
  at::Tensor alone = lm->forward(ids[1].narrow(0, pad, ids.size(1) - pad).unsqueeze(0))[0];
  EXPECT_LE(max_abs_diff(got[1].narrow(0, pad, ids.size(1) - pad), alone), kF32Tol);
}

INSTANTIATE_TEST_SUITE_P(Variants, Parity, ::testing::ValuesIn(tiny_variants()),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) {
                             if (c == '-') c = '_';
                           }
                           return n;
                         });

// Every variant the fixture writes is checked above.
TEST(ParityCoverage, EveryTinyModelIsAVariantUnderTest) {
  std::set<std::string> listed(tiny_variants().begin(), tiny_variants().end());
  int found = 0;
  for (const auto& e : std::filesystem::directory_iterator(testdata_dir() + "/models")) {
    if (!std::filesystem::exists(e.path() / "config.json")) continue;
    ++found;
    EXPECT_TRUE(listed.count(e.path().filename().string())) << e.path();
  }
  EXPECT_GE(found, static_cast<int>(listed.size()));
}

}  // namespace
}  // namespace loratune::test
