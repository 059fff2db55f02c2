// The output projection and token cross entropy fused and chunked over
// tokens, so the [N,V] logits, their log-softmax and their gradient are never
// materialised whole (for V = 32000 and 512 tokens each is 65 MB float32).
//
// The loss is a sum, so its gradient w.r.t. the hidden states is known in the
// forward pass up to the incoming scalar: per chunk, softmax(z) - onehot(t)
// is formed in place in the chunk's logits and multiplied by W at once.
// backward only scales the stored [N,D] gradient. Nothing is recomputed, and
// the matmul work is the unfused path's (z = h W^T, dh = dz W).
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/nonzero_static.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

#include "trainer/data/data.h"
#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Logit elements per chunk: 4M float32 = 16 MB ([131,V] for V = 32000). Big
// chunks keep the matmuls efficient (W [V,D] is streamed once per chunk).
constexpr int64_t kChunkElements = int64_t{1} << 22;

// sum_i CE(head(h_i), t_i) over the rows of hidden [N,D] with targets [N]
// int64 (all valid class ids), where head(h) = transform(h W^T) in hidden's
// dtype, then float32 as transformers upcasts the logits. With `grad`
// defined ([N,D], hidden's dtype) it also receives d(sum)/d(hidden).
// Returns a 0-dim float32 tensor.
at::Tensor chunked_ce_sum(const at::Tensor& hidden, const model::OutputHead& head,
                          const at::Tensor& targets, const at::Tensor& grad) {
  const at::Tensor& weight = head.weight;  // [V,D]
  const double cap = head.final_softcap;
  const int64_t N = hidden.size(0), V = weight.size(0);
  const int64_t C = std::max<int64_t>(1, kChunkElements / V);
  at::Tensor total = at::zeros({}, hidden.options().dtype(at::kFloat));
  for (int64_t s = 0; s < N; s += C) {
    const int64_t n = std::min(C, N - s);
    at::Tensor t = targets.narrow(0, s, n).unsqueeze(1);        // [n,1]
    at::Tensor z = at::linear(hidden.narrow(0, s, n), weight);  // [n,V] raw, hidden's dtype
    at::Tensor u;                                               // tanh(z/c), for the gradient
    if (cap > 0) {
      u = at::tanh(z / cap);  // = OutputHead::transform(z) / cap
      z = u * cap;            // [n,V]
    }
    z = z.to(at::kFloat);                                    // [n,V]
    at::Tensor lse = at::logsumexp(z, 1, /*keepdim=*/true);  // [n,1]
    total.add_((lse - z.gather(1, t)).sum());
    if (!grad.defined()) continue;
    // d(lse - z_t)/dz = softmax(z) - onehot(t), built in z's storage.
    z.sub_(lse).exp_();                                         // [n,V]
    z.scatter_add_(1, t, at::full({n, 1}, -1.0, z.options()));  // [n,V]
    if (cap > 0) z.mul_(1 - u.to(at::kFloat).square());         // d(c tanh(z/c))/dz
    at::Tensor g = grad.narrow(0, s, n);                        // [n,D]
    at::mm_out(g, z.to(grad.scalar_type()), weight);            // [n,V] x [V,D]
  }
  return total;
}

class LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
 public:
  // hidden [N,D] (requires grad), weight [V,D] (frozen), targets [N] -> 0-dim.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden,
                            const at::Tensor& weight, const at::Tensor& targets, double cap) {
    at::Tensor grad = at::empty_like(hidden);  // [N,D]
    at::Tensor loss = chunked_ce_sum(hidden, model::OutputHead{weight, cap}, targets, grad);
    ctx->save_for_backward({grad});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const at::Tensor grad = ctx->get_saved_variables()[0];  // [N,D]
    return {grad * grad_out[0], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_loss_sum(const at::Tensor& hidden, const model::OutputHead& head,
                           const at::Tensor& labels, int64_t target_tokens) {
  const at::Tensor& weight = head.weight;  // [V,D]
  if (hidden.dim() != 3 || labels.dim() != 2 || hidden.size(0) != labels.size(0) ||
      hidden.size(1) != labels.size(1) || weight.dim() != 2 || weight.size(1) != hidden.size(2)) {
    throw Error("linear_loss_sum: hidden [B,T,D], weight [V,D] and labels [B,T] disagree");
  }
  if (weight.requires_grad()) {
    throw Error("linear_loss_sum: the output projection must be frozen");
  }
  const int64_t B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
  // hidden[:, :-1] [B,T-1,D] predicts labels[:, 1:] [B,T-1]; only the
  // target_tokens rows whose label is not -100 reach the projection.
  // nonzero_static with the known count: no host-device sync. No targets
  // gives N = 0: a zero loss still connected to the graph (zero gradients).
  at::Tensor h = hidden.slice(1, 0, T - 1).reshape({-1, D});             // [B(T-1),D]
  at::Tensor tg = labels.slice(1, 1).reshape({-1}).to(hidden.device());  // [B(T-1)]
  if (target_tokens != B * (T - 1)) {
    at::Tensor idx = at::nonzero_static(tg.ne(data::kIgnoreIndex), target_tokens).squeeze(1);
    h = h.index_select(0, idx);    // [N,D]
    tg = tg.index_select(0, idx);  // [N]
  }
  if (at::GradMode::is_enabled() && h.requires_grad()) {
    return LinearCrossEntropy::apply(h, weight, tg, head.final_softcap);
  }
  return chunked_ce_sum(h, head, tg, at::Tensor());
}

}  // namespace loratune::train
