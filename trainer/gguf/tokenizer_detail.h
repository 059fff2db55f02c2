// trainer/gguf/tokenizer_detail.h — internals shared by the GGUF tokenizer
// builders (tokenizer.cpp: the common keys, gpt2 and the output files;
// tokenizer_spm.cpp: llama/SentencePiece). Not part of the gguf API.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "trainer/gguf/gguf.h"

namespace loratune::gguf::detail {

using Json = nlohmann::ordered_json;

// llama.cpp's token types (tokenizer.ggml.token_type).
enum TokenType : int64_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// The tokenizer.* keys every tokenizer model shares, read and checked once.
struct GgufVocab {
  std::string model;                 // tokenizer.ggml.model
  const std::vector<Value>* tokens;  // tokenizer.ggml.tokens (strings, file order)
  std::vector<int64_t> types;        // per token; kNormal where the file has no token_type
  int64_t bos = -1, eos = -1, unk = -1, pad = -1;  // -1: key absent
  bool add_bos = false, add_eos = false;
  const std::string& token(int64_t id) const { return (*tokens)[static_cast<size_t>(id)].s; }
  int64_t size() const { return static_cast<int64_t>(tokens->size()); }
};

// What a tokenizer model contributes to tokenizer.json. `added` maps an id to
// its added-token object; a later insert for the same id replaces the earlier
// one, as re-adding a token does in the tokenizers library.
struct TokenizerParts {
  std::map<int64_t, Json> added;
  Json normalizer;  // null for none
  Json pre_tokenizer;
  Json decoder;
  Json model;
  // The id the vocabulary gives a token's text (-1 when it has none): a text
  // that occurs twice in tokenizer.ggml.tokens maps to its last id.
  std::map<std::string, int64_t> text_ids;
};

// A vocabulary object built as a Python dict is: a text seen again keeps its
// first position and takes the later id. ordered_json's operator[] searches
// linearly (quadratic over a 256k vocabulary); this indexes the texts.
class VocabBuilder {
 public:
  void set(const std::string& text, int64_t id) {
    auto [it, fresh] = index_.emplace(text, vocab_.size());
    if (fresh) {
      vocab_.get_ref<Json::object_t&>().emplace_back(text, id);
    } else {
      (vocab_.get_ref<Json::object_t&>().begin() + static_cast<std::ptrdiff_t>(it->second))
          ->second = id;
    }
  }
  bool contains(const std::string& text) const { return index_.count(text) != 0; }
  Json take() { return std::move(vocab_); }

 private:
  Json vocab_ = Json::object();
  std::unordered_map<std::string, size_t> index_;
};

// tokenizer.json's added-token object.
Json added_token(int64_t id, const std::string& content, bool special);

// UTF-8 -> code points; false for an invalid sequence (overlong forms and
// surrogates included).
bool code_points(const std::string& s, std::vector<uint32_t>* out);

// The split regex transformers' GGUF_PRE_TOKENIZER_SPLITS gives a
// tokenizer.ggml.pre name; nullptr for a name without one (plain ByteLevel).
const char* split_regex(const std::string& pre);

// tokenizer.ggml.model "llama": transformers' LlamaTokenizer over the file's
// vocabulary (tokenizer_spm.cpp).
TokenizerParts spm_parts(const GgufFile& f, const GgufVocab& v);

}  // namespace loratune::gguf::detail
