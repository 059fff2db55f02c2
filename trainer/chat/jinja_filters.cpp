// trainer/chat/jinja_filters.cpp — Jinja2's built-in filters and tests
// that chat templates use, plus transformers' tojson override
// (json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <string>

#include "trainer/chat/jinja_ast.h"
#include "trainer/chat/jinja_unicode.h"

namespace loratune::jinja {
namespace {

// Python's int()/float() read any Unicode decimal digit and space: the
// ASCII text they parse (empty when some other non-ASCII code point makes
// the string invalid), stripped.
std::string python_number_text(const std::string& s) {
  std::string out;
  for (char32_t c : decode_utf8(s)) {
    if (is_py_space(c)) {
      out += ' ';
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      const int d = unicode::decimal_value(c);
      if (d < 0) return "";
      out += static_cast<char>('0' + d);
    }
  }
  const size_t b = out.find_first_not_of(" \t\n\r\f\v");
  if (b == std::string::npos) return "";
  return out.substr(b, out.find_last_not_of(" \t\n\r\f\v") - b + 1);
}

// Python int(s, base) (base 0 or 2..36): false where Python raises
// ValueError; a value outside 64 bits is int_overflow().
bool parse_py_int(const std::string& text, int64_t base, int64_t& out) {
  const std::string s = python_number_text(text);
  size_t i = 0;
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  bool prefixed = false;
  if (s.size() - i >= 2 && s[i] == '0') {
    const char p = static_cast<char>(std::tolower(static_cast<unsigned char>(s[i + 1])));
    const int64_t pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
    if (pb != 0 && (base == 0 || base == pb)) {
      base = pb;
      i += 2;
      prefixed = true;
    }
  }
  // Base 0 without a prefix is decimal, where a leading zero makes only 0 valid.
  const bool zeros_only = base == 0 && i < s.size() && s[i] == '0';
  if (base == 0) base = 10;
  unsigned __int128 acc = 0;
  bool any = false, underscore = false, overflow = false;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '_') {
      if ((!any && !prefixed) || underscore) return false;  // only between digits / after 0x
      underscore = true;
      continue;
    }
    const int d = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                  : std::isalpha(static_cast<unsigned char>(c))
                      ? std::tolower(static_cast<unsigned char>(c)) - 'a' + 10
                      : 99;
    if (d >= base) return false;
    if (zeros_only && d != 0) return false;
    acc = acc * static_cast<unsigned>(base) + static_cast<unsigned>(d);
    if (acc > (static_cast<unsigned __int128>(1) << 64)) {
      overflow = true;  // keep validating: an invalid string is ValueError, not a big int
      acc = static_cast<unsigned __int128>(1) << 64;
    }
    any = true;
    underscore = false;
  }
  if (!any || underscore) return false;
  const unsigned __int128 limit = (static_cast<unsigned __int128>(1) << 63) - (neg ? 0 : 1);
  if (overflow || acc > limit) int_overflow();
  out = neg ? static_cast<int64_t>(uint64_t{0} - static_cast<uint64_t>(acc))
            : static_cast<int64_t>(acc);
  return true;
}

// Python float(s): false where Python raises ValueError.
bool parse_py_float(const std::string& text, double& out) {
  const std::string s = python_number_text(text);
  std::string clean;
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean += s[i++];
  std::string word;
  for (size_t k = i; k < s.size(); ++k)
    word += static_cast<char>(std::tolower(static_cast<unsigned char>(s[k])));
  if (word == "inf" || word == "infinity" || word == "nan") {
    const double v = word == "nan" ? std::nan("") : HUGE_VAL;
    out = !clean.empty() && clean[0] == '-' ? -v : v;
    return true;
  }
  // digit (_? digit)*
  auto digits = [&]() {
    size_t n = 0;
    while (i < s.size()) {
      if (std::isdigit(static_cast<unsigned char>(s[i]))) {
        clean += s[i++];
        ++n;
      } else if (s[i] == '_' && n > 0 && i + 1 < s.size() &&
                 std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
        ++i;
      } else {
        break;
      }
    }
    return n;
  };
  size_t n = digits();
  if (i < s.size() && s[i] == '.') {
    clean += s[i++];
    n += digits();
  }
  if (n == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    clean += s[i++];
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean += s[i++];
    if (digits() == 0) return false;
  }
  if (i != s.size()) return false;
  out = std::strtod(clean.c_str(), nullptr);
  return true;
}

// jinja2's do_int: int(value, base) for a str, else int(value); when that
// raises TypeError/ValueError, int(float(value)); when that fails too, the
// default.
Value int_filter(const Value& in, const Args& a) {
  const Value* dflt = a.get(0, "default");
  const Value fallback = dflt ? *dflt : Value(int64_t{0});
  switch (in.kind()) {
    case Value::Kind::kInt:
      return in;
    case Value::Kind::kBool:
      return Value(int64_t{in.as_bool()});
    case Value::Kind::kFloat:
      if (std::isnan(in.as_double())) return fallback;  // ValueError, and again via float()
      return Value(float_to_int(in.as_double()));       // inf: OverflowError is not caught
    case Value::Kind::kString: {
      const Value* b = a.get(1, "base");
      int64_t base = 10;
      bool base_ok = true;  // else int() raises TypeError/ValueError
      if (b) {
        base_ok = b->kind() == Value::Kind::kInt || b->kind() == Value::Kind::kBool;
        base = b->kind() == Value::Kind::kBool ? int64_t{b->as_bool()} : b->as_int();
        base_ok = base_ok && (base == 0 || (base >= 2 && base <= 36));
      }
      int64_t r = 0;
      if (base_ok && parse_py_int(in.str(), base, r)) return Value(r);
      double d = 0;
      if (!parse_py_float(in.str(), d) || std::isnan(d) || std::isinf(d)) return fallback;
      return Value(float_to_int(d));
    }
    default:
      return fallback;
  }
}

// Python round(x, ndigits) (jinja2's method 'common'): an int stays an int.
Value py_round(const Value& in, int64_t ndigits) {
  if (in.kind() == Value::Kind::kInt || in.kind() == Value::Kind::kBool) {
    const int64_t v = in.kind() == Value::Kind::kBool ? int64_t{in.as_bool()} : in.as_int();
    if (ndigits >= 0) return Value(v);
    if (ndigits < -38) return Value(int64_t{0});  // |v| < 10^19 <= 10^38 / 2
    __int128 pw = 1;
    for (int64_t k = 0; k < -ndigits; ++k) pw *= 10;
    __int128 q = v / pw, r = v % pw;
    if (r < 0) r += pw, --q;                               // floor division
    if (2 * r > pw || (2 * r == pw && (q & 1) != 0)) ++q;  // half to even
    const __int128 result = q * pw;
    if (result < INT64_MIN || result > INT64_MAX) int_overflow();
    return Value(static_cast<int64_t>(result));
  }
  const double x = in.as_double();
  if (!std::isfinite(x) || ndigits > 323) return Value(x);
  if (ndigits < -308) return Value(0.0 * x);
  if (ndigits >= 0) {
    // printf rounds the exact binary value half to even, as Python's dtoa does.
    char buf[720];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(ndigits), x);
    return Value(std::strtod(buf, nullptr));
  }
  const double pw = std::pow(10.0, static_cast<double>(-ndigits));
  return Value(std::nearbyint(x / pw) * pw);
}

// A unique filter key must be hashable, as in Python's set().
void check_hashable(const Value& v) {
  if (v.is_dict() || v.kind() == Value::Kind::kNamespace ||
      (v.is_list() && v.flavor() != Value::Flavor::kTuple))
    throw Failure{"unhashable type: '" + v.type_name() + "'"};
  if (v.is_list()) {
    for (const auto& e : v.items()) check_hashable(e);
  }
}

// jinja2's title filter: splits at runs of whitespace and -({[< and writes
// each piece's first code point in upper case and the rest in lower case.
std::string jinja_title(const std::string& s) {
  auto separator = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_py_space(c);
  };
  std::u32string u = decode_utf8(s);
  std::string out;
  size_t i = 0;
  while (i < u.size()) {
    if (separator(u[i])) {
      out += encode_utf8(u.substr(i, 1));
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < u.size() && !separator(u[j])) ++j;
    out +=
        py_upper(encode_utf8(u.substr(i, 1))) + py_lower(encode_utf8(u.substr(i + 1, j - i - 1)));
    i = j;
  }
  return out;
}

// Dotted attribute path as the attribute= argument of map/selectattr/sort.
Value attr_path(const Value& v, const std::string& path) {
  Value cur = v;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t dot = path.find('.', pos);
    std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    cur = !part.empty() && std::isdigit(static_cast<unsigned char>(part[0]))
              ? get_item(cur, Value(static_cast<int64_t>(std::strtoll(part.c_str(), nullptr, 10))))
              : get_attr(cur, part);
    if (dot == std::string::npos) break;
    pos = dot + 1;
  }
  return cur;
}

Args rest_args(const Args& a, size_t from) {
  Args r;
  for (size_t i = from; i < a.pos.size(); ++i) r.pos.push_back(a.pos[i]);
  r.kw = a.kw;
  return r;
}

Value select_like(const Value& in, Args& a, bool by_attr, bool keep) {
  List out;
  size_t argi = 0;
  std::string attr;
  if (by_attr) {
    if (a.pos.empty() || !a.pos[0].is_string())
      throw Failure{"selectattr/rejectattr need an attribute name"};
    attr = a.pos[0].str();
    argi = 1;
  }
  std::string test;
  if (a.pos.size() > argi) test = a.pos[argi].is_string() ? a.pos[argi].str() : "";
  Args targs = rest_args(a, argi + 1);
  for (const auto& e : iterate(in)) {
    Value x = by_attr ? attr_path(e, attr) : e;
    bool ok = test.empty() ? x.truthy() : apply_test(test, x, targs);
    if (ok == keep) out.push_back(e);
  }
  return Value::list(std::move(out));
}

Value tojson(const Value& in, const Args& a) {
  JsonOptions o;
  if (const Value* v = a.get(SIZE_MAX, "ensure_ascii")) o.ensure_ascii = v->truthy();
  if (const Value* v = a.get(SIZE_MAX, "sort_keys")) o.sort_keys = v->truthy();
  const Value* indent = a.get(0, "indent");
  if (indent && !indent->is_none()) {
    if (indent->kind() == Value::Kind::kInt)
      o.indent = static_cast<int>(std::clamp<int64_t>(indent->as_int(), -1, INT32_MAX));
    else if (indent->is_string())
      o.indent_str = indent->str();
    else
      throw Failure{"tojson: indent must be an int or str"};
    if (o.indent_str.empty() && o.indent < 0) o.indent = 0;
    o.item_sep = ",";
  }
  if (const Value* v = a.get(SIZE_MAX, "separators"); v && !v->is_none()) {
    if (!v->is_list() || v->items().size() != 2 || !v->items()[0].is_string() ||
        !v->items()[1].is_string()) {
      throw Failure{"tojson: separators must be a pair of strings"};
    }
    o.item_sep = v->items()[0].str();
    o.key_sep = v->items()[1].str();
  }
  o.max_bytes = active_budgets().max_value_bytes;
  if (o.indent > 0) check_value_bytes(static_cast<size_t>(o.indent), "tojson indent");
  return Value(to_json(in, o));
}

Value sort_list(const Value& in, const Args& a) {
  List items = iterate(in);
  const Value* rev = a.get(0, "reverse");
  const Value* cs = a.get(1, "case_sensitive");
  const Value* attr = a.get(2, "attribute");
  bool case_sensitive = cs && cs->truthy();
  auto key = [&](const Value& v) {
    Value k = attr && attr->is_string() ? attr_path(v, attr->str()) : v;
    return (!case_sensitive && k.is_string()) ? Value(py_lower(k.str())) : k;
  };
  std::stable_sort(items.begin(), items.end(),
                   [&](const Value& x, const Value& y) { return compare(key(x), key(y)) < 0; });
  if (rev && rev->truthy()) std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Jinja2's filters, one table entry each: names -> implementation. The
// function receives the name it was called by (some have two names).
using Filter = Value (*)(const std::string& f, const Value& in, Args& a);

const std::map<std::string, Filter>& filters() {
  static const std::map<std::string, Filter> table = [] {
    std::map<std::string, Filter> t;
    auto add = [&t](std::initializer_list<const char*> names, Filter fn) {
      for (const char* name : names) t[name] = fn;
    };
    add({"tojson"},
        [](const std::string&, const Value& in, Args& a) -> Value { return tojson(in, a); });
    add({"trim"}, [](const std::string&, const Value& in, Args& a) -> Value {
      return Value(py_strip(to_str(in), a.get(0, "chars"), true, true));
    });
    add({"length", "count"},
        [](const std::string&, const Value& in, Args&) -> Value { return Value(length(in)); });
    add({"string"},
        [](const std::string&, const Value& in, Args&) -> Value { return Value(to_str(in)); });
    add({"safe"}, [](const std::string&, const Value& in, Args&) -> Value {
      return in.is_string() ? in : Value(to_str(in));
    });
    add({"upper"}, [](const std::string&, const Value& in, Args&) -> Value {
      return Value(py_upper(to_str(in)));
    });
    add({"lower"}, [](const std::string&, const Value& in, Args&) -> Value {
      return Value(py_lower(to_str(in)));
    });
    add({"title"}, [](const std::string&, const Value& in, Args&) -> Value {
      return Value(jinja_title(to_str(in)));
    });
    add({"capitalize"}, [](const std::string&, const Value& in, Args&) -> Value {
      return Value(py_capitalize(to_str(in)));
    });
    add({"e", "escape"}, [](const std::string&, const Value& in, Args&) -> Value {
      return Value(html_escape(to_str(in)));
    });
    add({"default", "d"}, [](const std::string&, const Value& in, Args& a) -> Value {
      const Value* dflt = a.get(0, "default_value");
      const Value* boolean = a.get(1, "boolean");
      bool use = in.is_undefined() || (boolean && boolean->truthy() && !in.truthy());
      return use ? (dflt ? *dflt : Value("")) : in;
    });
    add({"first", "last"}, [](const std::string& f, const Value& in, Args&) -> Value {
      List items = iterate(in);
      if (items.empty()) return Value::undefined("No " + f + " item, sequence was empty.");
      return f == "first" ? items.front() : items.back();
    });
    add({"join"}, [](const std::string&, const Value& in, Args& a) -> Value {
      const Value* sep = a.get(0, "d");
      const Value* attr = a.get(1, "attribute");
      const std::string sep_text = sep ? to_str(*sep) : "";
      std::string out;
      bool first = true;
      for (const auto& e : iterate(in)) {
        std::string piece = to_str(attr ? attr_path(e, to_str(*attr)) : e);
        check_value_bytes(out.size() + (first ? 0 : sep_text.size()) + piece.size(), "join result");
        if (!first) out += sep_text;
        out += piece;
        first = false;
      }
      return Value(out);
    });
    add({"items"}, [](const std::string&, const Value& in, Args& a) -> Value {
      if (in.is_undefined()) return Value::list({});
      if (!in.is_dict()) throw Failure{"items filter: expected a mapping, got " + in.type_name()};
      Args none;
      Value r;
      call_method(in, "items", none, r);
      return r;
    });
    add({"dictsort"}, [](const std::string&, const Value& in, Args& a) -> Value {
      if (!in.is_dict()) throw Failure{"dictsort: expected a mapping, got " + in.type_name()};
      List pairs;
      for (const auto& [k, v] : in.dict_data().items) {
        pairs.push_back(Value::list({Value(k), v}, Value::Flavor::kTuple));
      }
      std::stable_sort(pairs.begin(), pairs.end(), [](const Value& x, const Value& y) {
        return py_lower(x.items()[0].str()) < py_lower(y.items()[0].str());
      });
      return Value::list(std::move(pairs));
    });
    add({"list"}, [](const std::string&, const Value& in, Args&) -> Value {
      return Value::list(iterate(in));
    });
    add({"reverse"}, [](const std::string&, const Value& in, Args&) -> Value {
      if (in.is_string()) {
        std::u32string u = decode_utf8(in.str());
        std::reverse(u.begin(), u.end());
        return Value(encode_utf8(u));
      }
      List items = iterate(in);
      std::reverse(items.begin(), items.end());
      return Value::list(std::move(items));
    });
    add({"int"},
        [](const std::string&, const Value& in, Args& a) -> Value { return int_filter(in, a); });
    add({"float"}, [](const std::string&, const Value& in, Args& a) -> Value {
      if (in.is_number()) return Value(in.as_double());
      if (in.kind() == Value::Kind::kBool) return Value(in.as_bool() ? 1.0 : 0.0);
      double d = 0;
      if (in.is_string() && parse_py_float(in.str(), d)) return Value(d);
      const Value* dflt = a.get(0, "default");
      return dflt ? *dflt : Value(0.0);
    });
    add({"abs"}, [](const std::string&, const Value& in, Args&) -> Value {
      if (in.kind() == Value::Kind::kBool) return Value(int64_t{in.as_bool()});
      if (in.kind() == Value::Kind::kInt)
        return Value(in.as_int() < 0 ? int_neg(in.as_int()) : in.as_int());
      if (in.is_number()) return Value(std::fabs(in.as_double()));
      throw Failure{"bad operand type for abs(): '" + in.type_name() + "'"};
    });
    add({"round"}, [](const std::string&, const Value& in, Args& a) -> Value {
      const Value* p = a.get(0, "precision");
      const Value* m = a.get(1, "method");
      const std::string method = m ? to_str(*m) : "common";
      if (method != "common" && method != "ceil" && method != "floor")
        throw Failure{"method must be common, ceil or floor"};
      if (p && p->kind() != Value::Kind::kInt && p->kind() != Value::Kind::kBool)
        throw Failure{"'" + p->type_name() + "' object cannot be interpreted as an integer"};
      const int64_t digits = !p ? 0 : p->kind() == Value::Kind::kBool ? p->as_bool() : p->as_int();
      if (!in.is_number() && in.kind() != Value::Kind::kBool)
        throw Failure{"type " + in.type_name() + " doesn't define __round__ method"};
      if (method == "common") return py_round(in, digits);
      // func(value * 10**digits) / 10**digits: always a float. For an int
      // and digits >= 0 that is float(value) exactly.
      const double x = in.kind() == Value::Kind::kBool ? in.as_bool() : in.as_double();
      if (in.kind() != Value::Kind::kFloat && digits >= 0) return Value(x);
      if (!std::isfinite(x)) throw Failure{"cannot convert float " + float_repr(x) + " to integer"};
      const double scale =
          std::pow(10.0, static_cast<double>(std::clamp<int64_t>(digits, -400, 400)));
      const double y = x * scale;
      return Value((method == "ceil" ? std::ceil(y) : std::floor(y)) / scale);
    });
    add({"replace"}, [](const std::string&, const Value& in, Args& a) -> Value {
      const Value* from = a.get(0, "old");
      const Value* to = a.get(1, "new");
      const Value* count = a.get(2, "count");
      if (!from || !to) throw Failure{"replace filter takes two arguments"};
      return Value(
          py_replace(to_str(in), to_str(*from), to_str(*to), count ? count->as_int() : -1));
    });
    add({"indent"}, [](const std::string&, const Value& in, Args& a) -> Value {
      const Value* w = a.get(0, "width");
      const Value* first = a.get(1, "first");
      const Value* blank = a.get(2, "blank");
      if (w && !w->is_string() && w->kind() != Value::Kind::kInt)
        throw Failure{"indent filter: width must be an int or str"};
      if (w && w->kind() == Value::Kind::kInt)
        check_value_bytes(static_cast<size_t>(std::max<int64_t>(w->as_int(), 0)), "indent width");
      std::string pad =
          w && w->is_string()
              ? w->str()
              : std::string(w ? static_cast<size_t>(std::max<int64_t>(w->as_int(), 0)) : 4, ' ');
      std::string s = to_str(in), out;
      size_t pos = 0;
      bool is_first = true;
      while (true) {
        size_t nl = s.find('\n', pos);
        std::string line = s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
        bool add = (!is_first || (first && first->truthy())) &&
                   (!line.empty() || (blank && blank->truthy()));
        check_value_bytes(out.size() + (add ? pad.size() : 0) + line.size() + 1, "indent result");
        if (add) out += pad;
        out += line;
        if (nl == std::string::npos) break;
        out += '\n';
        pos = nl + 1;
        is_first = false;
      }
      return Value(out);
    });
    add({"format"}, [](const std::string&, const Value& in, Args& a) -> Value {
      if (!a.pos.empty() && !a.kw.empty())
        throw Failure{
            "format filter: can't handle positional and keyword arguments at the same time"};
      Value args;
      if (a.kw.empty()) {
        args = Value::list(a.pos, Value::Flavor::kTuple);
      } else {
        Dict d;
        for (const auto& [k, v] : a.kw) d.set(k, v);
        args = Value::dict(std::move(d));
      }
      return Value(percent_format(to_str(in), args));
    });
    add({"map"}, [](const std::string&, const Value& in, Args& a) -> Value {
      List out;
      const Value* attr = a.get(SIZE_MAX, "attribute");
      for (const auto& e : iterate(in)) {
        if (attr) {
          Value v = attr_path(e, to_str(*attr));
          const Value* dflt = a.get(SIZE_MAX, "default");
          out.push_back(v.is_undefined() && dflt ? *dflt : v);
        } else {
          if (a.pos.empty() || !a.pos[0].is_string())
            throw Failure{"map needs a filter name or attribute="};
          Args fa = rest_args(a, 1);
          out.push_back(apply_filter(a.pos[0].str(), e, fa));
        }
      }
      return Value::list(std::move(out));
    });
    add({"select", "reject"}, [](const std::string& f, const Value& in, Args& a) -> Value {
      return select_like(in, a, false, f == "select");
    });
    add({"selectattr", "rejectattr"}, [](const std::string& f, const Value& in, Args& a) -> Value {
      return select_like(in, a, true, f == "selectattr");
    });
    add({"attr"}, [](const std::string&, const Value& in, Args& a) -> Value {
      const Value* n = a.get(0, "name");
      if (!n || !n->is_string()) throw Failure{"attr filter needs a name"};
      return get_attr(in, n->str());
    });
    add({"sort"},
        [](const std::string&, const Value& in, Args& a) -> Value { return sort_list(in, a); });
    add({"unique"}, [](const std::string&, const Value& in, Args& a) -> Value {
      const Value* cs = a.get(0, "case_sensitive");
      const Value* attr = a.get(1, "attribute");
      const bool case_sensitive = cs && cs->truthy();
      auto key = [&](const Value& e) {
        Value k = !attr || attr->is_none() ? e
                  : attr->is_string()      ? attr_path(e, attr->str())
                                           : get_item(e, *attr);
        if (!case_sensitive && k.is_string()) k = Value(py_lower(k.str()));
        check_hashable(k);
        return k;
      };
      List out, seen;
      size_t work = 0;
      for (const auto& e : iterate(in)) {
        Value k = key(e);
        bool found = false;
        for (const auto& o : seen) found = found || equals(o, k);
        if (!found) {
          seen.push_back(k);
          out.push_back(e);
        }
        if ((work += seen.size()) > 100000) work = 0, check_render_time();  // quadratic
      }
      return Value::list(std::move(out));
    });
    add({"min", "max"}, [](const std::string& f, const Value& in, Args&) -> Value {
      List items = iterate(in);
      if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
      Value best = items[0];
      for (const auto& e : items) {
        int c = compare(e, best);
        if (f == "min" ? c < 0 : c > 0) best = e;
      }
      return best;
    });
    add({"sum"}, [](const std::string&, const Value& in, Args& a) -> Value {
      // Python sum(iterable, start): start + item + item ..., checked like `+`.
      const Value* attr = a.get(0, "attribute");
      const Value* start = a.get(1, "start");
      Value total = start ? *start : Value(int64_t{0});
      if (total.is_string()) throw Failure{"sum() can't sum strings [use ''.join(seq) instead]"};
      for (const auto& e : iterate(in)) {
        Value v = attr && !attr->is_none() ? attr_path(e, to_str(*attr)) : e;
        total = binary_op("+", total, v);
      }
      return total;
    });
    add({"wordcount"}, [](const std::string&, const Value& in, Args&) -> Value {
      Args none;
      Value parts;
      call_method(Value(to_str(in)), "split", none, parts);
      return Value(static_cast<int64_t>(parts.items().size()));
    });
    return t;
  }();
  return table;
}

// Jinja2's tests ("is defined", "is divisibleby 3", ...), one table entry
// each: names -> implementation, called with the name it was used by.
using Test = bool (*)(const std::string& t, const Value& v, Args& a);

// The test's one argument ("is divisibleby 3"); a Failure naming the test when absent.
const Value& test_arg(const std::string& t, const Args& a) {
  if (a.pos.empty()) throw Failure{"test '" + t + "' needs an argument"};
  return a.pos[0];
}

const std::map<std::string, Test>& tests() {
  static const std::map<std::string, Test> table = [] {
    using K = Value::Kind;
    std::map<std::string, Test> t;
    auto add = [&t](std::initializer_list<const char*> names, Test fn) {
      for (const char* name : names) t[name] = fn;
    };
    add({"defined"},
        [](const std::string&, const Value& v, Args&) -> bool { return !v.is_undefined(); });
    add({"undefined"},
        [](const std::string&, const Value& v, Args&) -> bool { return v.is_undefined(); });
    add({"none"}, [](const std::string&, const Value& v, Args&) -> bool { return v.is_none(); });
    add({"string"},
        [](const std::string&, const Value& v, Args&) -> bool { return v.is_string(); });
    add({"mapping"}, [](const std::string&, const Value& v, Args&) -> bool { return v.is_dict(); });
    add({"boolean"},
        [](const std::string&, const Value& v, Args&) -> bool { return v.kind() == K::kBool; });
    add({"true"}, [](const std::string&, const Value& v, Args&) -> bool {
      return v.kind() == K::kBool && v.as_bool();
    });
    add({"false"}, [](const std::string&, const Value& v, Args&) -> bool {
      return v.kind() == K::kBool && !v.as_bool();
    });
    add({"integer"},
        [](const std::string&, const Value& v, Args&) -> bool { return v.kind() == K::kInt; });
    add({"float"},
        [](const std::string&, const Value& v, Args&) -> bool { return v.kind() == K::kFloat; });
    add({"number"}, [](const std::string&, const Value& v, Args&) -> bool {
      return v.is_number() || v.kind() == K::kBool;
    });
    add({"callable"},
        [](const std::string&, const Value& v, Args&) -> bool { return v.kind() == K::kCallable; });
    add({"iterable"}, [](const std::string&, const Value& v, Args&) -> bool {
      return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
    });
    add({"sequence"}, [](const std::string&, const Value& v, Args&) -> bool {
      return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
    });
    add({"lower"}, [](const std::string&, const Value& v, Args&) -> bool {
      return v.is_string() && py_lower(v.str()) == v.str();
    });
    add({"upper"}, [](const std::string&, const Value& v, Args&) -> bool {
      return v.is_string() && py_upper(v.str()) == v.str();
    });
    add({"odd", "even"}, [](const std::string& t, const Value& v, Args&) -> bool {
      if (v.kind() != K::kInt) throw Failure{"test '" + t + "' needs an integer"};
      return (v.as_int() % 2 != 0) == (t == "odd");
    });
    add({"divisibleby"}, [](const std::string& t, const Value& v, Args& a) -> bool {
      const Value& n = test_arg(t, a);
      if (v.kind() != K::kInt || n.kind() != K::kInt || n.as_int() == 0)
        throw Failure{"divisibleby needs integers"};
      return v.as_int() % n.as_int() == 0;
    });
    add({"eq", "equalto", "=="}, [](const std::string& t, const Value& v, Args& a) -> bool {
      return equals(v, test_arg(t, a));
    });
    add({"ne", "!="}, [](const std::string& t, const Value& v, Args& a) -> bool {
      return !equals(v, test_arg(t, a));
    });
    add({"lt", "lessthan", "<"}, [](const std::string& t, const Value& v, Args& a) -> bool {
      return compare(v, test_arg(t, a)) < 0;
    });
    add({"le", "<="}, [](const std::string& t, const Value& v, Args& a) -> bool {
      return compare(v, test_arg(t, a)) <= 0;
    });
    add({"gt", "greaterthan", ">"}, [](const std::string& t, const Value& v, Args& a) -> bool {
      return compare(v, test_arg(t, a)) > 0;
    });
    add({"ge", ">="}, [](const std::string& t, const Value& v, Args& a) -> bool {
      return compare(v, test_arg(t, a)) >= 0;
    });
    add({"in"}, [](const std::string& t, const Value& v, Args& a) -> bool {
      return contains(test_arg(t, a), v);
    });
    add({"sameas"}, [](const std::string& t, const Value& v, Args& a) -> bool {
      const Value& o = test_arg(t, a);
      if (v.identity() || o.identity()) return v.identity() == o.identity();
      return v.kind() == o.kind() && equals(v, o);
    });
    return t;
  }();
  return table;
}

}  // namespace

bool is_known_filter(const std::string& name) {
  return filters().count(name) > 0;
}
bool is_known_test(const std::string& name) {
  return tests().count(name) > 0;
}

Value apply_filter(const std::string& f, const Value& in, Args& a) {
  auto it = filters().find(f);
  if (it == filters().end()) throw Failure{"unknown filter '" + f + "'"};
  return it->second(f, in, a);
}

bool apply_test(const std::string& t, const Value& v, Args& a) {
  auto it = tests().find(t);
  if (it == tests().end()) throw Failure{"unknown test '" + t + "'"};
  return it->second(t, v, a);
}

}  // namespace loratune::jinja
