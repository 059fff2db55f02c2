// trainer/io/error.h — the one exception type library code throws.
//
// Library code never exits; it throws loratune::Error with a message that
// carries its context ("<file>:<line>: <what>", "<file>: tensor '<name>': ...").
// Only main() turns errors into exit codes and one line for the user.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace loratune {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace io {
using Error = ::loratune::Error;
}  // namespace io

// The candidate in `choices` closest to `key` by edit distance, or "" when
// none is reasonably close. Used for "did you mean ..." in error messages.
std::string closest_match(const std::string& key, const std::vector<std::string>& choices);

}  // namespace loratune
