// trainer/chat/jinja_lexer.cpp — template source to tokens, with the
// whitespace rules of jinja2.lexer under trim_blocks=True, lstrip_blocks=True.
#include <cctype>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "trainer/chat/jinja_ast.h"
#include "trainer/io/error.h"

namespace loratune::jinja {
namespace {

// Length in bytes of the Python-whitespace code point at s[i], or 0.
size_t space_len(const std::string& s, size_t i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return is_py_space(c) ? 1 : 0;
  size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + len > s.size()) return 0;
  std::u32string cp = decode_utf8(s.substr(i, len));
  return cp.size() == 1 && is_py_space(cp[0]) ? len : 0;
}

// Python str.rstrip() on UTF-8.
std::string rstrip_py(const std::string& s) {
  std::u32string u = decode_utf8(s);
  while (!u.empty() && is_py_space(u.back())) u.pop_back();
  return encode_utf8(u);
}

bool all_space(const std::string& s) {
  for (char32_t c : decode_utf8(s)) {
    if (!is_py_space(c)) return false;
  }
  return true;
}

class Lexer {
 public:
  Lexer(std::string src, const std::string& name) : src_(std::move(src)), name_(name) {}

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t tag = find_tag(pos_);
      std::string text = src_.substr(pos_, tag - pos_);
      int text_line = line_;
      if (tag == src_.size()) {
        emit(Token::Kind::kText, text, text_line);
        advance_to(tag);
        break;
      }
      char type = src_[tag + 1];  // '{', '%' or '#'
      char sign = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
      if (sign == '-') {
        text = rstrip_py(text);
      } else if (sign != '+' && type != '{') {
        size_t l = text.rfind('\n');
        l = l == std::string::npos ? 0 : l + 1;
        if ((l > 0 || line_starting) && l < text.size() && all_space(text.substr(l))) {
          text = text.substr(0, l);
        }
      }
      emit(Token::Kind::kText, text, text_line);
      advance_to(tag + 2 + ((sign == '-' || sign == '+') ? 1 : 0));
      if (type == '#') {
        line_starting = skip_comment();
      } else if (type == '%' && is_raw()) {
        line_starting = lex_raw();
      } else {
        line_starting = lex_tag(type == '%');
      }
    }
    tokens_.push_back({Token::Kind::kEnd, "", line_});
    return tokens_;
  }

 private:
  [[noreturn]] void fail(int line, const std::string& what) const {
    throw Error(name_ + " line " + std::to_string(line) + ": " + what, ErrorKind::kCorrupt);
  }

  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))
        return i;
    }
    return src_.size();
  }

  void advance_to(size_t p) {
    for (size_t i = pos_; i < p && i < src_.size(); ++i) {
      if (src_[i] == '\n') ++line_;
    }
    pos_ = p;
  }

  void emit(Token::Kind kind, std::string text, int line) {
    if (kind == Token::Kind::kText && text.empty()) return;
    tokens_.push_back({kind, std::move(text), line});
  }

  // After a closing delimiter at pos_ (already consumed): '-' strips all
  // following whitespace, block ends eat one newline (trim_blocks). Returns
  // whether the consumed text ends with a newline (jinja's line_starting).
  bool after_close(bool minus, bool plus, bool is_block) {
    bool newline = false;
    if (minus) {
      while (pos_ < src_.size()) {
        size_t n = space_len(src_, pos_);
        if (n == 0) break;
        newline = src_[pos_] == '\n';
        advance_to(pos_ + n);
      }
    } else if (is_block && !plus && pos_ < src_.size() && src_[pos_] == '\n') {
      advance_to(pos_ + 1);
      newline = true;
    }
    return newline;
  }

  bool skip_comment() {
    int start = line_;
    size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) fail(start, "unclosed comment '{#'");
    bool minus = end > pos_ && src_[end - 1] == '-';
    bool plus = end > pos_ && src_[end - 1] == '+';
    advance_to(end + 2);
    return after_close(minus, plus, true);
  }

  bool is_raw() const {
    size_t p = pos_;
    while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
    return src_.compare(p, 3, "raw") == 0 &&
           (p + 3 >= src_.size() || !std::isalnum(static_cast<unsigned char>(src_[p + 3])));
  }

  bool lex_raw() {
    int start = line_;
    size_t close = src_.find("%}", pos_);
    if (close == std::string::npos) fail(start, "unclosed '{% raw'");
    bool minus = src_[close - 1] == '-';
    advance_to(close + 2);
    after_close(minus, false, true);
    for (size_t p = src_.find("{%", pos_); p != std::string::npos; p = src_.find("{%", p + 2)) {
      size_t q = p + 2;
      bool inner_minus = q < src_.size() && src_[q] == '-';
      if (inner_minus || (q < src_.size() && src_[q] == '+')) ++q;
      while (q < src_.size() && std::isspace(static_cast<unsigned char>(src_[q]))) ++q;
      if (src_.compare(q, 6, "endraw") != 0) continue;
      size_t end = src_.find("%}", q);
      if (end == std::string::npos) break;
      std::string text = src_.substr(pos_, p - pos_);
      if (inner_minus) text = rstrip_py(text);
      emit(Token::Kind::kText, text, line_);
      bool end_minus = src_[end - 1] == '-';
      advance_to(end + 2);
      return after_close(end_minus, false, true);
    }
    fail(start, "'{% raw %}' without '{% endraw %}'");
  }

  // Lexes the inside of {{ ... }} or {% ... %}; returns line_starting.
  bool lex_tag(bool is_block) {
    int begin_line = line_;
    emit(is_block ? Token::Kind::kBlockBegin : Token::Kind::kVarBegin, "", line_);
    int depth = 0;
    const std::string close = is_block ? "%}" : "}}";
    while (true) {
      while (pos_ < src_.size() && std::isspace(static_cast<unsigned char>(src_[pos_])))
        advance_to(pos_ + 1);
      if (pos_ >= src_.size())
        fail(begin_line, std::string("unclosed '") + (is_block ? "{%" : "{{") + "'");
      if (depth == 0) {
        char c = src_[pos_];
        bool minus = c == '-' && src_.compare(pos_ + 1, 2, close) == 0;
        bool plus = is_block && c == '+' && src_.compare(pos_ + 1, 2, close) == 0;
        if (minus || plus || src_.compare(pos_, 2, close) == 0) {
          emit(is_block ? Token::Kind::kBlockEnd : Token::Kind::kVarEnd, "", line_);
          advance_to(pos_ + 2 + ((minus || plus) ? 1 : 0));
          return after_close(minus, plus, is_block);
        }
      }
      lex_expr_token(depth);
    }
  }

  void lex_expr_token(int& depth) {
    char c = src_[pos_];
    int line = line_;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = pos_;
      while (e < src_.size() &&
             (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
        ++e;
      emit(Token::Kind::kName, src_.substr(pos_, e - pos_), line);
      advance_to(e);
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      lex_number(line);
    } else if (c == '\'' || c == '"') {
      lex_string(c, line);
    } else {
      // Two-character operators first, then single characters.
      static const char* kOps2[] = {"**", "//", "==", "!=", ">=", "<="};
      size_t len = 0;
      if (pos_ + 1 < src_.size()) {
        for (const char* op : kOps2) {
          if (src_[pos_] == op[0] && src_[pos_ + 1] == op[1]) len = 2;
        }
      }
      if (len == 0 && std::strchr("+-*/%~<>=()[]{},.:|", c) != nullptr && c != '\0') len = 1;
      if (len > 0) {
        std::string o = src_.substr(pos_, len);
        if (o == "(" || o == "[" || o == "{") ++depth;
        if (o == ")" || o == "]" || o == "}") {
          if (depth == 0) fail(line, "unexpected '" + o + "'");
          --depth;
        }
        emit(Token::Kind::kOp, o, line);
        advance_to(pos_ + len);
        return;
      }
      fail(line, std::string("unexpected character '") + c + "'");
    }
  }

  void lex_number(int line) {
    size_t e = pos_;
    auto digits = [&] {
      while (e < src_.size() &&
             (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
        ++e;
    };
    digits();
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      is_float = true;
      ++e;
      digits();
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t f = e + 1;
      if (f < src_.size() && (src_[f] == '+' || src_[f] == '-')) ++f;
      if (f < src_.size() && std::isdigit(static_cast<unsigned char>(src_[f]))) {
        is_float = true;
        e = f;
        digits();
      }
    }
    std::string text;
    for (size_t i = pos_; i < e; ++i) {
      if (src_[i] != '_') text += src_[i];
    }
    emit(is_float ? Token::Kind::kFloat : Token::Kind::kInt, text, line);
    advance_to(e);
  }

  // Python string literal escapes (jinja decodes with unicode-escape).
  void lex_string(char quote, int line) {
    std::string out;
    size_t i = pos_ + 1;
    while (true) {
      if (i >= src_.size()) fail(line, "unterminated string literal");
      char c = src_[i];
      if (c == quote) break;
      if (c != '\\' || i + 1 >= src_.size()) {
        out += c;
        ++i;
        continue;
      }
      char n = src_[i + 1];
      i += 2;
      switch (n) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '0':
          out += '\0';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case '\n':
          break;
        case 'x':
        case 'u':
        case 'U': {
          size_t len = n == 'x' ? 2 : n == 'u' ? 4 : 8;
          if (i + len > src_.size() ||
              src_.substr(i, len).find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
            fail(line, "truncated \\" + std::string(1, n) + " escape");
          char32_t cp = static_cast<char32_t>(std::stoul(src_.substr(i, len), nullptr, 16));
          if (cp > 0x10ffff) fail(line, "illegal Unicode character in \\U escape");
          out += encode_utf8(std::u32string(1, cp));
          i += len;
          break;
        }
        default:
          out += '\\';
          out += n;
      }
    }
    emit(Token::Kind::kString, out, line);
    advance_to(i + 1);
  }

  std::string src_;
  const std::string& name_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> lex(const std::string& source, const std::string& name, const Budgets& budgets) {
  // Every pass below is linear in the source; the size bound keeps the token
  // list and the parse small.
  if (source.size() > budgets.max_source_bytes) {
    throw Error(name + ": template source of " + std::to_string(source.size()) +
                    " bytes exceeds the limit of " + std::to_string(budgets.max_source_bytes) +
                    " bytes",
                ErrorKind::kResource);
  }
  // jinja2 normalises newlines and drops one trailing newline.
  std::string src;
  src.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      src += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      src += source[i];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  return Lexer(std::move(src), name).run();
}

}  // namespace loratune::jinja
