// trainer/generate/generate.h — autoregressive decoding with a KV cache.
//
// Matches transformers' generate(): greedy decoding (temperature 0) picks the
// argmax of the last position's logits; sampling applies, in transformers'
// order, the repetition penalty, temperature, top-k and top-p to the float32
// logits and draws from the softmax with a seeded generator (reproducible for
// a seed, not bit-equal to PyTorch's sampler). Decoding stops after
// max_new_tokens or at the first EOS id (which is kept in the output, as
// transformers does) unless ignore_eos.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "trainer/model/model.h"

namespace loratune::generate {

struct SamplingOptions {
  int64_t max_new_tokens = 128;
  double temperature = 0.0;         // 0: greedy
  int64_t top_k = 0;                // 0: off
  double top_p = 1.0;               // 1: off
  double repetition_penalty = 1.0;  // 1: off; > 1 discourages tokens already present
  uint64_t seed = 0;
  bool ignore_eos = false;
  std::vector<int64_t> eos_ids;  // stop tokens (generation_config.json / tokenizer)
};

// Called with each new token id as soon as it is chosen; return false to stop.
using TokenCallback = std::function<bool(int64_t)>;

// Generates up to max_new_tokens ids after `prompt` (non-empty) with `model`
// in eval mode; returns the generated ids only. Throws Error when the prompt
// plus max_new_tokens exceed the model's max_position_embeddings.
std::vector<int64_t> generate(model::CausalLMImpl& model, const std::vector<int64_t>& prompt,
                              const SamplingOptions& opt, const TokenCallback& on_token = {});

// Processes the float32 logits [V] of one step as transformers' logits
// processors do (repetition penalty over `seen`, temperature, top-k, top-p),
// returning the processed logits (masked entries -inf). Exposed for tests.
at::Tensor process_logits(const at::Tensor& logits, const std::vector<int64_t>& seen,
                          const SamplingOptions& opt);

// Turns generated ids into text while they arrive. After each id, hands
// `sink` what decoding all ids so far adds to the text already handed out;
// a trailing incomplete UTF-8 sequence (decoded as U+FFFD: a character whose
// bytes are split over byte-fallback or byte-level tokens) is held back
// until a later id completes it, so no piece ever ends inside a character.
// finish() hands out whatever is still held (as the full decode shows it).
// The concatenated pieces equal decode(all ids) whenever decoding a prefix
// gives a prefix of the text (true of the byte-level and SentencePiece
// decoders); otherwise only the new tail is printed.
class TextStream {
 public:
  using Decode = std::function<std::string(const std::vector<int32_t>&)>;
  using Sink = std::function<void(const std::string&)>;
  TextStream(Decode decode, Sink sink) : decode_(std::move(decode)), sink_(std::move(sink)) {}
  void push(int64_t id);
  void finish();

 private:
  void emit(bool final);
  Decode decode_;
  Sink sink_;
  std::vector<int32_t> ids_;
  size_t printed_ = 0;  // bytes of the decoded text handed out
};

}  // namespace loratune::generate
