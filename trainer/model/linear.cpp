// trainer/model/linear.cpp — LinearImpl and the adapter hook.
#include "trainer/model/linear.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>

#include "trainer/io/error.h"

namespace loratune::model {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias,
                       const at::TensorOptions& options)
    : in_features_(in_features), out_features_(out_features) {
  weight = register_parameter("weight", at::empty({out_features, in_features}, options),
                              /*requires_grad=*/false);
  if (bias) {
    this->bias = register_parameter("bias", at::empty({out_features}, options),
                                    /*requires_grad=*/false);
  }
}

at::Tensor LinearImpl::forward(const at::Tensor& x) {
  at::Tensor y = nf4_ ? nf4_linear(x, *nf4_, bias)  // [..., in] -> [..., out]
                      : at::linear(x, weight, bias);
  if (adapter_) y = adapter_->add_delta(x, y);  // [..., out]
  return y;
}

at::Tensor LinearImpl::dense_weight(at::ScalarType nf4_dtype) const {
  return nf4_ ? dequantize_nf4(*nf4_, nf4_dtype) : weight;
}

void LinearImpl::set_nf4(Nf4Weight q) {
  if (q.shape != std::vector<int64_t>{out_features_, in_features_}) {
    throw Error("LinearImpl::set_nf4: NF4 weight of another shape", ErrorKind::kInternal);
  }
  weight.set_data(q.packed);
  weight.set_requires_grad(false);
  nf4_ = std::make_shared<Nf4Weight>(std::move(q));
}

void LinearImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);  // moves weight (the packed bytes) and bias
  if (!nf4_) return;
  Nf4Weight moved = *nf4_;
  moved.packed = weight;
  moved.absmax = moved.absmax.to(device);
  if (moved.double_quant()) {
    moved.nested_absmax = moved.nested_absmax.to(device);
    moved.offset = moved.offset.to(device);
  }
  nf4_ = std::make_shared<Nf4Weight>(std::move(moved));
}

void LinearImpl::set_adapter(std::shared_ptr<LinearAdapter> adapter) {
  if (!adapter) throw Error("LinearImpl::set_adapter: null adapter");
  if (adapter_) throw Error("LinearImpl::set_adapter: an adapter is already attached");
  auto check = [&](const std::string& name) {
    if (name == "weight" || name == "bias" || named_children().contains(name) ||
        named_parameters(false).contains(name) || named_buffers(false).contains(name)) {
      throw Error("LinearImpl::set_adapter: adapter name \"" + name +
                  "\" collides with a name the projection already has");
    }
  };
  for (const auto& item : adapter->named_children()) check(item.key());
  for (const auto& item : adapter->named_parameters(/*recurse=*/false)) check(item.key());
  for (const auto& item : adapter->named_buffers(/*recurse=*/false)) check(item.key());
  for (const auto& item : adapter->named_children()) register_module(item.key(), item.value());
  for (const auto& item : adapter->named_parameters(/*recurse=*/false)) {
    register_parameter(item.key(), item.value(), item.value().requires_grad());
  }
  for (const auto& item : adapter->named_buffers(/*recurse=*/false)) {
    register_buffer(item.key(), item.value());
  }
  adapter_ = std::move(adapter);
  adapter_->owner_ = this;
  adapter_->train(is_training());  // the adapter follows its projection's mode from now on
}

void LinearImpl::train(bool on) {
  torch::nn::Module::train(on);
  // The adapter object itself is not a registered child (only its layers
  // are), so Module::train would not reach it; its dropout reads its own flag.
  if (adapter_) adapter_->train(on);
}

std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> linear_modules(
    const torch::nn::Module& root) {
  std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> out;
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    // An adapter's own layers (lora_A, ...) live under a projection: skip them.
    const std::string& path = item.key();
    if (!out.empty() && path.rfind(out.back().first + ".", 0) == 0) continue;
    if (auto lin = std::dynamic_pointer_cast<LinearImpl>(item.value())) {
      out.emplace_back(item.key(), std::move(lin));
    }
  }
  return out;
}

}  // namespace loratune::model
