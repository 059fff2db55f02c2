// trainer/data/read.cpp — JSONL files -> Examples, with file:line errors;
// truncation and filtering.
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/data/data.h"
#include "trainer/data/detail.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"

namespace loratune::data {
namespace {

// Skipped records reported one by one before only the total is.
constexpr int64_t kMaxSkipWarnings = 5;

bool is_blank(const std::string& s, size_t b, size_t e) {
  for (size_t i = b; i < e; ++i) {
    char c = s[i];
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  }
  return true;
}

// Record errors that data.skip_malformed may skip: the record's own content
// (kData) or a per-record safety limit (kResource), never a setup problem.
bool skippable(const Error& e) {
  return e.kind() == ErrorKind::kData || e.kind() == ErrorKind::kResource;
}

// Reads one file, appending its examples and counting into *stats.
void read_one(const std::string& path, const ExampleEncoder& enc, const config::DataConfig& cfg,
              std::vector<Example>* out, DataStats* stats, const WarnFn& warn) {
  std::string text;
  try {
    text = io::read_file(path);
  } catch (const Error& e) {
    // Whatever io reports (missing, a directory, permission) is the file
    // system's answer; a more specific kind (kResource) is kept.
    if (e.kind() == ErrorKind::kConfig || e.kind() == ErrorKind::kCorrupt) {
      throw Error(std::string("data file: ") + e.what(), ErrorKind::kIo);
    }
    throw Error("data file: ", e);
  }
  detail::ReadProgress progress(path, text.size());
  size_t pos = 0;
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) pos = 3;  // UTF-8 BOM
  DataFormat file_format = cfg.format;
  int64_t format_line = 0;
  int64_t line = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line;
    const size_t b = pos;
    pos = end + 1;
    if (is_blank(text, b, end)) continue;
    ++stats->records;
    progress.update(stats->records, pos);
    try {
      Json rec =
          io::parse_ordered_json(std::string_view(text).substr(b, end - b), "", ErrorKind::kData);
      DataFormat f = cfg.format;
      if (f == DataFormat::kAuto) {
        f = ExampleEncoder::detect(rec);
        if (file_format == DataFormat::kAuto) {
          file_format = f;
          format_line = line;
        } else if (f != file_format) {
          throw Error("record is " + config::to_string(f) + " but line " +
                          std::to_string(format_line) + " of this file is " +
                          config::to_string(file_format) +
                          " (one format per file; set data.format to force one)",
                      ErrorKind::kData);
        }
      }
      out->push_back(enc.encode(rec, f));
    } catch (const Error& e) {
      const std::string where = path + ":" + std::to_string(line) + ": ";
      if (!cfg.skip_malformed || !skippable(e)) throw Error(where, e);
      const std::string msg = where + e.what();
      if (++stats->skipped_malformed <= kMaxSkipWarnings) {
        detail::emit_warning(warn, "skipping malformed record: " + msg);
      }
    }
  }
}

}  // namespace

namespace detail {

void emit_warning(const WarnFn& warn, const std::string& msg) {
  if (warn) {
    warn(msg);
  } else {
    std::cerr << "loratune: warning: " << msg << "\n";
  }
}

}  // namespace detail

std::vector<Example> read_files(const std::vector<std::string>& files, const ExampleEncoder& enc,
                                const config::DataConfig& cfg, DataStats* stats,
                                const WarnFn& warn) {
  DataStats local;
  DataStats* s = stats ? stats : &local;
  const int64_t skipped_before = s->skipped_malformed;
  std::vector<Example> out;
  for (const auto& f : files) read_one(f, enc, cfg, &out, s, warn);
  const int64_t skipped = s->skipped_malformed - skipped_before;
  if (skipped > kMaxSkipWarnings) {
    detail::emit_warning(warn,
                         "skipped " + std::to_string(skipped) + " malformed records in total");
  }
  return out;
}

void truncate_and_filter(std::vector<Example>* examples, int64_t max_seq_len, DataStats* stats) {
  if (max_seq_len < 2)
    throw Error("data.max_seq_len must be >= 2, got " + std::to_string(max_seq_len));
  const size_t cap = static_cast<size_t>(max_seq_len);
  size_t kept = 0;
  for (size_t i = 0; i < examples->size(); ++i) {
    Example& ex = (*examples)[i];
    bool cut = false;
    if (ex.input_ids.size() > cap) {
      // Were there targets at all? (Then cutting is what removed them.)
      for (size_t t = 1; t < ex.labels.size() && !cut; ++t) cut = ex.labels[t] != kIgnoreIndex;
      ex.input_ids.resize(cap);
      ex.labels.resize(cap);
      ++stats->truncated;
    }
    int64_t targets = 0;
    for (size_t t = 1; t < ex.labels.size(); ++t) targets += ex.labels[t] != kIgnoreIndex;
    if (targets == 0) {
      ++stats->dropped_no_targets;
      ++(cut ? stats->dropped_truncated : stats->dropped_empty);
      continue;
    }
    stats->tokens += static_cast<int64_t>(ex.input_ids.size());
    stats->target_tokens += targets;
    if (kept != i) (*examples)[kept] = std::move(ex);
    ++kept;
  }
  examples->resize(kept);
  stats->examples = static_cast<int64_t>(kept);
}

}  // namespace loratune::data
