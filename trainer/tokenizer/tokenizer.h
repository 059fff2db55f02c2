// trainer/tokenizer/tokenizer.h — text <-> token ids, matching Hugging Face.
//
// A Tokenizer produces exactly the ids that transformers 5.x
// `AutoTokenizer.from_pretrained(model_dir)` produces for the same files:
// tokenizer.json (the `tokenizers` pipeline: added tokens, normalizer,
// pre-tokenizer, BPE model, post-processor, decoder) adjusted the way
// transformers' tokenizer classes adjust it (LlamaTokenizer, GemmaTokenizer,
// Qwen2Tokenizer rebuild the pipeline around the file's vocab and merges and
// take added tokens from tokenizer_config.json; named special tokens become
// special added tokens; the file's post-processor adds BOS/EOS, since
// transformers 5.24 leaves it alone whatever add_bos_token / add_eos_token
// say), or a SentencePiece tokenizer.model through libsentencepiece (BOS per
// add_bos_token, default true; EOS per add_eos_token, default false).
// Other tokenizer_class values use tokenizer.json as written.
//
// Threads: a loaded Tokenizer is immutable apart from an internal cache that
// is guarded; encode/decode may be called from several threads at once.
// Errors: everything throws loratune::Error whose message names the file and
// the component at fault; nothing is approximated silently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace loratune::tokenizer {

// How special-token text inside the input is treated.
//
// The data pipeline must encode user/assistant *content* with
// split_special_tokens = true: a training sample that happens to contain
// "<|eot_id|>" or "</s>" must not produce the control token (that would let
// data forge turn boundaries). Only the chat-template scaffolding that
// loratune itself writes (role headers, turn ends) is encoded with
// split_special_tokens = false so that those strings become their ids.
struct EncodeOptions {
  // Add the post-processor's tokens (e.g. BOS), like `tokenizer(text)`.
  bool add_special_tokens = true;
  // true: added tokens flagged `special` are NOT recognised in the text and
  // are tokenized as plain text (transformers' split_special_tokens=True).
  // Non-special added tokens are still recognised, as in transformers.
  bool split_special_tokens = false;
};

// One token of an encoding with the byte range [begin, end) of the input it
// came from. Tokens added by the post-processor (BOS/EOS) have begin == end ==
// the position they were inserted at (0 for a prefix, size for a suffix).
// When a normalizer rewrote a run of non-ASCII text (NFC of decomposed
// input), every token of that run spans the whole rewritten run.
struct Token {
  int32_t id = 0;
  uint32_t begin = 0;
  uint32_t end = 0;
};

// An added token (tokenizer.json `added_tokens`, plus the named special
// tokens transformers adds) with its matching flags.
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool single_word = false;
};

// The named special tokens (tokenizer_config.json, with the defaults of the
// transformers class named there). An absent token has id -1 and "" text.
struct SpecialTokens {
  std::string bos, eos, pad, unk;
  int32_t bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;
};

// A named chat template (tokenizer_config.json `chat_template`; a plain
// string is returned as {"default", text}).
struct ChatTemplate {
  std::string name;
  std::string source;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids for `text` (UTF-8; invalid UTF-8 throws).
  std::vector<int32_t> encode(const std::string& text, const EncodeOptions& opt = {}) const;
  // The same tokens with the byte offsets they cover in `text`.
  virtual std::vector<Token> encode_with_offsets(const std::string& text,
                                                 const EncodeOptions& opt = {}) const = 0;
  // Text for `ids` as transformers' `decode(ids, skip_special_tokens=...)`
  // (no clean_up_tokenization_spaces: transformers 5 skips it for BPE).
  // Unknown ids are dropped, as in `tokenizers`.
  virtual std::string decode(const std::vector<int32_t>& ids,
                             bool skip_special_tokens = false) const = 0;

  // The vocabulary string of `id` ("" and false when out of range).
  virtual bool id_to_token(int32_t id, std::string* token) const = 0;
  // The id of a vocabulary or added-token string, or nullopt.
  virtual std::optional<int32_t> token_to_id(const std::string& token) const = 0;
  // Number of ids including added tokens (max id + 1).
  virtual int32_t vocab_size() const = 0;

  const SpecialTokens& special_tokens() const { return special_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  // Ids that end generation: generation_config.json eos_token_id (int or
  // list) when present, else the tokenizer's eos id; unique, in file order.
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  // Chat templates from tokenizer_config.json (empty when none).
  const std::vector<ChatTemplate>& chat_templates() const { return chat_templates_; }
  // The template called `name`; nullopt when none. As in transformers, a
  // tokenizer whose named templates include no "default" has no default
  // one, even with a single entry.
  std::optional<std::string> chat_template(const std::string& name = "default") const;
  // Why chat_template() is empty, for messages after description():
  // "has no chat template" or "has chat templates 'tool_use' but none
  // named 'default'".
  std::string missing_chat_template() const;
  // What was loaded, for messages: "<dir>/tokenizer.json (LlamaTokenizer)".
  const std::string& description() const { return description_; }

 protected:
  friend struct TokenizerLoader;
  SpecialTokens special_;
  std::vector<AddedToken> added_;
  std::vector<int32_t> eos_ids_;
  std::vector<ChatTemplate> chat_templates_;
  std::string description_;
};

// Loads the tokenizer of a model directory: tokenizer.json when present (as
// transformers' fast tokenizers prefer it), else tokenizer.model
// (SentencePiece); plus tokenizer_config.json and generation_config.json when
// present. Throws loratune::Error naming the file and problem when none is
// usable, a file is malformed, or a component/option is not supported.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir);

}  // namespace loratune::tokenizer
