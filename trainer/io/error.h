// trainer/io/error.h — the one exception type library code throws.
//
// Library code never exits; it throws loratune::Error with a message that
// carries its context ("<file>:<line>: <what>", "<file>: tensor '<name>': ...")
// and a kind. Only main() turns errors into exit codes (exit_code below) and
// one line for the user.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace loratune {

// What went wrong, from the user's side. Each kind has its own exit code
// (README, "Exit codes"), so scripts can tell a typo from a full disk.
enum class ErrorKind {
  kConfig,       // 1: a config key, a command-line option, a bad combination of them
  kInternal,     // 2: a bug in loratune (never the user's input)
  kData,         // 3: training/eval data (JSONL records, chat conversations)
  kIo,           // 4: the file system: missing file, permission, disk full, lock held
  kCorrupt,      // 5: a model, tokenizer, adapter or checkpoint file that is malformed or lies
  kUnsupported,  // 6: valid input that loratune does not handle (architecture, dtype, feature)
  kResource,     // 7: out of memory, or a safety limit (template budgets, sizes) exceeded
};

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, ErrorKind kind = ErrorKind::kConfig)
      : std::runtime_error(what), kind_(kind) {}
  // A cause re-thrown with more context in front keeps the cause's kind.
  Error(const std::string& context, const Error& cause)
      : std::runtime_error(context + cause.what()), kind_(cause.kind()) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// The process exit code of a kind (1..7, see ErrorKind).
int exit_code(ErrorKind kind);
// "config", "internal", "data", "io", "corrupt", "unsupported", "resource".
const char* kind_name(ErrorKind kind);

namespace io {
using Error = ::loratune::Error;
}  // namespace io

// The candidate in `choices` closest to `key` by edit distance, or "" when
// none is reasonably close. Used for "did you mean ..." in error messages.
std::string closest_match(const std::string& key, const std::vector<std::string>& choices);

// `text` made safe for a one-line message: bytes that are not printable UTF-8
// (control characters, invalid sequences, newlines) become \xNN escapes, and
// text longer than `max_bytes` is cut with "...".
std::string printable(const std::string& text, size_t max_bytes = 200);

}  // namespace loratune
