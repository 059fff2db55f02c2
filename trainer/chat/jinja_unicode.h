// trainer/chat/jinja_unicode.h — Python's full Unicode case mapping and
// character properties.
//
// Python's str.upper()/lower()/title()/capitalize() use the full case
// mappings ('ß'.upper() == 'SS', 'ﬁ'.upper() == 'FI', 'İ'.lower() is two code
// points) and lower() writes a capital sigma at the end of a word as 'ς'
// (Final_Sigma). utf8proc gives the simple one-code-point mappings, which
// agree with Python's wherever Python's mapping is one code point; the
// tables in jinja_unicode_tables.cpp (generated from Python by
// jinja_unicode_gen.py) add the rest.
#pragma once

#include <cstddef>
#include <string>

namespace loratune::jinja::unicode {

struct SpecialCase {
  char32_t cp;
  char32_t map[3];  // zero-padded
};
struct CodeRange {
  char32_t first, last;
};

// jinja_unicode_tables.cpp (generated), sorted by code point.
extern const SpecialCase kUpperSpecial[];
extern const SpecialCase kLowerSpecial[];
extern const SpecialCase kTitleSpecial[];
extern const CodeRange kCaseIgnorable[];
extern const CodeRange kCased[];
extern const char32_t kDecimalZeros[];
extern const CodeRange kOtherLowercase[];
extern const CodeRange kOtherUppercase[];
extern const CodeRange kDigitNotDecimal[];
extern const CodeRange kNumericNotDigit[];
extern const SpecialCase kFoldSpecial[];
extern const size_t kUpperSpecialSize;
extern const size_t kLowerSpecialSize;
extern const size_t kTitleSpecialSize;
extern const size_t kCaseIgnorableSize;
extern const size_t kCasedSize;
extern const size_t kDecimalZerosSize;
extern const size_t kOtherLowercaseSize;
extern const size_t kOtherUppercaseSize;
extern const size_t kDigitNotDecimalSize;
extern const size_t kNumericNotDigitSize;
extern const size_t kFoldSpecialSize;

// Python's Cased and Case_Ignorable properties.
bool is_cased(char32_t c);
bool is_case_ignorable(char32_t c);
// The value of a Unicode decimal digit (what int() accepts), else -1.
int decimal_value(char32_t c);
// Python's one-code-point predicates: Lowercase (Ll + Other_Lowercase),
// Uppercase (Lu + Other_Uppercase), titlecase (Lt), and Numeric_Type
// (decimal ⊂ digit ⊂ numeric) — what str.islower/isupper/istitle/isdigit/
// isnumeric test code point by code point.
bool is_lower(char32_t c);
bool is_upper(char32_t c);
bool is_title(char32_t c);
bool is_digit(char32_t c);
bool is_numeric(char32_t c);

// Appends Python's full mapping of one code point.
void append_upper(char32_t c, std::u32string& out);
void append_title(char32_t c, std::u32string& out);
// Appends the lowercase of s[i], with the Final_Sigma rule for U+03A3.
void append_lower(const std::u32string& s, size_t i, std::u32string& out);
// Appends Python's casefold() of one code point (no Final_Sigma rule).
void append_fold(char32_t c, std::u32string& out);

}  // namespace loratune::jinja::unicode
