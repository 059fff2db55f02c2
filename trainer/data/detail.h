// trainer/data/detail.h — internals shared by the trainer/data sources (not a
// public interface; include only from trainer/data/*.cpp).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "trainer/data/data.h"

namespace loratune::data::detail {

// Sends `msg` to `warn`, or to stderr as "loratune: warning: <msg>".
void emit_warning(const WarnFn& warn, const std::string& msg);

// The chat template source that `cfg` selects for `tok` ("" when "auto" and
// the tokenizer has none, or there is no tokenizer). Throws (kConfig) for an
// unknown built-in name.
std::string chat_template_source(const tokenizer::Tokenizer* tok, const config::DataConfig& cfg);

// Progress of reading one data file, on stderr: "tokenizing F: N records,
// X MB/s (P%)". On a TTY the line is redrawn in place at most 4 times a
// second and erased at the end; otherwise a plain line every ~5 s. Nothing is
// shown for the first second, so small files stay silent. `out` and
// `interval_s` (< 0: by the TTY rule) are for tests.
class ReadProgress {
 public:
  ReadProgress(std::string path, size_t total_bytes, std::FILE* out = stderr,
               double interval_s = -1);
  ~ReadProgress();
  ReadProgress(const ReadProgress&) = delete;
  ReadProgress& operator=(const ReadProgress&) = delete;
  // Cheap to call per record: it looks at the clock every 64 calls.
  void update(int64_t records, size_t bytes_done);

 private:
  void show(int64_t records, size_t bytes_done, double now_s);
  std::string path_;
  size_t total_;
  std::FILE* out_;
  bool tty_;
  double interval_s_;
  double start_s_;
  double next_s_;
  int64_t calls_ = 0;
  bool shown_ = false;  // a TTY line is on screen
};

// "train data a.jsonl, b.jsonl: 1000 records, 990 examples kept; 1 malformed
// skipped, 3 truncated to data.max_seq_len=2048, 2 dropped (no target token
// left after truncation), 4 dropped (no target token: all masked)", or "" when
// nothing was skipped, truncated or dropped.
std::string summary_line(const std::string& split, const std::vector<std::string>& files,
                         const DataStats& s, int64_t max_seq_len);

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
