// trainer/model/linear.h — the projection layer every attention and MLP
// projection uses, and the extension point for adapters such as LoRA.
//
// LinearImpl holds the Hugging Face parameters "weight" [out,in] and optional
// "bias" [out]. An adapter (a LinearAdapter subclass, e.g. LoRA in
// trainer/lora) adds a term to the output:
//     y = x W^T + b + adapter.delta(x)      (computed by adapter.add_delta)
// set_adapter registers the adapter's own direct submodules and parameters on
// the LinearImpl under their names, so LoRA's "lora_A"/"lora_B" children make
// parameter names such as "model.layers.0.self_attn.q_proj.lora_A.weight",
// the names PEFT writes.
//
// A projection may hold its base weight in NF4 (QLoRA, set_nf4): "weight"
// is then bitsandbytes' packed uint8 [ceil(out*in/2), 1] and forward
// dequantizes it on the fly (nf4_linear); the adapter path is unchanged.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/model/nf4.h"

namespace loratune::model {

class LinearImpl;

// What an adapter implements. delta(x) maps x [..., in] to [..., out] in x's
// dtype; it runs inside the owning LinearImpl's forward.
class LinearAdapter : public torch::nn::Module {
 public:
  virtual at::Tensor delta(const at::Tensor& x) = 0;
  // y + delta(x) for the base output y = x W^T + b [..., out]: what
  // LinearImpl::forward returns. An adapter may fuse the sum (LoRA adds its
  // term inside its last GEMM); the result equals y + delta(x) up to rounding.
  // An adapter that reweights the base output (DoRA) returns its own sum.
  virtual at::Tensor add_delta(const at::Tensor& x, const at::Tensor& y) { return y + delta(x); }
  // The projection this adapter is attached to (set by set_adapter; null
  // before). It owns the adapter, so it outlives it.
  const LinearImpl* owner() const { return owner_; }

 private:
  friend class LinearImpl;
  const LinearImpl* owner_ = nullptr;
};

class LinearImpl : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised with `options` (dtype, device) and
  // frozen (requires_grad false): they are base weights that a loader fills
  // (trainer/model/loader.h). Allocation is lazy on CPU: untouched pages cost
  // no memory.
  LinearImpl(int64_t in_features, int64_t out_features, bool bias,
             const at::TensorOptions& options = {});

  // x [..., in] -> [..., out]
  at::Tensor forward(const at::Tensor& x);

  // Attaches `adapter` (fully constructed: its submodules and parameters are
  // registered here when this is called). Throws Error if an adapter is
  // already attached or one of its names collides with "weight"/"bias".
  void set_adapter(std::shared_ptr<LinearAdapter> adapter);
  const std::shared_ptr<LinearAdapter>& adapter() const { return adapter_; }
  // train()/eval() also switch the attached adapter (its dropout is off in
  // eval mode): model->eval() reaches every adapter through its projection.
  void train(bool on = true) override;

  // Replaces the float weight by `q` (quantize_nf4 of it, on the weight's
  // device): `weight` becomes q.packed, frozen; the float weight's memory is
  // released once nothing else holds it.
  void set_nf4(Nf4Weight q);
  // The NF4 state, or null for a float weight.
  const Nf4Weight* nf4() const { return nf4_ ? nf4_.get() : nullptr; }
  // Module::to(device) that also moves the NF4 state.
  using torch::nn::Module::to;
  void to(torch::Device device, bool non_blocking = false) override;

  // The base weight [out, in] as the forward multiplies by it: `weight`, or
  // for NF4 its dequantization in `nf4_dtype` (a fresh tensor).
  at::Tensor dense_weight(at::ScalarType nf4_dtype = at::kFloat) const;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  at::Tensor weight;  // [out, in], or uint8 [ceil(out*in/2), 1] when NF4
  at::Tensor bias;    // [out] or undefined

 private:
  int64_t in_features_;
  int64_t out_features_;
  std::shared_ptr<LinearAdapter> adapter_;
  std::shared_ptr<Nf4Weight> nf4_;
};
TORCH_MODULE(Linear);

// Every LinearImpl under `root` with its module path, e.g.
// ("model.layers.0.self_attn.q_proj", module), in registration order. Layers
// inside an attached adapter are not listed.
std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> linear_modules(
    const torch::nn::Module& root);

}  // namespace loratune::model
