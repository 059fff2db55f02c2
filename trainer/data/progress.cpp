// trainer/data/progress.cpp — what data preparation tells the user on stderr:
// progress while a large file is tokenized, and one summary line of what was
// skipped, truncated or dropped. (trainer/train has its own progress bar for
// steps; data must not depend on train, so this is a small one of its own.)
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "trainer/data/detail.h"
#include "trainer/io/error.h"

namespace loratune::data::detail {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr double kTtyInterval = 0.25;  // redraws per second on a terminal: 4
constexpr double kLogInterval = 5.0;   // a plain line every 5 s otherwise
constexpr double kQuietStart = 1.0;    // nothing for files read within a second

}  // namespace

ReadProgress::ReadProgress(std::string path, size_t total_bytes, std::FILE* out, double interval_s)
    : path_(std::move(path)),
      total_(total_bytes),
      out_(out),
      tty_(interval_s < 0 && out == stderr && isatty(STDERR_FILENO) == 1),
      interval_s_(interval_s >= 0 ? interval_s : (tty_ ? kTtyInterval : kLogInterval)),
      start_s_(now_s()),
      next_s_(start_s_ + (interval_s >= 0 ? interval_s : std::max(kQuietStart, interval_s_))) {}

ReadProgress::~ReadProgress() {
  if (shown_) {
    std::fputs("\r\x1b[K", out_);
    std::fflush(out_);
  }
}

void ReadProgress::update(int64_t records, size_t bytes_done) {
  // The clock is read every 64 records (a few microseconds of work each).
  if (interval_s_ > 0 && (++calls_ & 63) != 0) return;
  const double t = now_s();
  if (t < next_s_) return;
  next_s_ = t + interval_s_;
  show(records, bytes_done, t);
}

void ReadProgress::show(int64_t records, size_t bytes_done, double t) {
  const double mb_per_s = static_cast<double>(bytes_done) / 1e6 / std::max(1e-9, t - start_s_);
  const double pct = total_ > 0 ? 100.0 * static_cast<double>(bytes_done) / total_ : 100.0;
  char buf[96];
  std::snprintf(buf, sizeof buf, ": %lld records, %.1f MB/s (%.0f%%)",
                static_cast<long long>(records), mb_per_s, pct);
  const std::string line = "tokenizing " + printable(path_) + buf;
  if (tty_) {
    std::fprintf(out_, "\r%s\x1b[K", line.c_str());
    shown_ = true;
  } else {
    std::fprintf(out_, "loratune: %s\n", line.c_str());
  }
  std::fflush(out_);
}

std::string summary_line(const std::string& split, const std::vector<std::string>& files,
                         const DataStats& s, int64_t max_seq_len) {
  if (s.skipped_malformed == 0 && s.truncated == 0 && s.dropped_no_targets == 0) return "";
  std::string names;
  for (const auto& f : files) names += (names.empty() ? "" : ", ") + f;
  std::string line = split + " data " + printable(names) + ": " + std::to_string(s.records) +
                     " records, " + std::to_string(s.examples) + " examples kept";
  std::vector<std::string> parts;
  if (s.skipped_malformed > 0) {
    parts.push_back(std::to_string(s.skipped_malformed) +
                    " malformed skipped (data.skip_malformed)");
  }
  if (s.truncated > 0) {
    parts.push_back(std::to_string(s.truncated) +
                    " truncated to data.max_seq_len=" + std::to_string(max_seq_len));
  }
  if (s.dropped_truncated > 0) {
    parts.push_back(std::to_string(s.dropped_truncated) +
                    " dropped (no target token left after truncation)");
  }
  if (s.dropped_empty > 0) {
    parts.push_back(std::to_string(s.dropped_empty) +
                    " dropped (no target token: everything masked)");
  }
  for (size_t i = 0; i < parts.size(); ++i) line += (i == 0 ? "; " : ", ") + parts[i];
  return line;
}

}  // namespace loratune::data::detail
