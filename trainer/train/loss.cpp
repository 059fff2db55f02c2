// Token cross entropy as transformers' ForCausalLMLoss with num_items_in_batch.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/zeros.h>

#include <cmath>

#include "trainer/io/error.h"
#include "trainer/train/device.h"
#include "trainer/train/train.h"

namespace loratune::train {

namespace {

// Copies a (B,T) int32 row-major host array into `dst` [B,T] int64 (host).
void fill_row_major(const std::vector<int32_t>& v, const at::Tensor& dst, const char* what) {
  const int64_t n = dst.numel();
  if (static_cast<int64_t>(v.size()) != n) {
    throw Error(std::string("batch: ") + what + " has " + std::to_string(v.size()) +
                " values for shape [" + std::to_string(dst.size(0)) + "," +
                std::to_string(dst.size(1)) + "]");
  }
  int64_t* out = dst.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) out[i] = v[static_cast<size_t>(i)];
}

// True when every row's padding (mask 0) comes after all its tokens: then a
// plain causal mask gives every real token exactly the keys the padding mask
// would, and the padded positions carry no targets (labels -100).
bool right_padded(const std::vector<uint8_t>& mask, int64_t B, int64_t T) {
  for (int64_t r = 0; r < B; ++r) {
    bool pad = false;
    for (int64_t t = 0; t < T; ++t) {
      const bool keep = mask[static_cast<size_t>(r * T + t)] != 0;
      if (keep && pad) return false;
      pad = pad || !keep;
    }
  }
  return true;
}

}  // namespace

MicroBatch to_micro_batch(const data::Batch& b, const c10::Device& device, bool packed) {
  const int64_t B = b.rows, T = b.seq_len;
  if (static_cast<int64_t>(b.attention_mask.size()) != B * T) {
    throw Error("batch: attention_mask has " + std::to_string(b.attention_mask.size()) +
                " values for shape [" + std::to_string(B) + "," + std::to_string(T) + "]");
  }
  // Unpacked right-padded batches need no explicit mask, so SDPA can take its
  // is_causal kernels (flash on CUDA); packed ones need segment_ids, and any
  // other padding the mask.
  const bool need_mask = !packed && !right_padded(b.attention_mask, B, T);
  const int64_t rows = packed || need_mask ? 4 : 3;
  // One staging tensor [rows,B,T] (pinned when bound for CUDA) and one
  // asynchronous copy; the fields are views of the device copy.
  at::Tensor host = host_staging({rows, B, T}, at::kLong, device);
  fill_row_major(b.input_ids, host[0], "input_ids");
  fill_row_major(b.labels, host[1], "labels");
  fill_row_major(b.position_ids, host[2], "position_ids");
  if (packed) {
    fill_row_major(b.segment_ids, host[3], "segment_ids");
  } else if (need_mask) {
    int64_t* out = host[3].data_ptr<int64_t>();
    for (int64_t i = 0; i < B * T; ++i) out[i] = b.attention_mask[static_cast<size_t>(i)];
  }
  const at::Tensor dev = to_device(host, device);  // [rows,B,T]
  MicroBatch mb;
  mb.input_ids = dev[0];
  mb.labels = dev[1];
  mb.position_ids = dev[2];
  if (packed) mb.segment_ids = dev[3];
  if (need_mask) mb.attention_mask = dev[3];
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
  const int64_t B = logits.size(0), V = logits.size(2);
  // logits[:, t] predicts labels[:, t+1]: shift the labels (the last
  // position gets -100), not the logits, so the logits stay a view as
  // transformers' ForCausalLMLoss does. CE in float32.
  at::Tensor lg = logits.to(at::kFloat).reshape({-1, V});  // [B*T,V]
  at::Tensor tg =
      at::cat({labels.slice(1, 1).to(lg.device()),
               at::full({B, 1}, data::kIgnoreIndex, labels.options().device(lg.device()))},
              1)
          .reshape({-1});  // [B*T]
  return at::cross_entropy_loss(lg, tg, /*weight=*/{}, at::Reduction::Sum,
                                /*ignore_index=*/data::kIgnoreIndex);
}

at::Tensor micro_batch_loss_sum(model::CausalLMImpl& model, const MicroBatch& mb, bool checkpoint) {
  model::ForwardOptions fo;
  fo.position_ids = mb.position_ids;
  fo.attention_mask = mb.attention_mask;
  fo.segment_ids = mb.segment_ids;
  at::Tensor hidden = checkpoint ? hidden_states_checkpointed(model, mb.input_ids, fo)
                                 : model.hidden_states(mb.input_ids, fo);  // [B,T,D]
  // The fused projection + loss needs a plain frozen lm_head (an adapter on
  // lm_head goes through the logits).
  if ((!model.lm_head || !model.lm_head->adapter()) && !model.lm_head_weight().requires_grad()) {
    return linear_loss_sum(hidden, model.output_head(), mb.labels, mb.target_tokens);
  }
  return token_loss_sum(model.logits(hidden), mb.labels);  // logits [B,T,V]
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
