// PCRE2 regexes for Oniguruma-style patterns from tokenizer.json.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "trainer/tokenizer/pipeline.h"

namespace loratune::tokenizer {

namespace {

// Unicode White_Space, which Oniguruma's \s matches (PCRE2+UCP adds U+180E).
constexpr const char* kSpaceRanges =
    "\\t-\\r\\x20\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
    "\\x{205f}\\x{3000}";

struct MatchData {
  pcre2_match_data* md = pcre2_match_data_create(32, nullptr);
  pcre2_match_context* ctx = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
  MatchData() { pcre2_jit_stack_assign(ctx, nullptr, stack); }
  ~MatchData() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(ctx);
    pcre2_jit_stack_free(stack);
  }
};

}  // namespace

std::string translate_onig_pattern(const std::string& p, const std::string& where) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[++i];
      if (n == 's') {
        out += in_class ? std::string(kSpaceRanges) : "[" + std::string(kSpaceRanges) + "]";
      } else if (n == 'S') {
        if (in_class)
          throw Error(where + ": regex '" + p + "': \\S inside a character class is not supported",
                      ErrorKind::kUnsupported);
        out += "[^" + std::string(kSpaceRanges) + "]";
      } else if (n == 'h' || n == 'H' || n == 'R' || n == 'X') {
        throw Error(where + ": regex '" + p + "': escape \\" + std::string(1, n) +
                        " differs between Oniguruma and PCRE2 and is not supported",
                    ErrorKind::kUnsupported);
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += "\\]", ++i;
      continue;
    }
    if (in_class && c == '[') {
      throw Error(where + ": regex '" + p + "': nested character classes are not supported",
                  ErrorKind::kUnsupported);
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, const std::string& where) {
  std::string pcre = translate_onig_pattern(pattern, where);
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre.data()), pcre.size(),
                             PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error(where + ": regex '" + pattern + "' does not compile (PCRE2 at offset " +
                    std::to_string(off) + ": " + reinterpret_cast<char*>(msg) + ")",
                ErrorKind::kCorrupt);
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::~Regex() {
  pcre2_code_free(static_cast<pcre2_code*>(code_));
}

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out,
                     bool keep_empty) const {
  thread_local MatchData data;
  auto* code = static_cast<pcre2_code*>(code_);
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  size_t last_end = std::string_view::npos;  // end of the previous match, if any
  while (pos <= s.size()) {
    int rc = jit_
                 ? pcre2_jit_match(code, subject, s.size(), pos, 0, data.md, data.ctx)
                 : pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, data.md, data.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw Error(std::string("regex match failed: ") + reinterpret_cast<char*>(msg),
                  ErrorKind::kResource);
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.md);
    size_t b = ov[0], e = ov[1];
    if (e > b || (keep_empty && e != last_end)) {
      out.emplace_back(b, e);
      pos = e;
      last_end = e;
    } else {
      // An empty match: skip it and move on one character.
      pos = b < s.size() ? b + utf8_len(static_cast<unsigned char>(s[b])) : s.size() + 1;
    }
  }
}

}  // namespace loratune::tokenizer
