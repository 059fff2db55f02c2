// trainer/tokenizer/pipeline.h — internal: the pieces of a `tokenizers`
// pipeline (normalized strings with alignments, normalizers, pre-tokenizers,
// BPE, decoders, regexes) shared by the files of this folder. Not part of
// the public interface (tokenizer.h); only trainer/tokenizer includes it.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "trainer/io/error.h"

namespace loratune::tokenizer {

using Json = nlohmann::json;

// ---- UTF-8 and Unicode ---------------------------------------------------
// Byte length of the UTF-8 sequence starting with `lead` (1 for bytes that
// cannot start one, so callers always advance).
inline size_t utf8_len(unsigned char lead) {
  return lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 1;
}
// Decodes the code point at s[i] (valid UTF-8 assumed).
char32_t utf8_at(std::string_view s, size_t i);
void append_utf8(std::string& out, char32_t cp);
// Throws Error("<what>: invalid UTF-8 at byte N") unless `s` is valid UTF-8.
void check_utf8(std::string_view s, const std::string& what);
// Rust's String::from_utf8_lossy: invalid sequences become U+FFFD each
// maximal invalid subpart.
std::string utf8_lossy(std::string_view bytes);
// Rust char::is_whitespace (Unicode White_Space).
bool is_whitespace(char32_t c);
// Rust char::is_alphanumeric (Alphabetic or Numeric), via utf8proc categories.
bool is_alphanumeric(char32_t c);

// ---- Regex (PCRE2, UTF + UCP, JIT) ----------------------------------------
// Compiles an Oniguruma-style pattern (as written in tokenizer.json) for
// PCRE2: `\s`/`\S` become the explicit Unicode White_Space class Oniguruma
// uses (PCRE2's \s also matches U+180E). `where` names the file/component.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends the [begin, end) of every non-overlapping non-empty match; with
  // `keep_empty`, empty matches too, as the onig crate's find_iter yields
  // them (all but one right at the end of the previous match).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out,
                bool keep_empty = false) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};
// The PCRE2 translation of an Oniguruma pattern (exposed for tests).
std::string translate_onig_pattern(const std::string& pattern, const std::string& where);

// ---- Normalized strings -----------------------------------------------------
// A piece of the input as the pipeline rewrites it: `text` plus, for each
// byte of `text`, the byte range of the original input it came from.
// Alignment is implicit (identity from `base`) until a rewrite happens.
class Normalized {
 public:
  Normalized() = default;
  Normalized(std::string text, uint32_t base);
  const std::string& text() const { return text_; }
  // Original range of text bytes [b, e) (e > b), or an empty range at the
  // piece's original position for an empty text.
  std::pair<uint32_t, uint32_t> original(size_t b, size_t e) const;
  Normalized slice(size_t b, size_t e) const;
  // Replaces text[b, e) with `with`; the new bytes map to the original range
  // of the replaced bytes (or, for an insertion, of the neighbouring byte).
  // `edits` must be sorted and non-overlapping.
  struct Edit {
    size_t b, e;
    std::string with;
  };
  void apply(const std::vector<Edit>& edits);
  void prepend(const std::string& s) { apply({{0, 0, s}}); }

 private:
  void materialize();
  std::string text_;
  uint32_t base_ = 0;  // original offset of text_[0] while identity_
  uint32_t empty_at_ = 0;
  bool identity_ = true;
  std::vector<uint32_t> begin_, end_;
};

// ---- Components (built from tokenizer.json objects) -------------------------
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(Normalized& n) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces each piece by the pieces it splits into (empty ones dropped).
  virtual void pre_tokenize(std::vector<Normalized>& pieces) const = 0;
  // True for ByteLevel: the model then works on raw bytes (see Bpe).
  virtual bool byte_level() const { return false; }
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites the token strings in place (the `decode_chain` of tokenizers).
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// `where` is "<file>: <json path>" for messages. nullptr for a JSON null.
std::unique_ptr<Normalizer> make_normalizer(const Json& j, const std::string& where);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j, const std::string& where);
std::unique_ptr<Decoder> make_decoder(const Json& j, const std::string& where);

// The ids a post-processor puts around a single sequence.
struct PostProcessor {
  std::vector<int32_t> prefix, suffix;
};
PostProcessor make_post_processor(const Json& j, const std::string& where);

// Reads `key` of object `j` as type T with a default; wrong types throw.
bool json_bool(const Json& j, const char* key, bool dflt, const std::string& where);
std::string json_string(const Json& j, const char* key, const std::string& where);
// `key` of `j` as a string; absent or null give `dflt`, other types throw.
std::string json_opt_string(const Json& j, const char* key, const std::string& dflt,
                            const std::string& where);
// A token id: an integer in 0..INT32_MAX (tokenizers' ids are u32; larger
// ones are refused rather than truncated). `what` names the value.
int32_t json_id(const Json& v, const std::string& what);
// Rejects keys outside `known` ("type" is always allowed).
void check_keys(const Json& j, std::initializer_list<const char*> known, const std::string& where);

// The string "type" of a pipeline component object; `what` names the kind
// ("a decoder") in the error.
std::string component_type(const Json& j, const char* what, const std::string& where);

// The parts of a {"type": "Sequence", <key>: [...]} component, each built
// with make(json, where) (which is given "<where>.<key>[i]"); JSON nulls,
// for which make returns nullptr, are dropped. `at` names the component.
template <class Part, class Make>
std::vector<std::unique_ptr<Part>> make_sequence_parts(const Json& j, const char* key,
                                                       const std::string& where,
                                                       const std::string& at, Make&& make) {
  check_keys(j, {key}, at);
  auto list = j.find(key);
  if (list == j.end() || !list->is_array()) {
    throw Error(at + ": '" + key + "' must be a list", ErrorKind::kCorrupt);
  }
  std::vector<std::unique_ptr<Part>> parts;
  for (size_t i = 0; i < list->size(); ++i) {
    std::unique_ptr<Part> p = make((*list)[i], where + "." + key + "[" + std::to_string(i) + "]");
    if (p) parts.push_back(std::move(p));
  }
  return parts;
}

// ---- BPE model ---------------------------------------------------------------
struct BpeOptions {
  std::string unk_token;  // "" = none
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  // Symbols are raw bytes and vocab strings are read through the GPT-2
  // byte-to-unicode alphabet (the model follows a ByteLevel pre-tokenizer).
  bool byte_level = false;
};

class Bpe {
 public:
  // vocab: token -> id; merges: pairs of token strings in rank order.
  Bpe(std::unordered_map<std::string, int32_t> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions opt,
      const std::string& where);
  ~Bpe();
  // Appends the tokens of one pre-token (`word` in model symbols: raw bytes
  // when byte_level) with offsets relative to word.
  void tokenize(std::string_view word,
                std::vector<std::pair<int32_t, std::pair<uint32_t, uint32_t>>>& out) const;
  // The vocabulary string (as in tokenizer.json) of an id, or nullptr.
  const std::string* id_to_token(int32_t id) const;
  const int32_t* token_to_id(const std::string& token) const;
  int32_t size() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int32_t> vocab_;
};

// GPT-2 byte-level alphabet: byte -> code point, and its inverse (-1 = none).
char32_t byte_to_unicode(unsigned char b);
int unicode_to_byte(char32_t c);

}  // namespace loratune::tokenizer
