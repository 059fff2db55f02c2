// One optimizer step: accumulation over micro-batches, the data-parallel
// all-reduce, clipping, AdamW.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/logical_and.h>
#include <ATen/ops/zeros.h>

#include <mutex>

#include "trainer/dist/dist.h"
#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {

Trainer::Trainer(model::CausalLMImpl& model, const config::TrainLoopConfig& cfg,
                 int64_t total_steps, dist::Group* group)
    : model_(model),
      cfg_(cfg),
      opt_(lora::adapter_parameters(model), cfg.optimizer,
           adapter_param_groups(lora::adapter_tensors(model), cfg.optimizer)),
      sched_(cfg.scheduler, cfg.optimizer.lr, total_steps),
      group_(group) {
  // LambdaLR: each group's lr is its own base lr times the common lambda.
  for (const ParamGroup& g : opt_.groups())
    group_sched_.emplace_back(cfg.scheduler, g.lr, total_steps);
  if (group_ == nullptr) return;
  // The gradients as views into one buffer: backward accumulates into them in
  // place, and a single all-reduce covers them all plus two scalars.
  for (const at::Tensor& p : opt_.params()) {
    if (p.scalar_type() != at::kFloat) {
      throw Error("data parallel: adapter parameter of dtype " +
                      std::string(c10::toString(p.scalar_type())) + " (float32 expected)",
                  ErrorKind::kInternal);
    }
    grad_numel_ += p.numel();
  }
  flat_ = at::zeros({grad_numel_ + 2}, opt_.params()[0].options());
  int64_t offset = 0;
  for (const at::Tensor& p : opt_.params()) {
    at::Tensor param = p;
    param.mutable_grad() = flat_.narrow(0, offset, p.numel()).view(p.sizes());
    offset += p.numel();
  }
}

StepTotals StepTotals::of(const std::vector<MicroBatch>& micro) {
  StepTotals totals;
  for (const MicroBatch& mb : micro) {
    totals.target_tokens += mb.target_tokens;
    totals.tokens += mb.tokens;
  }
  return totals;
}

namespace {

// splitmix64's finaliser: a well-mixed 64-bit value of x.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Reseeds the default generator of `device` (where dropout draws its masks).
void reseed(const c10::Device& device, uint64_t seed) {
  at::Generator gen = device.is_cpu() ? at::detail::getDefaultCPUGenerator()
                                      : at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
}

}  // namespace

StepResult Trainer::step(const std::vector<MicroBatch>& micro, const StepTotals& totals,
                         bool stop_request) {
  if (micro.empty() && group_ == nullptr) throw Error("train step: no micro-batches");
  StepResult r;
  // The denominator is the target count of the whole step, known before any
  // backward pass (host ints: the loader counted them, no device sync).
  r.target_tokens = totals.target_tokens;
  r.tokens = totals.tokens;
  if (r.target_tokens == 0) {
    throw Error("train step " + std::to_string(step_ + 1) + ": the batch holds no target tokens");
  }
  model_.train();
  at::AutoGradMode grad_on(true);
  opt_.zero_grad();
  const double n = static_cast<double>(r.target_tokens);
  at::Tensor loss_acc = at::zeros({}, opt_.params()[0].options().dtype(at::kFloat));
  for (const MicroBatch& mb : micro) {
    if (dropout_seed_) {
      reseed(opt_.params()[0].device(),
             mix64(mix64(mix64(*dropout_seed_) ^ static_cast<uint64_t>(step_)) ^
                   static_cast<uint64_t>(mb.index)));
    }
    at::Tensor loss =
        micro_batch_loss_sum(model_, mb, cfg_.gradient_checkpointing) / n;  // 0-dim float32
    loss.backward();
    loss_acc.add_(loss.detach());
  }
  if (group_ != nullptr) {
    flat_[grad_numel_].copy_(loss_acc);
    flat_[grad_numel_ + 1].fill_(stop_request ? 1.0 : 0.0);
    group_->all_reduce_sum(flat_);
    loss_acc = flat_[grad_numel_].clone();
    r.stop_requests = flat_[grad_numel_ + 1].clone();
  }
  r.loss = loss_acc;
  r.grad_norm = clip_grad_norm(opt_.params(), cfg_.max_grad_norm);
  // Skip (no update) when the loss or any gradient is not finite.
  r.found_inf = at::logical_and(at::isfinite(loss_acc), at::isfinite(r.grad_norm))
                    .logical_not()
                    .to(at::kFloat);
  r.lr = sched_.lr_at(step_);
  for (const LrSchedule& s : group_sched_) r.group_lrs.push_back(s.lr_at(step_));
  opt_.step(r.group_lrs, r.found_inf);
  opt_.zero_grad();
  ++step_;
  return r;
}

}  // namespace loratune::train
