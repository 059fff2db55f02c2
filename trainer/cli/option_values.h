// trainer/cli/option_values.h — numeric command-line values, parsed and
// range-checked here rather than by CLI11: CLI11's conversion and validator
// errors print a second "Run with --help" line, and say nothing of the range.
// Options whose value needs checking are declared as strings and read with
// these after parsing; a bad value is one loratune::Error line (kConfig)
// naming the option, the value and the valid range:
//   --top-p: 5 is out of range; expected a number in (0, 1]
//   --top-k: 'many' is not an integer; expected an integer in [0, 2147483647]
#pragma once

#include <cstdint>
#include <limits>
#include <string>

namespace loratune::cli {

// `text` as a base-10 integer in [lo, hi] (no sign other than '-', no
// trailing characters, no overflow). Throws Error naming `option`.
int64_t int_option(const std::string& option, const std::string& text, int64_t lo, int64_t hi);

// `text` as a finite number in the interval from lo to hi, each end open or
// closed; hi = infinity means no upper bound ("a finite number >= 0"). NaN
// and infinities are always rejected. Throws Error naming `option`.
double double_option(const std::string& option, const std::string& text, double lo, bool lo_open,
                     double hi = std::numeric_limits<double>::infinity(), bool hi_open = false);

// "an integer in [1, 1023]", the phrase int_option's errors use; for
// messages that check a range known only later (e.g. the model's context).
std::string int_range_text(int64_t lo, int64_t hi);

}  // namespace loratune::cli
