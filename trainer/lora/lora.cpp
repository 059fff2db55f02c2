// trainer/lora/lora.cpp — LoRA projections and their injection into a model.
#include "trainer/lora/lora.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/diag.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/linalg_qr.h>
#include <ATen/ops/linalg_svd.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>

#include <cmath>

#include "trainer/io/error.h"

namespace loratune::lora {
namespace {

// PEFT's get_pattern_key: the first pattern key, in order, that matches the
// end of the module path at a '.' boundary.
template <typename V>
const V* pattern_value(const std::vector<std::pair<std::string, V>>& patterns,
                       const std::string& path, const char* field) {
  for (const auto& [key, value] : patterns) {
    if (regex_full_match("(.*\\.)?(" + key + ")", path, field)) return &value;
  }
  return nullptr;
}

}  // namespace

bool rewrites_base(const LoraSpec& spec) {
  return spec.init == LoraInit::kPissa || spec.init == LoraInit::kOlora;
}

LoraSpec saved_spec(const LoraSpec& spec) {
  if (!rewrites_base(spec)) return spec;
  // Rank 2r with the same scale: alpha/r needs alpha doubled, alpha/sqrt(r)
  // needs alpha times sqrt(2). (PEFT doubles alpha_pattern values even with
  // rsLoRA, which changes their scale; the scale is what must not change.)
  LoraSpec out = spec;
  const double alpha_factor = spec.use_rslora ? std::sqrt(2.0) : 2.0;
  out.r *= 2;
  out.alpha *= alpha_factor;
  for (auto& [k, v] : out.rank_pattern) v *= 2;
  for (auto& [k, v] : out.alpha_pattern) v *= alpha_factor;
  out.init = LoraInit::kDefault;
  return out;
}

std::string init_name(LoraInit init) {
  switch (init) {
    case LoraInit::kDefault:
      return "default";
    case LoraInit::kGaussian:
      return "gaussian";
    case LoraInit::kPissa:
      return "pissa";
    case LoraInit::kOlora:
      return "olora";
  }
  return "default";
}

double lora_scale(double alpha, int64_t r, bool use_rslora) {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

std::pair<int64_t, double> rank_and_alpha(const LoraSpec& spec, const std::string& module_path) {
  int64_t r = spec.r;
  double alpha = spec.alpha;
  if (const int64_t* pr = pattern_value(spec.rank_pattern, module_path, "rank_pattern")) r = *pr;
  if (const double* pa = pattern_value(spec.alpha_pattern, module_path, "alpha_pattern"))
    alpha = *pa;
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

void LoraLinearImpl::reset_gaussian() {
  at::NoGradGuard no_grad;
  lora_A->weight.normal_(0.0, 1.0 / static_cast<double>(r_));
  lora_B->weight.zero_();
}

at::Tensor LoraLinearImpl::init_from_weight(const at::Tensor& w, LoraInit how) {
  at::NoGradGuard no_grad;
  at::Tensor wf = w.to(at::kFloat);  // [out, in]
  at::Tensor a, b;
  if (how == LoraInit::kPissa) {
    // PEFT's pissa_init: W = U S Vh; A = sqrt(S_r / s) Vh_r, B = U_r sqrt(S_r / s).
    auto [u, sv, vh] = at::linalg_svd(wf, /*full_matrices=*/false);
    at::Tensor sr = sv.slice(0, 0, r_) / scale_;  // [r]
    at::Tensor root = at::diag(at::sqrt(sr));     // [r, r]
    a = at::matmul(root, vh.slice(0, 0, r_));     // [r, in]
    b = at::matmul(u.slice(1, 0, r_), root);      // [out, r]
  } else if (how == LoraInit::kOlora) {
    // PEFT's olora_init: W = Q R; A = R[:r], B = Q[:, :r].
    auto [q, rr] = at::linalg_qr(wf);  // [out, k], [k, in]
    a = rr.slice(0, 0, r_).contiguous();
    b = q.slice(1, 0, r_).contiguous();
  } else {
    throw Error("init_from_weight: lora.init " + init_name(how) + " does not start from W",
                ErrorKind::kInternal);
  }
  lora_A->weight.copy_(a);
  lora_B->weight.copy_(b);
  init_A_ = a.clone();
  init_B_ = b.clone();
  return wf - at::matmul(b * scale_, a);  // PEFT: W - (s * B) @ A
}

void LoraLinearImpl::enable_dora(const at::Tensor& w) {
  at::Tensor norm;
  {
    at::NoGradGuard no_grad;
    at::Tensor lw = at::matmul(lora_B->weight, lora_A->weight);             // [out, in]
    norm = at::linalg_vector_norm(w.to(at::kFloat) + scale_ * lw, 2, {1});  // [out]
  }
  magnitude = register_parameter("lora_magnitude_vector", norm, /*requires_grad=*/true);
}

at::Tensor LoraLinearImpl::dora_add(const at::Tensor& x, const at::Tensor& y) {
  if (owner() == nullptr) throw Error("DoRA adapter used before it was attached");
  const model::LinearImpl& base = *owner();
  const at::Tensor& a = lora_A->weight;  // [r, in]
  const at::Tensor& b = lora_B->weight;  // [out, r]
  // PEFT casts the input to the adapter's dtype (float32) and computes the
  // whole DoRA term there; the sum is cast back to the base output's dtype.
  at::Tensor xf = x.to(a.scalar_type());                             // [..., in]
  at::Tensor w = base.dense_weight(at::kFloat).to(a.scalar_type());  // [out, in]
  at::Tensor norm;
  {
    at::NoGradGuard no_grad;  // ‖W + s·BA‖ is a constant for autograd (DoRA, section 4.3)
    norm = at::linalg_vector_norm(w + scale_ * at::matmul(b, a), 2, {1});  // [out]
  }
  at::Tensor g = (magnitude / norm).view({1, -1});  // [1, out]
  const bool drop = dropout_ > 0.0 && is_training();
  at::Tensor h = drop ? at::dropout(xf, dropout_, /*train=*/true) : xf;
  at::Tensor lora = at::linear(at::linear(h, a), b);  // [..., out]
  at::Tensor base_out = drop ? at::linear(h, w)       // the base on the dropped-out input
                             : (base.bias.defined() ? y - base.bias : y);
  at::Tensor term = (g - 1) * base_out + g * lora * scale_;
  return (y + term).to(y.scalar_type());
}

at::Tensor LoraLinearImpl::delta(const at::Tensor& x) {
  at::Tensor h = x.to(lora_A->weight.scalar_type());  // [..., in] float32
  if (dropout_ > 0.0) h = at::dropout(h, dropout_, is_training());
  at::Tensor d = lora_B->forward(lora_A->forward(h)) * scale_;  // [..., r] -> [..., out]
  return d.to(x.scalar_type());
}

at::Tensor LoraLinearImpl::add_delta(const at::Tensor& x, const at::Tensor& y) {
  if (magnitude.defined()) return dora_add(x, y);
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
  for (auto& [module_path, linear] : model::linear_modules(model)) {
    auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(linear->adapter());
    if (!lora) continue;
    const std::string prefix =
        "base_model.model." + model::peft_module_path(model.config(), module_path);
    out.emplace_back(prefix + ".lora_A.weight", lora->lora_A->weight);
    out.emplace_back(prefix + ".lora_B.weight", lora->lora_B->weight);
    if (lora->dora()) out.emplace_back(prefix + ".lora_magnitude_vector", lora->magnitude);
  }
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> saved_adapter_tensors(model::CausalLMImpl& model) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  at::NoGradGuard no_grad;
  for (auto& [module_path, linear] : model::linear_modules(model)) {
    auto lora = std::dynamic_pointer_cast<LoraLinearImpl>(linear->adapter());
    if (!lora) continue;
    const std::string prefix =
        "base_model.model." + model::peft_module_path(model.config(), module_path);
    if (lora->init_A().defined()) {
      // W_res + s·BA = W + s·(BA - B0 A0) = W + s·[B, -B0][A; A0].
      out.emplace_back(prefix + ".lora_A.weight",
                       at::cat({lora->lora_A->weight, lora->init_A()}, 0));
      out.emplace_back(prefix + ".lora_B.weight",
                       at::cat({lora->lora_B->weight, -lora->init_B()}, 1));
    } else {
      out.emplace_back(prefix + ".lora_A.weight", lora->lora_A->weight);
      out.emplace_back(prefix + ".lora_B.weight", lora->lora_B->weight);
    }
    if (lora->dora()) out.emplace_back(prefix + ".lora_magnitude_vector", lora->magnitude);
  }
  return out;
}

std::vector<at::Tensor> adapter_parameters(model::CausalLMImpl& model) {
  std::vector<at::Tensor> out;
  for (auto& [name, t] : adapter_tensors(model)) out.push_back(t);
  return out;
}

}  // namespace loratune::lora
