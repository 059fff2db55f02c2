// trainer/tokenizer/loader.h — internal: what load_tokenizer reads from
// tokenizer_config.json / generation_config.json and hands to the two
// tokenizer implementations (hf_tokenizer.cpp, sp_tokenizer.cpp), and the
// added-token matcher both use.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "trainer/tokenizer/pipeline.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::tokenizer {

// A named special token of tokenizer_config.json: absent (the class default
// applies), explicitly null, or a token (string or AddedToken dict).
struct NamedToken {
  bool present = false;
  std::optional<AddedToken> token;  // id unset; present && !token = null
};

struct TokenizerConfig {
  std::string path;                         // "" when the directory has no tokenizer_config.json
  std::string tokenizer_class;              // without a "Fast" suffix
  std::map<std::string, NamedToken> named;  // bos_token, eos_token, unk_token, pad_token, ...
  std::optional<bool> add_bos_token, add_eos_token, add_prefix_space, legacy;
  std::vector<AddedToken> extra_special;                        // additional_/extra_special_tokens
  std::optional<std::vector<AddedToken>> added_tokens_decoder;  // with ids
  std::vector<ChatTemplate> chat_templates;
};

// Reads and parses a JSON file; errors name the file (and line:column).
Json read_json_file(const std::string& path);

// tokenizer.json with model.vocab / model.merges read into vectors (their
// place in `tree` holds null); has_* say whether they were present in the
// expected form (an object / a list).
struct TokenizerJson {
  Json tree;
  bool has_vocab = false, has_merges = false;
  std::vector<std::pair<std::string, int32_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
};
TokenizerJson read_tokenizer_json(const std::string& path);

TokenizerConfig read_tokenizer_config(const std::string& path);
// generation_config.json eos_token_id (int or list); empty when absent.
std::vector<int32_t> read_generation_eos(const std::string& path);

// Sets the protected fields of Tokenizer for the loaders.
struct TokenizerLoader {
  static void set_common(Tokenizer& t, SpecialTokens special, std::vector<AddedToken> added,
                         std::vector<int32_t> eos_ids, std::vector<ChatTemplate> templates,
                         std::string description) {
    t.special_ = std::move(special);
    t.added_ = std::move(added);
    t.eos_ids_ = std::move(eos_ids);
    t.chat_templates_ = std::move(templates);
    t.description_ = std::move(description);
  }
};

// tokenizers' AddedVocabulary matching: leftmost-longest search of token
// contents with the lstrip / rstrip / single_word rules.
class AddedMatcher {
 public:
  // `tokens` with their (possibly normalized) match strings.
  void build(const std::vector<std::pair<std::string, AddedToken>>& tokens);
  bool empty() const { return nodes_.size() <= 1; }
  // Splits `n` into pieces; matched pieces carry the token id, others -1.
  // With skip_special, special tokens are found but not used (as tokenizers'
  // encode_special_tokens).
  void split(const Normalized& n, bool skip_special,
             std::vector<std::pair<Normalized, int32_t>>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t token = -1;                                   // index into tokens_
  };
  std::vector<Node> nodes_{Node{}};
  std::vector<AddedToken> tokens_;
  bool first_byte_[256] = {};
};

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& dir, const std::string& json_path,
                                             const TokenizerConfig& cfg,
                                             const std::vector<int32_t>& gen_eos);
std::unique_ptr<Tokenizer> load_sp_tokenizer(const std::string& dir, const std::string& model_path,
                                             const TokenizerConfig& cfg,
                                             const std::vector<int32_t>& gen_eos);

}  // namespace loratune::tokenizer
