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

#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {

AdamW::AdamW(std::vector<at::Tensor> params, const config::OptimizerConfig& cfg)
    : params_(std::move(params)), cfg_(cfg) {
  if (params_.empty()) throw Error("AdamW: no trainable parameters (no LoRA adapters injected?)");
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
  std::vector<at::Tensor> grads;
  grads.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) {
      throw Error("AdamW: parameter " + std::to_string(i) + " has no gradient (was it used?)");
    }
    grads.push_back(params_[i].grad());
  }
  // As torch.optim.adam._fused_adam: count the step first; the kernel skips
  // every update when found_inf == 1, then the count is taken back.
  at::_foreach_add_(steps_, 1);
  std::optional<at::Tensor> inf;
  if (found_inf.defined()) inf = found_inf;
  at::_fused_adamw_(params_, grads, exp_avg_, exp_avg_sq_, /*max_exp_avg_sqs=*/{}, steps_, lr,
                    cfg_.beta1, cfg_.beta2, cfg_.weight_decay, cfg_.eps, /*amsgrad=*/false,
                    /*maximize=*/false, /*grad_scale=*/std::nullopt, inf);
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
