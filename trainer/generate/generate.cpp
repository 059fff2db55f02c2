// trainer/generate/generate.cpp — KV-cached decoding and logits processing.
#include "trainer/generate/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/multinomial.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <limits>

#include "trainer/io/error.h"

namespace loratune::generate {

at::Tensor process_logits(const at::Tensor& logits, const std::vector<int64_t>& seen,
                          const SamplingOptions& opt) {
  at::Tensor s = logits.to(at::kFloat).clone();  // [V]
  const double inf = std::numeric_limits<double>::infinity();
  if (opt.repetition_penalty != 1.0 && !seen.empty()) {
    // RepetitionPenaltyLogitsProcessor: negative scores * p, positive / p.
    at::Tensor idx = at::tensor(seen, at::TensorOptions().dtype(at::kLong)).to(s.device());
    at::Tensor g = s.index_select(0, idx);
    g = at::where(g < 0, g * opt.repetition_penalty, g / opt.repetition_penalty);
    s.index_put_({idx}, g);
  }
  if (opt.temperature <= 0.0) return s;  // greedy: only the penalty applies
  {
    // A temperature so small that the scaled logits overflow (1e-40, or 1e-38
    // with logits above 3.4) is the limit T -> 0 of softmax(s / T): all the
    // probability on the largest logits. Without this the overflow gives
    // inf - inf = NaN probabilities. No host sync: chosen on the device.
    at::Tensor scaled = s / opt.temperature;  // [V]
    at::Tensor limit = at::where(s == s.max(), at::zeros_like(s), at::full_like(s, -inf));
    s = at::where(scaled.isfinite().all(), scaled, limit);
  }
  if (opt.top_k > 0) {
    int64_t k = std::min<int64_t>(opt.top_k, s.size(0));
    at::Tensor kth = std::get<0>(at::topk(s, k)).select(0, k - 1);
    s = s.masked_fill(s < kth, -inf);
  }
  if (opt.top_p < 1.0) {
    // TopPLogitsWarper: drop the smallest tokens whose cumulative probability
    // stays <= 1 - top_p; the most likely token always survives.
    auto [sorted, order] = at::sort(s, /*dim=*/0, /*descending=*/false);
    at::Tensor cum = at::softmax(sorted, 0).cumsum(0);
    at::Tensor remove = cum <= (1.0 - opt.top_p);
    remove.index_put_({-1}, false);
    at::Tensor mask = at::zeros_like(remove).scatter(0, order, remove);
    s = s.masked_fill(mask, -inf);
  }
  return s;
}

std::vector<int64_t> generate(model::CausalLMImpl& model, const std::vector<int64_t>& prompt,
                              const SamplingOptions& opt, const TokenCallback& on_token) {
  if (prompt.empty()) throw Error("generate: the prompt has no tokens");
  const model::ModelConfig& cfg = model.config();
  const int64_t total = static_cast<int64_t>(prompt.size()) + opt.max_new_tokens;
  if (total > cfg.max_position_embeddings) {
    throw Error("generate: prompt (" + std::to_string(prompt.size()) + " tokens) + " +
                "max_new_tokens (" + std::to_string(opt.max_new_tokens) +
                ") exceeds the model's max_position_embeddings (" +
                std::to_string(cfg.max_position_embeddings) + ")");
  }
  for (int64_t id : prompt) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw Error("generate: token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                  std::to_string(cfg.vocab_size - 1) + ")");
    }
  }
  at::NoGradGuard no_grad;
  const auto dev_opts = at::TensorOptions().device(model.device());
  model::KVCache cache(cfg, /*batch=*/1, total, dev_opts.dtype(model.dtype()));
  at::Generator gen = at::detail::createCPUGenerator(opt.seed);

  std::vector<int64_t> seen = prompt, out;
  at::Tensor input = at::tensor(prompt, dev_opts.dtype(at::kLong)).unsqueeze(0);  // [1,T]
  for (int64_t step = 0; step < opt.max_new_tokens; ++step) {
    model::ForwardOptions fo;
    fo.cache = &cache;
    at::Tensor last = model.forward(input, fo).select(1, -1).squeeze(0);  // [V]
    at::Tensor s = process_logits(last, seen, opt);
    int64_t next;
    if (opt.temperature <= 0.0) {
      next = at::argmax(s).item<int64_t>();
    } else {
      // Draw on the CPU so a seed gives the same text on every device.
      next = at::multinomial(at::softmax(s, 0).cpu(), 1, false, gen).item<int64_t>();
    }
    out.push_back(next);
    seen.push_back(next);
    bool keep_going = !on_token || on_token(next);
    bool eos = std::find(opt.eos_ids.begin(), opt.eos_ids.end(), next) != opt.eos_ids.end();
    if (!keep_going || (eos && !opt.ignore_eos)) break;
    input = at::tensor({next}, dev_opts.dtype(at::kLong)).unsqueeze(0);  // [1,1]
    // Longrope (Phi-3): positions past the original context rotate with the
    // long factors, and a forward call picks the factors from its largest
    // position, so the cached keys of a prompt that fit the original context
    // were rotated with the short ones. As transformers does (Phi3ForCausalLM.
    // prepare_inputs_for_generation), the first step past it drops the cache
    // and runs the whole sequence again.
    const int64_t orig = cfg.rope.original_max_position_embeddings;
    if (cfg.rope.type == "longrope" && cache.length <= orig &&
        static_cast<int64_t>(seen.size()) >= orig + 1) {
      cache.length = 0;
      input = at::tensor(seen, dev_opts.dtype(at::kLong)).unsqueeze(0);  // [1,L]
    }
  }
  return out;
}

void TextStream::push(int64_t id) {
  ids_.push_back(static_cast<int32_t>(id));
  emit(/*final=*/false);
}

void TextStream::finish() {
  if (!ids_.empty()) emit(/*final=*/true);
}

void TextStream::emit(bool final) {
  const std::string text = decode_(ids_);
  static const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  const bool incomplete = text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0;
  if ((incomplete && !final) || text.size() <= printed_) return;
  sink_(text.substr(printed_));
  printed_ = text.size();
}

}  // namespace loratune::generate
