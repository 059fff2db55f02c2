// trainer/lora/lora.cpp — LoRA projections and their injection into a model.
#include "trainer/lora/lora.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <regex>

#include "trainer/io/error.h"

namespace loratune::lora {
namespace {

// PEFT's get_pattern_key: the first pattern key that matches the end of the
// module path at a '.' boundary.
template <typename V>
const V* pattern_value(const std::map<std::string, V>& patterns, const std::string& path) {
  for (const auto& [key, value] : patterns) {
    std::regex re;
    try {
      re = std::regex("(.*\\.)?(" + key + ")");
    } catch (const std::regex_error& e) {
      throw Error("LoRA pattern '" + key + "' is not a valid regular expression: " + e.what());
    }
    if (std::regex_match(path, re)) return &value;
  }
  return nullptr;
}

}  // namespace

double lora_scale(double alpha, int64_t r, bool use_rslora) {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

std::pair<int64_t, double> rank_and_alpha(const LoraSpec& spec, const std::string& module_path) {
  int64_t r = spec.r;
  double alpha = spec.alpha;
  if (const int64_t* pr = pattern_value(spec.rank_pattern, module_path)) r = *pr;
  if (const double* pa = pattern_value(spec.alpha_pattern, module_path)) alpha = *pa;
  return {r, alpha};
}

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features, int64_t r, double alpha,
                               double dropout, bool use_rslora, const c10::Device& device)
    : r_(r), scale_(lora_scale(alpha, r, use_rslora)), dropout_(dropout) {
  if (r < 1) throw Error("LoRA rank r must be >= 1, got " + std::to_string(r));
  auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  lora_A = register_module("lora_A", model::Linear(in_features, r, /*bias=*/false, opts));
  lora_B = register_module("lora_B", model::Linear(r, out_features, /*bias=*/false, opts));
  lora_A->weight.set_requires_grad(true);
  lora_B->weight.set_requires_grad(true);
  reset_parameters();
}

void LoraLinearImpl::reset_parameters() {
  at::NoGradGuard no_grad;
  // kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/fan_in) = 1/sqrt(fan_in).
  const double bound = 1.0 / std::sqrt(static_cast<double>(lora_A->in_features()));
  lora_A->weight.uniform_(-bound, bound);
  lora_B->weight.zero_();
}

at::Tensor LoraLinearImpl::delta(const at::Tensor& x) {
  at::Tensor h = x.to(lora_A->weight.scalar_type());  // [..., in] float32
  if (dropout_ > 0.0) h = at::dropout(h, dropout_, is_training());
  at::Tensor d = lora_B->forward(lora_A->forward(h)) * scale_;  // [..., r] -> [..., out]
  return d.to(x.scalar_type());
}

at::Tensor LoraLinearImpl::add_delta(const at::Tensor& x, const at::Tensor& y) {
  const at::Tensor& a = lora_A->weight;  // [r, in]
  const at::Tensor& b = lora_B->weight;  // [out, r]
  if (x.scalar_type() != a.scalar_type() || y.scalar_type() != a.scalar_type() || y.dim() < 1) {
    return y + delta(x);  // base in another dtype: the adapter term is cast
  }
  at::Tensor h = dropout_ > 0.0 ? at::dropout(x, dropout_, is_training()) : x;  // [..., in]
  at::Tensor t = at::linear(h, a) * scale_;                                     // [..., r]
  const int64_t out = y.size(-1);
  // [N,out] + [N,r] x [r,out]
  return at::addmm(y.reshape({-1, out}), t.reshape({-1, r_}), b.t()).view(y.sizes());
}

std::vector<std::string> inject_lora(model::CausalLMImpl& model, const LoraSpec& spec) {
  const std::vector<AdaptedModule> plan =
      plan_lora(spec, linear_shapes_of(model), "lora.target_modules", ErrorKind::kConfig,
                /*every_name_must_match=*/true);
  attach_lora(model, plan, spec);
  std::vector<std::string> injected;
  for (const AdaptedModule& m : plan) injected.push_back(m.path);
  return injected;
}

std::vector<std::pair<std::string, at::Tensor>> adapter_tensors(model::CausalLMImpl& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [path, linear] : model::linear_modules(model)) {
    auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(linear->adapter());
    if (!lora) continue;
    out.emplace_back("base_model.model." + path + ".lora_A.weight", lora->lora_A->weight);
    out.emplace_back("base_model.model." + path + ".lora_B.weight", lora->lora_B->weight);
  }
  return out;
}

std::vector<at::Tensor> adapter_parameters(model::CausalLMImpl& model) {
  std::vector<at::Tensor> out;
  for (auto& [name, t] : adapter_tensors(model)) out.push_back(t);
  return out;
}

}  // namespace loratune::lora
