// Activation checkpointing as a custom autograd Function (LibTorch has no C++
// torch.utils.checkpoint, pytorch issue #52744).
//
// forward: run fn(x) without autograd, keep only x and the RNG states.
// backward: restore the forward's RNG states, recompute fn(x) with autograd,
// and differentiate it w.r.t. x and the trainable params. The params are
// inputs of the node (a TensorList) so that the engine runs it even when x
// does not require grad (the first layer's input) and accumulates their
// gradients; without that the LoRA weights inside fn would get none.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <memory>
#include <mutex>
#include <vector>

#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {

namespace {

using Fn = std::function<at::Tensor(const at::Tensor&)>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct FnHolder : torch::CustomClassHolder {
  explicit FnHolder(Fn f) : fn(std::move(f)) {}
  Fn fn;
};

at::Generator generator_for(const c10::Device& device) {
  if (device.is_cpu()) return at::detail::getDefaultCPUGenerator();
  return at::globalContext().defaultGenerator(device);
}

at::Tensor get_rng(const c10::Device& device) {
  at::Generator gen = generator_for(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::Tensor(gen.get_state());
}

void set_rng(const c10::Device& device, const at::Tensor& state) {
  at::Generator gen = generator_for(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList params,
                            c10::intrusive_ptr<FnHolder> holder) {
    ctx->saved_data["rng_cpu"] = get_rng(c10::Device(c10::kCPU));
    if (x.is_cuda()) ctx->saved_data["rng_dev"] = get_rng(x.device());
    ctx->saved_data["x_requires_grad"] = x.requires_grad();
    ctx->saved_data["params"] = params.vec();
    ctx->saved_data["fn"] = c10::IValue::make_capsule(holder);
    ctx->save_for_backward({x});
    at::NoGradGuard no_grad;
    return holder->fn(x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    auto holder = ctx->saved_data["fn"].toCapsule();
    FnHolder* h = static_cast<FnHolder*>(holder.get());
    const c10::Device dev = x.device();
    // fork_rng: replay the forward's RNG, leave the caller's untouched.
    const at::Tensor cpu_now = get_rng(c10::Device(c10::kCPU));
    at::Tensor dev_now;
    if (x.is_cuda()) dev_now = get_rng(dev);
    set_rng(c10::Device(c10::kCPU), ctx->saved_data["rng_cpu"].toTensor());
    if (x.is_cuda()) set_rng(dev, ctx->saved_data["rng_dev"].toTensor());

    at::Tensor xd = x.detach().requires_grad_(true);
    at::Tensor out;
    {
      at::AutoGradMode grad_on(true);
      out = h->fn(xd);
    }
    set_rng(c10::Device(c10::kCPU), cpu_now);
    if (x.is_cuda()) set_rng(dev, dev_now);

    // Differentiate w.r.t. x, then the params that require grad.
    variable_list wrt = {xd};
    std::vector<size_t> param_slot;
    const auto params = ctx->saved_data["params"].toTensorList();
    for (size_t i = 0; i < params.size(); ++i) {
      const at::Tensor p = params.get(i);
      if (p.requires_grad()) {
        wrt.push_back(p);
        param_slot.push_back(i);
      }
    }
    variable_list g = torch::autograd::grad({out}, wrt, {grad_out[0]}, /*retain_graph=*/false,
                                            /*create_graph=*/false, /*allow_unused=*/true);
    variable_list result(1 + params.size() + 1);  // x, params..., fn (not a tensor)
    if (ctx->saved_data["x_requires_grad"].toBool()) result[0] = g[0];
    for (size_t k = 0; k < param_slot.size(); ++k) result[1 + param_slot[k]] = g[1 + k];
    return result;
  }
};

}  // namespace

at::Tensor checkpointed(const Fn& fn, const at::Tensor& x, const std::vector<at::Tensor>& params) {
  if (!at::GradMode::is_enabled()) return fn(x);  // nothing to save memory for
  return CheckpointFunction::apply(x, at::TensorList(params), c10::make_intrusive<FnHolder>(fn));
}

}  // namespace loratune::train

namespace loratune::train {

at::Tensor forward_checkpointed(model::CausalLMImpl& m, const at::Tensor& input_ids,
                                const model::ForwardOptions& opt) {
  return m.logits(hidden_states_checkpointed(m, input_ids, opt));  // [B,T,V]
}

at::Tensor hidden_states_checkpointed(model::CausalLMImpl& m, const at::Tensor& input_ids,
                                      const model::ForwardOptions& opt) {
  if (opt.cache != nullptr) throw Error("hidden_states_checkpointed: no KV cache in training");
  // The model's own forward pass, each layer run through `checkpointed`.
  model::ForwardOptions o = opt;
  o.run_layer = [](const std::shared_ptr<model::DecoderLayerImpl>& layer, const at::Tensor& x,
                   const model::LayerContext& ctx, const model::AttentionMask& mask) {
    std::vector<at::Tensor> params;  // the layer's LoRA parameters
    for (const at::Tensor& p : layer->parameters()) {
      if (p.requires_grad()) params.push_back(p);
    }
    // Captured by value: backward calls it after the forward returned.
    auto fn = [layer, ctx, mask](const at::Tensor& h) { return layer->forward(h, ctx, mask); };
    return checkpointed(fn, x, params);  // [B,T,D]
  };
  return m.hidden_states(input_ids, o);  // [B,T,D]
}

}  // namespace loratune::train
