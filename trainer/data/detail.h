// trainer/data/detail.h — internals shared by the trainer/data sources (not a
// public interface; include only from trainer/data/*.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/data/data.h"

namespace loratune::data::detail {

// Sends `msg` to `warn`, or to stderr as "loratune: warning: <msg>".
void emit_warning(const WarnFn& warn, const std::string& msg);

// The chat template source that `cfg` selects for `tok` ("" when "auto" and
// the tokenizer has none). Throws for an unknown built-in name.
std::string chat_template_source(const tokenizer::Tokenizer& tok, const config::DataConfig& cfg);

// Tokenized examples of one set of files, as stored in the cache.
struct EncodedFiles {
  std::vector<Example> examples;
  int64_t records = 0;
  int64_t skipped_malformed = 0;
};

// The cache key (32 bytes of SHA-256) for encoding `files` with `cfg`.
std::string cache_key(const std::vector<std::string>& files, const config::DataConfig& cfg,
                      const std::string& template_source, const std::string& tokenizer_dir);
// Serialises `e` with `key` into the cache file format, and back. decode
// returns false (with the reason in *why) for anything that is not a valid,
// complete cache file for `key`.
std::string encode_cache(const EncodedFiles& e, const std::string& key);
bool decode_cache(const std::string& bytes, const std::string& key, EncodedFiles* out,
                  std::string* why);

}  // namespace loratune::data::detail
