// Progress on stderr: a \r-updated bar on a TTY, plain lines otherwise.
#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "trainer/train/train.h"

namespace loratune::train {

namespace {

std::string hms(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600) {
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  }
  return buf;
}

}  // namespace

Progress::Progress(int64_t total_steps, bool force_plain, bool silent)
    : total_(total_steps), tty_(!force_plain && isatty(STDERR_FILENO) == 1), silent_(silent) {}

void Progress::update(int64_t step, double loss, double lr, double tokens_per_s, double elapsed_s,
                      double grad_norm) {
  if (silent_) return;
  const double eta = step > 0 ? elapsed_s / step * static_cast<double>(total_ - step) : NAN;
  if (tty_) {
    constexpr int kWidth = 24;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * step / total_) : 0;
    std::string bar(filled, '#');
    bar += std::string(kWidth - filled, '.');
    std::fprintf(stderr, "\r[%s] %lld/%lld loss %.4f lr %.3g %.0f tok/s ETA %s\x1b[K", bar.c_str(),
                 static_cast<long long>(step), static_cast<long long>(total_), loss, lr,
                 tokens_per_s, hms(eta).c_str());
    bar_shown_ = true;
  } else {
    std::fprintf(stderr,
                 "step %lld/%lld loss %.6f lr %.6g grad_norm %.4f tokens/s %.0f elapsed %s "
                 "eta %s\n",
                 static_cast<long long>(step), static_cast<long long>(total_), loss, lr, grad_norm,
                 tokens_per_s, hms(elapsed_s).c_str(), hms(eta).c_str());
  }
  std::fflush(stderr);
}

void Progress::message(const std::string& line) {
  if (silent_) return;
  if (bar_shown_) std::fputs("\r\x1b[K", stderr);
  std::fprintf(stderr, "%s\n", line.c_str());
  bar_shown_ = false;
  std::fflush(stderr);
}

void Progress::finish() {
  if (bar_shown_) std::fputs("\n", stderr);
  bar_shown_ = false;
  std::fflush(stderr);
}

}  // namespace loratune::train
