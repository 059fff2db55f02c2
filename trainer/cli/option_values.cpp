// trainer/cli/option_values.cpp — see option_values.h.
#include "trainer/cli/option_values.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "trainer/io/error.h"

namespace loratune::cli {
namespace {

// The shortest "%g" spelling that reads back as `v`: 0.5, 1e-05, 2.
std::string number_text(double v) {
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string double_range_text(double lo, bool lo_open, double hi, bool hi_open) {
  if (std::isinf(hi))
    return std::string("a finite number ") + (lo_open ? "> " : ">= ") + number_text(lo);
  return std::string("a number in ") + (lo_open ? "(" : "[") + number_text(lo) + ", " +
         number_text(hi) + (hi_open ? ")" : "]");
}

[[noreturn]] void bad_value(const std::string& option, const std::string& text, const char* what,
                            const std::string& expected) {
  throw Error(option + ": '" + printable(text, 60) + "' " + what + "; expected " + expected);
}

}  // namespace

std::string int_range_text(int64_t lo, int64_t hi) {
  return "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

int64_t int_option(const std::string& option, const std::string& text, int64_t lo, int64_t hi) {
  const std::string expected = int_range_text(lo, hi);
  const char* s = text.c_str();
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s, &end, 10);
  // strtoll skips leading blanks and accepts '+'; a value is digits only.
  const bool digits = !text.empty() && (text[0] == '-' || (text[0] >= '0' && text[0] <= '9'));
  if (!digits || end == s || *end != '\0') bad_value(option, text, "is not an integer", expected);
  if (errno == ERANGE || v < lo || v > hi) bad_value(option, text, "is out of range", expected);
  return static_cast<int64_t>(v);
}

double double_option(const std::string& option, const std::string& text, double lo, bool lo_open,
                     double hi, bool hi_open) {
  const std::string expected = double_range_text(lo, lo_open, hi, hi_open);
  const char* s = text.c_str();
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  const bool starts_ok = !text.empty() && text[0] != ' ' && text[0] != '\t';
  if (!starts_ok || end == s || *end != '\0') bad_value(option, text, "is not a number", expected);
  const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) &&
                  (std::isinf(hi) || (hi_open ? v < hi : v <= hi));
  if (!ok) bad_value(option, text, "is out of range", expected);
  return v;
}

}  // namespace loratune::cli
