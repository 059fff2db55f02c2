// Token cross entropy as transformers' ForCausalLMLoss with num_items_in_batch.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/zeros.h>

#include <cmath>

#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {

namespace {

// (B,T) int32 row-major host array -> [B,T] int64 tensor on `device`.
at::Tensor to_tensor(const std::vector<int32_t>& v, int64_t B, int64_t T,
                     const c10::Device& device) {
  if (static_cast<int64_t>(v.size()) != B * T) {
    throw Error("batch: array of " + std::to_string(v.size()) + " values for shape [" +
                std::to_string(B) + "," + std::to_string(T) + "]");
  }
  at::Tensor t = at::from_blob(const_cast<int32_t*>(v.data()), {B, T}, at::kInt);
  return t.to(at::kLong).to(device);
}

}  // namespace

MicroBatch to_micro_batch(const data::Batch& b, const c10::Device& device, bool packed) {
  const int64_t B = b.rows, T = b.seq_len;
  MicroBatch mb;
  mb.input_ids = to_tensor(b.input_ids, B, T, device);
  mb.labels = to_tensor(b.labels, B, T, device);
  mb.position_ids = to_tensor(b.position_ids, B, T, device);
  if (packed) {
    mb.segment_ids = to_tensor(b.segment_ids, B, T, device);
  } else {
    std::vector<int32_t> mask(b.attention_mask.begin(), b.attention_mask.end());
    mb.attention_mask = to_tensor(mask, B, T, device);
  }
  mb.target_tokens = b.target_tokens;
  mb.tokens = 0;
  for (uint8_t m : b.attention_mask) mb.tokens += m;
  return mb;
}

int64_t count_target_tokens(const at::Tensor& labels) {
  // labels [B,T]: targets are labels[:, 1:] (the first token predicts nothing).
  return labels.slice(1, 1).ne(data::kIgnoreIndex).sum().item<int64_t>();
}

at::Tensor token_loss_sum(const at::Tensor& logits, const at::Tensor& labels) {
  if (logits.dim() != 3 || labels.dim() != 2 || logits.size(0) != labels.size(0) ||
      logits.size(1) != labels.size(1)) {
    throw Error("token_loss_sum: logits [B,T,V] and labels [B,T] disagree");
  }
  const int64_t V = logits.size(2);
  // logits[:, :-1] [B,T-1,V] predict labels[:, 1:] [B,T-1]; CE in float32.
  at::Tensor lg = logits.slice(1, 0, -1).to(at::kFloat).reshape({-1, V});
  at::Tensor tg = labels.slice(1, 1).reshape({-1}).to(lg.device());
  return at::cross_entropy_loss(lg, tg, /*weight=*/{}, at::Reduction::Sum,
                                /*ignore_index=*/data::kIgnoreIndex);
}

at::Tensor micro_batch_loss_sum(model::CausalLMImpl& model, const MicroBatch& mb, bool checkpoint) {
  model::ForwardOptions fo;
  fo.position_ids = mb.position_ids;
  fo.attention_mask = mb.attention_mask;
  fo.segment_ids = mb.segment_ids;
  at::Tensor logits = checkpoint ? forward_checkpointed(model, mb.input_ids, fo)
                                 : model.forward(mb.input_ids, fo);  // [B,T,V]
  return token_loss_sum(logits, mb.labels);
}

EvalResult evaluate(model::CausalLMImpl& model, const std::vector<MicroBatch>& batches) {
  const bool was_training = model.is_training();
  model.eval();
  at::NoGradGuard no_grad;
  at::Tensor sum;
  int64_t n = 0;
  for (const MicroBatch& mb : batches) {
    at::Tensor s = micro_batch_loss_sum(model, mb);
    sum = sum.defined() ? sum + s : s;
    n += mb.target_tokens;
  }
  model.train(was_training);
  EvalResult r;
  r.target_tokens = n;
  if (n == 0) throw Error("evaluate: the evaluation data hold no target tokens");
  r.loss = sum.item<double>() / static_cast<double>(n);
  r.perplexity = std::exp(r.loss);
  return r;
}

}  // namespace loratune::train
