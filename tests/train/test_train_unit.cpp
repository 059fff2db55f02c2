// Pieces of the training loop: loss shifting and counting, clipping, AdamW
// against the torch.optim.AdamW formula, skipped non-finite steps, and
// activation checkpointing (same gradients with dropout on, less memory).
#include <ATen/Context.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>

#include <malloc.h>

#include <cmath>
#include <fstream>
#include <iostream>

#include "train_test_util.h"
#include "trainer/config/config.h"
#include "trainer/lora/lora.h"
#include "trainer/model/loader.h"

using namespace loratune;

namespace {

TEST(Loss, ShiftsLabelsAndIgnoresMinus100) {
  at::Tensor labels = at::tensor({5, -100, 3, 7, -100, -100, 2, 1}, at::kLong).view({2, 4});
  EXPECT_EQ(train::count_target_tokens(labels), 4);  // first column never counts
  at::Tensor logits = at::randn({2, 4, 9});
  at::Tensor got = train::token_loss_sum(logits, labels);
  // By hand: position t predicts labels[t+1].
  double want = 0;
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < 3; ++t) {
      const int64_t y = labels[b][t + 1].item<int64_t>();
      if (y == -100) continue;
      want += at::cross_entropy_loss(logits[b][t].unsqueeze(0), at::tensor({y}, at::kLong))
                  .item<double>();
    }
  }
  EXPECT_NEAR(got.item<double>(), want, 1e-5);
}

// The fused projection + loss applies the model's output head (weight and
// final soft-cap) exactly as CausalLM::logits + token_loss_sum do: the same
// sum and the same gradient w.r.t. the hidden states; a soft-cap that bites
// changes both, so dropping it could not pass.
TEST(Loss, FusedLossAppliesTheOutputHeadSoftcap) {
  at::manual_seed(5);
  at::Tensor labels = at::tensor({5, -100, 3, 7, 9, -100, 2, 1, 4, 10}, at::kLong).view({2, 5});
  const int64_t targets = train::count_target_tokens(labels);
  at::Tensor weight = at::randn({11, 8}) * 2;  // [V,D], logits of a few units
  for (const double cap : {0.0, 1.5}) {
    SCOPED_TRACE(cap);
    const model::OutputHead head{weight, cap};
    at::Tensor h1 = at::randn({2, 5, 8}, at::kFloat).requires_grad_(true);  // [B,T,D]
    at::Tensor h2 = h1.detach().clone().requires_grad_(true);
    at::Tensor fused = train::linear_loss_sum(h1, head, labels, targets);
    at::Tensor plain = train::token_loss_sum(head.transform(at::linear(h2, weight)), labels);
    fused.backward();
    plain.backward();
    EXPECT_NEAR(fused.item<double>(), plain.item<double>(), 1e-5);
    EXPECT_LE((h1.grad() - h2.grad()).abs().max().item<double>(),
              1e-6 * (1 + h2.grad().abs().max().item<double>() * 10));
    if (cap > 0) {
      at::Tensor uncapped = train::token_loss_sum(at::linear(h2.detach(), weight), labels);
      EXPECT_GT(std::abs(uncapped.item<double>() - fused.item<double>()), 1e-2);
    }
  }
}

TEST(Optimizer, ClipGradNormReturnsPreClipNormAndClips) {
  at::Tensor a = at::zeros({2}).requires_grad_(true), b = at::zeros({1}).requires_grad_(true);
  a.mutable_grad() = at::tensor({3.0f, 0.0f});
  b.mutable_grad() = at::tensor({4.0f});
  at::Tensor n = train::clip_grad_norm({a, b}, 1.0);
  EXPECT_FLOAT_EQ(n.item<float>(), 5.0f);
  EXPECT_NEAR(a.grad()[0].item<float>(), 3.0 / (5.0 + 1e-6), 1e-7);
  EXPECT_NEAR(b.grad()[0].item<float>(), 4.0 / (5.0 + 1e-6), 1e-7);
  // Below max_norm nothing changes.
  at::Tensor n2 = train::clip_grad_norm({a, b}, 10.0);
  EXPECT_NEAR(n2.item<float>(), 1.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<float>(), 3.0 / (5.0 + 1e-6), 1e-7);
}

TEST(Optimizer, AdamWMatchesTorchFormulaAndSkipsOnFoundInf) {
  config::OptimizerConfig oc;
  oc.weight_decay = 0.1;
  at::Tensor p = at::randn({3, 4}).requires_grad_(true);
  at::Tensor ref = p.detach().clone(), m = at::zeros_like(ref), v = at::zeros_like(ref);
  train::AdamW opt({p}, oc);
  for (int k = 1; k <= 3; ++k) {
    at::Tensor g = at::randn({3, 4});
    p.mutable_grad() = g.clone();
    const double lr = 0.01 * k;
    opt.step(lr);
    // torch.optim.adamw single-tensor path
    ref.mul_(1 - lr * oc.weight_decay);
    m.lerp_(g, 1 - oc.beta1);
    v.mul_(oc.beta2).addcmul_(g, g, 1 - oc.beta2);
    const double bc1 = 1 - std::pow(oc.beta1, k), bc2 = 1 - std::pow(oc.beta2, k);
    at::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(oc.eps);
    ref.addcdiv_(m, denom, -lr / bc1);
    EXPECT_LE((p.detach() - ref).abs().max().item<double>(), 1e-6) << "step " << k;
  }
  EXPECT_EQ(opt.steps()[0].item<float>(), 3.0f);
  at::Tensor before = p.detach().clone();
  p.mutable_grad() = at::randn({3, 4});
  opt.step(0.5, at::ones({}));  // found_inf: nothing moves
  EXPECT_TRUE(p.detach().equal(before));
  EXPECT_EQ(opt.steps()[0].item<float>(), 3.0f);
}

// Sum of a decoder stack's output for `ids` with every LoRA layer's dropout
// drawing from a seeded generator; with `ckpt`, each layer checkpointed.
at::Tensor stack_loss(model::CausalLMImpl& m, const at::Tensor& ids, bool ckpt) {
  const auto& cfg = m.config();
  auto* dec = m.model.get();
  at::Tensor x = dec->embed_tokens->forward(ids);  // [B,T,D]
  model::Rotary rot(cfg, m.device());
  at::Tensor pos = at::arange(ids.size(1), at::kLong).unsqueeze(0).expand({ids.size(0), -1});
  model::LayerContext ctx;
  std::tie(ctx.cos, ctx.sin) = rot.cos_sin(pos, x.scalar_type());
  model::AttentionMask mask;
  mask.is_causal = true;
  for (size_t l = 0; l < dec->layers->size(); ++l) {
    auto layer = dec->layers->ptr<model::DecoderLayerImpl>(l);
    // By value: backward runs fn after this function returned.
    auto fn = [layer, ctx, mask](const at::Tensor& h) { return layer->forward(h, ctx, mask); };
    if (ckpt) {
      std::vector<at::Tensor> params;
      for (const auto& p : layer->parameters()) {
        if (p.requires_grad()) params.push_back(p);
      }
      x = train::checkpointed(fn, x, params);
    } else {
      x = fn(x);
    }
  }
  return dec->norm->forward(x).pow(2).sum();
}

long rss_kb() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * 4;  // 4 KiB pages
}

TEST(ActivationCheckpoint, SameGradientsWithDropoutAndLessMemory) {
  model::CausalLM m = model::load_model(test::tiny_model("llama-rope3-tied"));
  lora::LoraSpec spec;
  spec.dropout = 0.3;
  spec.target_modules = {"all-linear"};
  lora::inject_lora(*m, spec);
  auto params = lora::adapter_parameters(*m);
  for (auto& p : params) p.detach().normal_(0, 0.05);  // B nonzero: every grad is nonzero
  m->train();
  at::Tensor ids = at::randint(3, m->config().vocab_size, {2, 16}, at::kLong);
  std::vector<std::vector<at::Tensor>> grads(2);
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    for (auto& p : params) p.mutable_grad() = at::Tensor();
    at::manual_seed(11);
    stack_loss(*m, ids, ckpt == 1).backward();
    for (auto& p : params) {
      ASSERT_TRUE(p.grad().defined()) << "a LoRA parameter got no gradient (ckpt=" << ckpt << ")";
      grads[ckpt].push_back(p.grad().clone());
    }
  }
  double worst = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    worst = std::max(worst, (grads[0][i] - grads[1][i]).abs().max().item<double>());
  }
  std::cout << "max |grad(ckpt) - grad(plain)| = " << worst << " over " << params.size()
            << " LoRA tensors\n";
  EXPECT_LE(worst, 1e-6);
  EXPECT_GT(grads[0][0].abs().max().item<double>(), 0.0);

  // Memory held between forward and backward: RSS growth across the forward
  // pass of a long batch (the SDPA math path keeps [B,H,T,T] per layer).
  at::Tensor big = at::randint(3, m->config().vocab_size, {4, 768}, at::kLong);
  long grow[2];
  for (int ckpt = 1; ckpt >= 0; --ckpt) {  // checkpointed first: nothing cached yet
    malloc_trim(0);                        // give freed memory back so RSS starts from what is live
    const long before = rss_kb();
    at::Tensor loss = stack_loss(*m, big, ckpt == 1);
    grow[ckpt] = rss_kb() - before;
    loss.backward();
  }
  std::cout << "activation memory kept by the forward pass (RSS growth): " << grow[0] / 1024.0
            << " MiB without checkpointing, " << grow[1] / 1024.0 << " MiB with ("
            << m->config().num_hidden_layers << " layers, B=4, T=768)\n";
#if defined(__SANITIZE_ADDRESS__)
  // ASan's quarantine keeps freed memory resident, so RSS growth says nothing
  // about what the forward pass keeps (scripts/sanitize.sh builds).
  std::cout << "(RSS comparison skipped under AddressSanitizer)\n";
#else
  EXPECT_LT(grow[1], grow[0]);
#endif
}

// forward_checkpointed builds the same inputs as DecoderModelImpl::forward:
// equal logits with padding, with packing, and with a sliding window.
TEST(ActivationCheckpoint, ForwardEqualsModelForward) {
  for (const std::string variant :
       {"llama-rope3-tied", "qwen2-window", "qwen3", "gemma2", "gemma3"}) {
    SCOPED_TRACE(variant);
    model::CausalLM m = model::load_model(test::tiny_model(variant));
    at::Tensor ids = at::randint(3, m->config().vocab_size, {2, 40}, at::kLong);
    at::Tensor mask = at::ones({2, 40}, at::kLong);
    mask[1].slice(0, 25).zero_();
    at::Tensor seg = at::ones({2, 40}, at::kLong);
    seg[0].slice(0, 17).fill_(2);
    at::Tensor pos = at::arange(40, at::kLong).unsqueeze(0).repeat({2, 1});
    pos[0].slice(0, 17).copy_(at::arange(23, at::kLong));
    model::ForwardOptions plain, padded, packed;
    padded.attention_mask = mask;
    packed.segment_ids = seg;
    packed.position_ids = pos;
    for (const auto* o : {&plain, &padded, &packed}) {
      at::Tensor want = m->forward(ids, *o);
      at::Tensor got = train::forward_checkpointed(*m, ids, *o);
      EXPECT_TRUE(got.equal(want)) << (got - want).abs().max().item<double>();
    }
  }
}

// A Trainer with train.gradient_checkpointing gives the same step losses
// and parameters as one without (dropout on, same seed).
TEST(ActivationCheckpoint, TrainerStepsMatch) {
  std::vector<std::vector<double>> losses(2);
  std::vector<std::vector<at::Tensor>> finals(2);
  for (int ckpt = 0; ckpt < 2; ++ckpt) {
    model::CausalLM m = model::load_model(test::tiny_model("qwen3"));
    at::manual_seed(5);
    lora::LoraSpec spec;
    spec.target_modules = {"all-linear"};
    spec.dropout = 0.2;
    lora::inject_lora(*m, spec);
    config::TrainLoopConfig cfg;
    cfg.optimizer.lr = 1e-2;
    cfg.gradient_checkpointing = ckpt == 1;
    train::Trainer tr(*m, cfg, 4);
    data::Sequence a, b;
    for (int t = 0; t < 14; ++t) {
      a.input_ids.push_back(5 + 3 * t);
      a.labels.push_back(t < 4 ? -100 : 5 + 3 * t);
      a.position_ids.push_back(t);
      a.segment_ids.push_back(1);
      if (t < 9) {
        b.input_ids.push_back(900 - 5 * t);
        b.labels.push_back(900 - 5 * t);
        b.position_ids.push_back(t);
        b.segment_ids.push_back(1);
      }
    }
    auto mb = test::micro_batches({a, b, b, a}, 2);
    for (int s = 0; s < 4; ++s) {
      losses[ckpt].push_back(tr.step(mb, train::StepTotals::of(mb)).loss.item<double>());
    }
    for (auto& p : tr.optimizer().params()) finals[ckpt].push_back(p.detach().clone());
  }
  for (int s = 0; s < 4; ++s) EXPECT_NEAR(losses[0][s], losses[1][s], 1e-6) << "step " << s;
  double worst = 0;
  for (size_t i = 0; i < finals[0].size(); ++i) {
    worst = std::max(worst, (finals[0][i] - finals[1][i]).abs().max().item<double>());
  }
  std::cout << "trainer with/without checkpointing: max |param diff| after 4 steps " << worst
            << "\n";
  EXPECT_LE(worst, 1e-6);
}

TEST(TrainerStep, NonFiniteStepIsSkippedWithoutMovingParameters) {
  model::CausalLM m = model::load_model(test::tiny_model("qwen2"));
  lora::LoraSpec spec;
  spec.target_modules = {"all-linear"};
  spec.dropout = 0.0;
  lora::inject_lora(*m, spec);
  config::TrainLoopConfig cfg;
  cfg.optimizer.lr = 1e30;
  cfg.scheduler.name = config::SchedulerName::kConstant;
  cfg.scheduler.warmup_steps = 0;
  cfg.max_grad_norm = 0;
  train::Trainer tr(*m, cfg, 10);
  data::Sequence s;
  for (int t = 0; t < 12; ++t) {
    s.input_ids.push_back(3 + t * 7);
    s.labels.push_back(3 + t * 7);
    s.position_ids.push_back(t);
    s.segment_ids.push_back(1);
  }
  auto mb = test::micro_batches({s, s}, 2);
  auto r1 = tr.step(mb, train::StepTotals::of(mb));
  EXPECT_EQ(r1.found_inf.item<float>(), 0.0f);
  std::vector<at::Tensor> after1;
  for (auto& p : tr.optimizer().params()) after1.push_back(p.detach().clone());
  auto r2 = tr.step(mb, train::StepTotals::of(mb));
  EXPECT_FALSE(std::isfinite(r2.loss.item<double>()));
  EXPECT_EQ(r2.found_inf.item<float>(), 1.0f);
  for (size_t i = 0; i < after1.size(); ++i) {
    EXPECT_TRUE(tr.optimizer().params()[i].detach().equal(after1[i]));
  }
  EXPECT_EQ(tr.optimizer().steps()[0].item<float>(), 1.0f);
  EXPECT_EQ(tr.step_count(), 2);
}

}  // namespace

// A key the run's config.yaml lacks (added to loratune after the run started)
// is no change at its default, and a change at any other value.
TEST(ResumeConfig, AKeyAbsentFromTheRunIsNoChangeAtItsDefault) {
  using namespace loratune;
  const std::string now = config::to_yaml(config::TrainConfig{});
  std::string old;
  for (size_t pos = 0; pos < now.size();) {
    size_t nl = now.find('\n', pos);
    if (nl == std::string::npos) nl = now.size();
    const std::string line = now.substr(pos, nl - pos);
    if (line.rfind("seed:", 0) != 0) old += line + "\n";
    pos = nl + 1;
  }
  ASSERT_NE(old.size(), now.size()) << "no top-level seed line in:\n" << now;
  EXPECT_TRUE(train::config_changes(old, now).empty());
  config::TrainConfig changed;
  changed.seed = 7;
  const auto c = train::config_changes(old, config::to_yaml(changed));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].key, "seed");
  EXPECT_EQ(c[0].before, "(absent)");
  EXPECT_EQ(c[0].after, "7");
}
