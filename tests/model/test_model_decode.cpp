// Incremental decoding with the KV cache and packed sequences give the logits
// of plain full forwards (float32, 1e-5), on every tiny variant (the window
// variants with sequences longer than their windows).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cstdio>

#include "common/test_env.h"
#include "model/model_test_util.h"
#include "trainer/io/error.h"
#include "trainer/model/loader.h"

namespace loratune::test {
namespace {

constexpr double kTol = 1e-5;

at::Tensor random_ids(int64_t vocab, int64_t n, int64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return at::randint(3, vocab, {1, n}, g, at::TensorOptions().dtype(at::kLong));  // [1,n]
}

class Decode : public ::testing::TestWithParam<std::string> {};

TEST_P(Decode, PrefillThenIncrementalDecodeEqualsFullForward) {
  torch::NoGradGuard no_grad;
  model::CausalLM lm = model::load_model(tiny_model_dir(GetParam()));
  const auto& c = lm->config();
  const int64_t n = 120;  // longer than every window of the variants (48, 64)
  at::Tensor ids = random_ids(c.vocab_size, n, 11);  // [1,n]
  at::Tensor full = lm->forward(ids);                // [1,n,V]

  model::KVCache cache(c, 1, n, at::TensorOptions().dtype(lm->dtype()));
  model::ForwardOptions opt;
  opt.cache = &cache;
  std::vector<at::Tensor> parts;
  // Prefill 70, one chunk of 20 with a non-empty cache, then token by token.
  parts.push_back(lm->forward(ids.narrow(1, 0, 70), opt));
  parts.push_back(lm->forward(ids.narrow(1, 70, 20), opt));
  for (int64_t i = 90; i < n; ++i) parts.push_back(lm->forward(ids.narrow(1, i, 1), opt));
  EXPECT_EQ(cache.length, n);
  const double diff = max_abs_diff(at::cat(parts, 1), full);
  std::printf("%-20s kv-cache decode max|diff| = %.3g\n", GetParam().c_str(), diff);
  EXPECT_LE(diff, kTol);
  // A full cache refuses more tokens.
  EXPECT_THROW(lm->forward(ids.narrow(1, 0, 1), opt), Error);
}

TEST_P(Decode, PackedSegmentsEqualSeparateRuns) {
  torch::NoGradGuard no_grad;
  model::CausalLM lm = model::load_model(tiny_model_dir(GetParam()));
  const auto& c = lm->config();
  const int64_t la = 90, lb = 40;
  at::Tensor a = random_ids(c.vocab_size, la, 21);  // [1,la]
  at::Tensor b = random_ids(c.vocab_size, lb, 22);  // [1,lb]
  auto lopt = at::TensorOptions().dtype(at::kLong);
  model::ForwardOptions opt;
  opt.segment_ids =
      at::cat({at::full({1, la}, 0, lopt), at::full({1, lb}, 1, lopt)}, 1);  // [1,la+lb]
  opt.position_ids =
      at::cat({at::arange(la, lopt), at::arange(lb, lopt)}).unsqueeze(0);  // [1,la+lb]
  at::Tensor packed = lm->forward(at::cat({a, b}, 1), opt);                // [1,la+lb,V]
  const double da = max_abs_diff(packed.narrow(1, 0, la), lm->forward(a));
  const double db = max_abs_diff(packed.narrow(1, la, lb), lm->forward(b));
  std::printf("%-20s packing max|diff| = %.3g, %.3g\n", GetParam().c_str(), da, db);
  EXPECT_LE(da, kTol);
  EXPECT_LE(db, kTol);
}

TEST_P(Decode, SegmentIdsWithCacheAreRejected) {
  model::CausalLM lm = model::load_model(tiny_model_dir(GetParam()));
  model::KVCache cache(lm->config(), 1, 8, at::TensorOptions());
  model::ForwardOptions opt;
  opt.cache = &cache;
  opt.segment_ids = at::zeros({1, 4}, at::TensorOptions().dtype(at::kLong));
  EXPECT_THROW(lm->forward(random_ids(lm->config().vocab_size, 4, 1), opt), Error);
}

INSTANTIATE_TEST_SUITE_P(Variants, Decode, ::testing::ValuesIn(test::variants("decode")),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace loratune::test
