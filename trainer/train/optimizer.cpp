// AdamW through at::_fused_adamw_ and clip_grad_norm_ as torch.nn.utils.
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_sub.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <string>
#include <utility>
#include <vector>

#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {

namespace {

// torch.optim.AdamW(params, lr, weight_decay): one group of all `n`.
ParamGroup one_group(size_t n, const config::OptimizerConfig& cfg) {
  ParamGroup all{{}, cfg.lr, cfg.weight_decay};
  for (size_t i = 0; i < n; ++i) all.params.push_back(i);
  return all;
}

}  // namespace

std::vector<ParamGroup> adapter_param_groups(
    const std::vector<std::pair<std::string, at::Tensor>>& named,
    const config::OptimizerConfig& cfg) {
  if (!cfg.loraplus_lr_ratio) return {one_group(named.size(), cfg)};
  // create_loraplus_optimizer: groupA, (embedding: none here), groupB,
  // groupB_no_decay. Its decay set is get_parameter_names(model,
  // ALL_LAYERNORM_LAYERS) without names containing "bias".
  const double lr_b = cfg.lr * *cfg.loraplus_lr_ratio;
  ParamGroup a{{}, cfg.lr, cfg.weight_decay};
  ParamGroup b{{}, lr_b, cfg.weight_decay};
  ParamGroup b_no_decay{{}, lr_b, 0.0};
  for (size_t i = 0; i < named.size(); ++i) {
    const std::string& name = named[i].first;
    if (name.find("lora_B") != std::string::npos || named[i].second.dim() == 1) {
      (name.find("bias") != std::string::npos ? b_no_decay : b).params.push_back(i);
    } else {
      a.params.push_back(i);
    }
  }
  std::vector<ParamGroup> out;
  for (ParamGroup* g : {&a, &b, &b_no_decay}) {
    if (!g->params.empty()) out.push_back(std::move(*g));
  }
  return out;
}

AdamW::AdamW(std::vector<at::Tensor> params, const config::OptimizerConfig& cfg)
    : AdamW(params, cfg, {one_group(params.size(), cfg)}) {}

AdamW::AdamW(std::vector<at::Tensor> params, const config::OptimizerConfig& cfg,
             std::vector<ParamGroup> groups)
    : params_(std::move(params)), cfg_(cfg) {
  if (params_.empty()) throw Error("AdamW: no trainable parameters (no LoRA adapters injected?)");
  std::vector<int> seen(params_.size(), 0);
  for (ParamGroup& g : groups) {
    for (size_t i : g.params) {
      if (i >= params_.size() || seen[i]++ > 0) {
        throw Error("AdamW: parameter index " + std::to_string(i) +
                        (i >= params_.size() ? " is out of range" : " is in two param groups"),
                    ErrorKind::kInternal);
      }
    }
    if (!g.params.empty()) groups_.push_back(std::move(g));
  }
  for (size_t i = 0; i < seen.size(); ++i) {
    if (seen[i] == 0) {
      throw Error("AdamW: parameter " + std::to_string(i) + " is in no param group",
                  ErrorKind::kInternal);
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i];
    if (p.scalar_type() != at::kFloat) {
      throw Error("AdamW: parameter " + std::to_string(i) + " is " +
                  std::string(c10::toString(p.scalar_type())) + ", expected float32");
    }
    exp_avg_.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
    exp_avg_sq_.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
    // torch.optim.AdamW(fused=True): float32 0-dim step on the param's device.
    steps_.push_back(at::zeros({}, p.options().dtype(at::kFloat)));
  }
}

void AdamW::zero_grad() {
  std::vector<at::Tensor> grads;
  for (at::Tensor& p : params_) {
    if (!p.grad().defined()) {
      p.mutable_grad() = at::zeros_like(p, at::MemoryFormat::Preserve);
    } else {
      grads.push_back(p.grad());
    }
  }
  if (!grads.empty()) at::_foreach_zero_(grads);
}

void AdamW::step(double lr, const at::Tensor& found_inf) {
  if (groups_.size() != 1) {
    throw Error("AdamW: one lr given for " + std::to_string(groups_.size()) + " param groups",
                ErrorKind::kInternal);
  }
  step(std::vector<double>{lr}, found_inf);
}

void AdamW::step(const std::vector<double>& lrs, const at::Tensor& found_inf) {
  if (lrs.size() != groups_.size()) {
    throw Error("AdamW: " + std::to_string(lrs.size()) + " lrs given for " +
                    std::to_string(groups_.size()) + " param groups",
                ErrorKind::kInternal);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) {
      throw Error("AdamW: parameter " + std::to_string(i) + " has no gradient (was it used?)");
    }
  }
  // As torch.optim.adam._fused_adam: count the step first; the kernel skips
  // every update when found_inf == 1, then the count is taken back.
  at::_foreach_add_(steps_, 1);
  std::optional<at::Tensor> inf;
  if (found_inf.defined()) inf = found_inf;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& group = groups_[g];
    std::vector<at::Tensor> p, grads, m, v, steps;
    for (size_t i : group.params) {
      p.push_back(params_[i]);
      grads.push_back(params_[i].grad());
      m.push_back(exp_avg_[i]);
      v.push_back(exp_avg_sq_[i]);
      steps.push_back(steps_[i]);
    }
    at::_fused_adamw_(p, grads, m, v, /*max_exp_avg_sqs=*/{}, steps, lrs[g], cfg_.beta1, cfg_.beta2,
                      group.weight_decay, cfg_.eps, /*amsgrad=*/false,
                      /*maximize=*/false, /*grad_scale=*/std::nullopt, inf);
  }
  if (found_inf.defined()) {
    std::vector<at::Tensor> infs(steps_.size(), found_inf);
    at::_foreach_sub_(steps_, infs);
  }
}

at::Tensor clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return at::zeros({}, at::TensorOptions().dtype(at::kFloat));
  // clip_grad_norm_ with foreach: per-tensor norms, then the norm of norms.
  std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2);
  at::Tensor total = at::linalg_vector_norm(at::stack(norms), 2);  // 0-dim
  if (max_norm > 0) {
    at::Tensor coef = at::clamp(max_norm / (total + 1e-6), std::nullopt, 1.0);
    at::_foreach_mul_(grads, coef);
  }
  return total;
}

}  // namespace loratune::train
