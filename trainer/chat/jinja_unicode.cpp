// trainer/chat/jinja_unicode.cpp — lookups in the generated Unicode tables.
#include "trainer/chat/jinja_unicode.h"

#include <utf8proc.h>

#include <algorithm>

namespace loratune::jinja::unicode {
namespace {

const SpecialCase* find_special(const SpecialCase* table, size_t n, char32_t c) {
  const SpecialCase* end = table + n;
  const SpecialCase* it =
      std::lower_bound(table, end, c, [](const SpecialCase& s, char32_t x) { return s.cp < x; });
  return it != end && it->cp == c ? it : nullptr;
}

bool in_ranges(const CodeRange* table, size_t n, char32_t c) {
  const CodeRange* end = table + n;
  const CodeRange* it =
      std::lower_bound(table, end, c, [](const CodeRange& r, char32_t x) { return r.last < x; });
  return it != end && it->first <= c;
}

bool append_special(const SpecialCase* table, size_t n, char32_t c, std::u32string& out) {
  const SpecialCase* s = find_special(table, n, c);
  if (!s) return false;
  for (char32_t m : s->map) {
    if (m != 0) out += m;
  }
  return true;
}

}  // namespace

bool is_cased(char32_t c) {
  return in_ranges(kCased, kCasedSize, c);
}

bool is_case_ignorable(char32_t c) {
  return in_ranges(kCaseIgnorable, kCaseIgnorableSize, c);
}

int decimal_value(char32_t c) {
  if (c >= '0' && c <= '9') return static_cast<int>(c - '0');
  const char32_t* end = kDecimalZeros + kDecimalZerosSize;
  const char32_t* it = std::upper_bound(kDecimalZeros, end, c);
  if (it == kDecimalZeros) return -1;
  const char32_t zero = *(it - 1);
  return c - zero < 10 ? static_cast<int>(c - zero) : -1;
}

namespace {
utf8proc_category_t category(char32_t c) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(c));
}
}  // namespace

bool is_lower(char32_t c) {
  return category(c) == UTF8PROC_CATEGORY_LL || in_ranges(kOtherLowercase, kOtherLowercaseSize, c);
}

bool is_upper(char32_t c) {
  return category(c) == UTF8PROC_CATEGORY_LU || in_ranges(kOtherUppercase, kOtherUppercaseSize, c);
}

bool is_title(char32_t c) {
  return category(c) == UTF8PROC_CATEGORY_LT;
}

bool is_digit(char32_t c) {
  return category(c) == UTF8PROC_CATEGORY_ND ||
         in_ranges(kDigitNotDecimal, kDigitNotDecimalSize, c);
}

bool is_numeric(char32_t c) {
  return is_digit(c) || in_ranges(kNumericNotDigit, kNumericNotDigitSize, c);
}

void append_upper(char32_t c, std::u32string& out) {
  if (!append_special(kUpperSpecial, kUpperSpecialSize, c, out))
    out += static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c)));
}

void append_title(char32_t c, std::u32string& out) {
  if (!append_special(kTitleSpecial, kTitleSpecialSize, c, out))
    out += static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c)));
}

void append_lower(const std::u32string& s, size_t i, std::u32string& out) {
  const char32_t c = s[i];
  if (c == 0x3A3) {
    // CPython's handle_capital_sigma: final when a Cased code point precedes
    // and none follows (Case_Ignorable ones skipped both ways).
    size_t j = i;
    while (j > 0 && is_case_ignorable(s[j - 1])) --j;
    bool final_sigma = j > 0 && is_cased(s[j - 1]);
    if (final_sigma) {
      size_t k = i + 1;
      while (k < s.size() && is_case_ignorable(s[k])) ++k;
      final_sigma = k == s.size() || !is_cased(s[k]);
    }
    out += final_sigma ? char32_t{0x3C2} : char32_t{0x3C3};
    return;
  }
  if (!append_special(kLowerSpecial, kLowerSpecialSize, c, out))
    out += static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
}

void append_fold(char32_t c, std::u32string& out) {
  if (append_special(kFoldSpecial, kFoldSpecialSize, c, out)) return;
  if (!append_special(kLowerSpecial, kLowerSpecialSize, c, out))
    out += static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
}

}  // namespace loratune::jinja::unicode
