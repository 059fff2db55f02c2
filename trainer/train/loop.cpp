// One optimizer step: accumulation over micro-batches, the data-parallel
// all-reduce (bucketed, overlapped with backward), clipping, AdamW.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/logical_and.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/function.h>  // Node (torch 2.11 has no node.h)
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>

#include "trainer/dist/dist.h"
#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {

// The data-parallel sum of the flat gradient buffer, in buckets.
//
// flat = [grads of params in order | loss | stop requests]. Backward makes
// the last layers' gradients first, so the buckets are cut from the end of
// the buffer: bucket 0 holds the two scalars and the last parameters, each
// next bucket the parameters before, each about `bucket_bytes` (at least
// one parameter). A post-hook on every parameter's gradient accumulator
// (AccumulateGrad, the node that adds a backward pass's gradient into
// .grad) counts the parameters of its bucket that are final; during the
// last micro-batch's backward (armed), a bucket whose parameters are all
// final is all-reduced at once, in the background, while backward goes on.
//
// Every rank must issue the same all-reduces in the same order. Buckets are
// therefore started strictly in index order (a bucket ready before an
// earlier one waits for it), and finish() starts whatever backward did not
// (a parameter that got no gradient this step, a rank without micro-batches)
// in that same order. With bucket_bytes 0 there are no hooks: one bucket,
// started by finish() after backward.
class Trainer::GradReducer {
 public:
  GradReducer(dist::Group& group, const std::vector<at::Tensor>& params, at::Tensor flat,
              int64_t bucket_bytes)
      : group_(group), flat_(std::move(flat)) {
    const int64_t elem = flat_.element_size();
    int64_t grads = 0;
    for (const at::Tensor& p : params) grads += p.numel();
    int64_t end = flat_.numel();  // the scalars after the gradients join bucket 0
    Bucket b;
    b.offset = grads;
    bucket_of_.resize(params.size());
    for (size_t i = params.size(); i-- > 0;) {
      if (bucket_bytes > 0 && b.params > 0 && (end - b.offset) * elem >= bucket_bytes) {
        b.numel = end - b.offset;
        end = b.offset;
        buckets_.push_back(std::move(b));
        b = Bucket();
        b.offset = end;
      }
      b.offset -= params[i].numel();
      b.params += 1;
      bucket_of_[i] = buckets_.size();
    }
    b.numel = end - b.offset;
    buckets_.push_back(std::move(b));
    if (bucket_bytes == 0) return;
    seen_.assign(params.size(), 0);
    for (size_t i = 0; i < params.size(); ++i) {
      auto acc = torch::autograd::impl::grad_accumulator(params[i]);
      if (!acc) {
        throw Error("data parallel: adapter parameter " + std::to_string(i) +
                        " is not a leaf that requires grad",
                    ErrorKind::kInternal);
      }
      hooks_.push_back({acc, acc->add_post_hook(std::make_unique<Ready>(*this, i))});
    }
  }

  // The hooks point here and the parameters outlive the trainer (merge,
  // evaluation, generation run backward-free passes, a test may train again).
  ~GradReducer() {
    for (auto& [node, key] : hooks_) node->del_post_hook(key);
  }

  size_t buckets() const { return buckets_.size(); }
  // Buckets the last step started from backward's hooks (the others waited
  // for finish()).
  size_t started_in_backward() const { return started_in_backward_; }

  // The next backward pass is the step's last: start each bucket as its
  // gradients become final.
  void arm() {
    std::lock_guard<std::mutex> lock(mu_);
    std::fill(seen_.begin(), seen_.end(), 0);
    for (Bucket& b : buckets_) {
      b.left = b.params;
      b.pending.reset();
    }
    next_ = 0;
    started_in_backward_ = 0;
    armed_ = !hooks_.empty();
  }

  // Starts the buckets not yet started, in order, then waits for all: the
  // buffer then holds the sum over ranks. Throws (Error, kIo) when a peer
  // died or timed out.
  void finish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      armed_ = false;
      while (next_ < buckets_.size()) start_next();
    }
    for (Bucket& b : buckets_) {
      std::unique_ptr<dist::Group::Pending> p = std::move(b.pending);
      p->wait();
    }
  }

 private:
  struct Bucket {
    int64_t offset = 0;  // first element in flat_
    int64_t numel = 0;
    int64_t params = 0;  // adapter parameters in it
    int64_t left = 0;    // ... whose gradient is not final yet (armed)
    std::unique_ptr<dist::Group::Pending> pending;
  };

  // Runs on the autograd engine's thread after parameter `index`'s gradient
  // was accumulated.
  struct Ready : torch::autograd::FunctionPostHook {
    Ready(GradReducer& r, size_t i) : reducer(r), index(i) {}
    torch::autograd::variable_list operator()(
        const torch::autograd::variable_list& outputs,
        const torch::autograd::variable_list& /*inputs*/) override {
      reducer.on_ready(index);
      return outputs;
    }
    GradReducer& reducer;
    size_t index;
  };

  void on_ready(size_t index) {
    std::lock_guard<std::mutex> lock(mu_);
    // seen_ guards the count: a parameter whose accumulator ran twice in one
    // backward (used in two reentrant-checkpoint segments) must not release
    // its bucket early.
    if (!armed_ || seen_[index]) return;
    seen_[index] = 1;
    --buckets_[bucket_of_[index]].left;
    while (next_ < buckets_.size() && buckets_[next_].left == 0) {
      start_next();
      ++started_in_backward_;
    }
  }

  void start_next() {  // mu_ held
    Bucket& b = buckets_[next_++];
    at::Tensor view = flat_.narrow(0, b.offset, b.numel);
    b.pending = group_.all_reduce_sum_async(view);
  }

  dist::Group& group_;
  at::Tensor flat_;
  std::vector<Bucket> buckets_;    // bucket 0 at the end of flat_
  std::vector<size_t> bucket_of_;  // per parameter
  std::vector<char> seen_;         // per parameter: final this step (armed)
  // The accumulator (std::shared_ptr<Node> up to torch 2.11, c10::intrusive_ptr
  // after) and its hook's key.
  using NodePtr = decltype(torch::autograd::impl::grad_accumulator(std::declval<at::Tensor>()));
  std::vector<std::pair<NodePtr, uintptr_t>> hooks_;
  std::mutex mu_;
  size_t next_ = 0;  // the next bucket to start
  size_t started_in_backward_ = 0;
  bool armed_ = false;
};

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
  reducer_ = std::make_unique<GradReducer>(*group_, opt_.params(), flat_,
                                           static_cast<int64_t>(cfg.grad_bucket_mb * (1 << 20)));
}

Trainer::~Trainer() = default;

int64_t Trainer::grad_buckets() const {
  return reducer_ ? static_cast<int64_t>(reducer_->buckets()) : 0;
}

int64_t Trainer::grad_buckets_overlapped() const {
  return reducer_ ? static_cast<int64_t>(reducer_->started_in_backward()) : 0;
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
  // The loss and stop slots of the flat buffer, filled before the last
  // backward pass (whose hooks may start their bucket).
  auto fill_scalars = [&] {
    flat_[grad_numel_].copy_(loss_acc);
    flat_[grad_numel_ + 1].fill_(stop_request ? 1.0 : 0.0);
  };
  for (size_t i = 0; i < micro.size(); ++i) {
    const MicroBatch& mb = micro[i];
    if (dropout_seed_) {
      reseed(opt_.params()[0].device(),
             mix64(mix64(mix64(*dropout_seed_) ^ static_cast<uint64_t>(step_)) ^
                   static_cast<uint64_t>(mb.index)));
    }
    at::Tensor loss =
        micro_batch_loss_sum(model_, mb, cfg_.gradient_checkpointing) / n;  // 0-dim float32
    loss_acc.add_(loss.detach());
    if (reducer_ && i + 1 == micro.size()) {
      fill_scalars();
      reducer_->arm();
    }
    loss.backward();
  }
  if (reducer_) {
    if (micro.empty()) fill_scalars();
    reducer_->finish();
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
