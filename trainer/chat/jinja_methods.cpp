// trainer/chat/jinja_methods.cpp — attribute/item access, slicing, len,
// iteration and the Python str/dict/list methods chat templates call.
#include <utf8proc.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <utility>

#include "trainer/chat/jinja_ast.h"
#include "trainer/chat/jinja_unicode.h"

namespace loratune::jinja {
namespace {

[[noreturn]] void undefined_access(const Value& v) {
  throw Failure{v.str()};
}

std::string arg_str(const Args& a, size_t i, const std::string& name, const std::string& method) {
  const Value* v = a.get(i, name);
  if (!v || !v->is_string()) throw Failure{method + "() argument must be str"};
  return v->str();
}

// Normalises Python slice bounds for a sequence of length n.
std::vector<int64_t> slice_indices(int64_t n, const Value& start, const Value& stop,
                                   const Value& step) {
  auto as_int = [](const Value& v, const char* what) -> const Value* {
    if (v.is_undefined() || v.is_none()) return nullptr;
    if (v.kind() != Value::Kind::kInt)
      throw Failure{std::string("slice ") + what + " must be an integer"};
    return &v;
  };
  int64_t st = as_int(step, "step") ? step.as_int() : 1;
  if (st == 0) throw Failure{"slice step cannot be zero"};
  auto clamp = [&](const Value* v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = v->as_int();
    if (x < 0) x += n;
    if (st > 0) return x < 0 ? 0 : (x > n ? n : x);
    return x < -1 ? -1 : (x > n - 1 ? n - 1 : x);
  };
  int64_t b = clamp(as_int(start, "start"), st > 0 ? 0 : n - 1);
  int64_t e = clamp(as_int(stop, "stop"), st > 0 ? n : -1);
  std::vector<int64_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e;) {
    idx.push_back(i);
    if (__builtin_add_overflow(i, st, &i)) break;  // past either end: done
  }
  return idx;
}

// Every part becomes a Value: the parts' slots count towards the value budget.
void check_parts(size_t parts, const std::string& s) {
  check_value_bytes(saturating_mul(sizeof(Value), static_cast<int64_t>(parts)) + s.size(),
                    "split result");
}

// A positional-only argument (Python's str methods take most that way).
const Value* positional(const Args& a, size_t i) {
  return a.get(i, "\x01");
}

int64_t int_arg(const Value* v, const std::string& method, int64_t dflt) {
  if (!v || v->is_none()) return dflt;
  if (v->kind() == Value::Kind::kBool) return v->as_bool();
  if (v->kind() != Value::Kind::kInt)
    throw Failure{"'" + v->type_name() + "' object cannot be interpreted as an integer (" + method +
                  "())"};
  return v->as_int();
}

// Python's optional start/end arguments (at positions i, i + 1), adjusted
// like slice bounds for a string of n code points. begin may exceed end.
std::pair<int64_t, int64_t> sub_range(const Args& a, size_t i, int64_t n,
                                      const std::string& method) {
  auto adjust = [n](int64_t x) { return x < 0 ? std::max<int64_t>(x + n, 0) : std::min(x, n); };
  int64_t b = int_arg(positional(a, i), method, 0);
  int64_t e = int_arg(positional(a, i + 1), method, n);
  return {b < 0 ? std::max<int64_t>(b + n, 0) : b, adjust(e)};
}

// Python's str.find/rfind over u[b:e]: a code point index or -1.
int64_t find_in(const std::u32string& u, const std::u32string& w, int64_t b, int64_t e,
                bool reverse) {
  if (e - b < static_cast<int64_t>(w.size())) return -1;
  std::u32string_view hay(u.data() + b, static_cast<size_t>(e - b));
  size_t p = reverse ? hay.rfind(w) : hay.find(w);
  return p == std::u32string_view::npos ? -1 : b + static_cast<int64_t>(p);
}

std::vector<std::string> py_split(const std::string& s, const Value* sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (!sep || sep->is_none()) {
    std::u32string u = decode_utf8(s);
    size_t i = 0;
    while (true) {
      while (i < u.size() && is_py_space(u[i])) ++i;
      if (i >= u.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        out.push_back(encode_utf8(u.substr(i)));  // Python keeps its trailing space
        break;
      }
      size_t j = i;
      while (j < u.size() && !is_py_space(u[j])) ++j;
      check_parts(out.size() + 1, s);
      out.push_back(encode_utf8(u.substr(i, j - i)));
      i = j;
    }
    return out;
  }
  if (!sep->is_string()) throw Failure{"split() separator must be str or None"};
  const std::string& d = sep->str();
  if (d.empty()) throw Failure{"split(): empty separator"};
  size_t pos = 0;
  while (true) {
    size_t f = s.find(d, pos);
    if (f == std::string::npos || (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit)) {
      out.push_back(s.substr(pos));
      return out;
    }
    check_parts(out.size() + 1, s);
    out.push_back(s.substr(pos, f - pos));
    pos = f + d.size();
  }
}

// Python's str.rsplit: split() from the right (parts returned in order).
std::vector<std::string> py_rsplit(const std::string& s, const Value* sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (!sep || sep->is_none()) {
    std::u32string u = decode_utf8(s);
    size_t i = u.size();
    while (true) {
      while (i > 0 && is_py_space(u[i - 1])) --i;
      if (i == 0) break;
      if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
        out.push_back(encode_utf8(u.substr(0, i)));  // Python keeps its leading space
        break;
      }
      size_t j = i;
      while (j > 0 && !is_py_space(u[j - 1])) --j;
      check_parts(out.size() + 1, s);
      out.push_back(encode_utf8(u.substr(j, i - j)));
      i = j;
    }
  } else {
    if (!sep->is_string()) throw Failure{"rsplit() separator must be str or None"};
    const std::string& d = sep->str();
    if (d.empty()) throw Failure{"rsplit(): empty separator"};
    size_t end = s.size();
    while (true) {
      size_t f = end >= d.size() ? s.rfind(d, end - d.size()) : std::string::npos;
      if (f == std::string::npos ||
          (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit)) {
        out.push_back(s.substr(0, end));
        break;
      }
      check_parts(out.size() + 1, s);
      out.push_back(s.substr(f + d.size(), end - f - d.size()));
      end = f;
    }
  }
  std::reverse(out.begin(), out.end());
  return out;
}

// Python's str.splitlines line boundaries.
bool is_line_break(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d || c == 0x1e ||
         c == 0x85 || c == 0x2028 || c == 0x2029;
}

// str.center/ljust/rjust(width, fillchar=' ').
std::string py_pad(const std::string& s, const std::string& name, const Args& a) {
  int64_t width = int_arg(positional(a, 0), name, -1);
  if (!positional(a, 0)) throw Failure{name + "() takes at least 1 argument"};
  char32_t fill = ' ';
  if (const Value* f = positional(a, 1)) {
    std::u32string fu = f->is_string() ? decode_utf8(f->str()) : std::u32string();
    if (fu.size() != 1)
      throw Failure{"The fill character must be exactly one character long (" + name + "())"};
    fill = fu[0];
  }
  std::u32string u = decode_utf8(s);
  const int64_t len = static_cast<int64_t>(u.size());
  if (width <= len) return s;
  check_value_bytes(saturating_mul(4, width), name + "() result");
  const int64_t marg = width - len;
  int64_t left = name == "ljust" ? 0 : name == "rjust" ? marg : marg / 2 + (marg & width & 1);
  std::u32string out(static_cast<size_t>(left), fill);
  out += u;
  out.append(static_cast<size_t>(marg - left), fill);
  return encode_utf8(out);
}

// Python str methods loratune does not implement: naming them is a
// template feature missing here, not a problem with the data.
bool is_unimplemented_str_method(const std::string& name) {
  static const char* const kNames[] = {"encode",      "expandtabs", "format_map", "isidentifier",
                                       "isprintable", "maketrans",  "translate"};
  for (const char* n : kNames) {
    if (name == n) return true;
  }
  return false;
}

bool string_method(const std::string& s, const std::string& name, Args& a, Value& r) {
  if (name == "startswith" || name == "endswith") {
    const Value* p = positional(a, 0);
    if (!p) throw Failure{name + "() takes at least 1 argument"};
    std::u32string u = decode_utf8(s);
    auto [b, e] = sub_range(a, 1, static_cast<int64_t>(u.size()), name);
    const bool tuple = p->is_list() && p->flavor() == Value::Flavor::kTuple;
    if (!p->is_string() && !tuple)
      throw Failure{name + " first arg must be str or a tuple of str, not " + p->type_name()};
    List options = tuple ? p->items() : List{*p};
    bool found = false;
    for (const auto& o : options) {
      if (!o.is_string())
        throw Failure{"tuple for " + name + " must only contain str, not " + o.type_name()};
      std::u32string x = decode_utf8(o.str());
      const int64_t xn = static_cast<int64_t>(x.size());
      if (b > static_cast<int64_t>(u.size()) || e - b < xn) continue;
      const int64_t at = name == "endswith" ? e - xn : b;
      found = found || u.compare(static_cast<size_t>(at), x.size(), x) == 0;
    }
    r = Value(found);
  } else if (name == "strip" || name == "lstrip" || name == "rstrip") {
    r = Value(py_strip(s, a.get(0, "chars"), name != "rstrip", name != "lstrip"));
  } else if (name == "split" || name == "rsplit") {
    const int64_t maxsplit = int_arg(a.get(1, "maxsplit"), name, -1);
    List parts;
    for (auto& p : name == "split" ? py_split(s, a.get(0, "sep"), maxsplit)
                                   : py_rsplit(s, a.get(0, "sep"), maxsplit))
      parts.emplace_back(std::move(p));
    r = Value::list(std::move(parts));
  } else if (name == "replace") {
    r = Value(py_replace(s, arg_str(a, 0, "old", name), arg_str(a, 1, "new", name),
                         int_arg(a.get(2, "count"), name, -1)));
  } else if (name == "upper") {
    r = Value(py_upper(s));
  } else if (name == "lower") {
    r = Value(py_lower(s));
  } else if (name == "title") {
    r = Value(py_title(s));
  } else if (name == "capitalize") {
    r = Value(py_capitalize(s));
  } else if (name == "find" || name == "rfind" || name == "index" || name == "rindex" ||
             name == "count") {
    const Value* sub = positional(a, 0);
    if (!sub || !sub->is_string())
      throw Failure{name + "() argument must be str, not " +
                    (sub ? sub->type_name() : std::string("nothing"))};
    std::u32string u = decode_utf8(s), w = decode_utf8(sub->str());
    auto [b, e] = sub_range(a, 1, static_cast<int64_t>(u.size()), name);
    if (name == "count") {
      int64_t n = 0;
      if (e - b >= static_cast<int64_t>(w.size())) {
        std::u32string_view hay(u.data() + b, static_cast<size_t>(e - b));
        for (size_t p = hay.find(w); p != std::u32string_view::npos;
             p = hay.find(w, p + std::max<size_t>(w.size(), 1)))
          ++n;
      }
      r = Value(n);
    } else {
      const int64_t p = find_in(u, w, b, e, name == "rfind" || name == "rindex");
      if (p < 0 && (name == "index" || name == "rindex")) throw Failure{"substring not found"};
      r = Value(p);
    }
  } else if (name == "partition" || name == "rpartition") {
    std::string sep = arg_str(a, 0, "sep", name);
    if (sep.empty()) throw Failure{"empty separator"};
    const size_t f = name == "partition" ? s.find(sep) : s.rfind(sep);
    List parts;
    if (f == std::string::npos) {
      if (name == "partition")
        parts = {Value(s), Value(""), Value("")};
      else
        parts = {Value(""), Value(""), Value(s)};
    } else {
      parts = {Value(s.substr(0, f)), Value(sep), Value(s.substr(f + sep.size()))};
    }
    r = Value::list(std::move(parts), Value::Flavor::kTuple);
  } else if (name == "center" || name == "ljust" || name == "rjust") {
    r = Value(py_pad(s, name, a));
  } else if (name == "zfill") {
    if (!positional(a, 0)) throw Failure{"zfill() takes exactly one argument"};
    const int64_t width = int_arg(positional(a, 0), name, 0);
    const int64_t len = static_cast<int64_t>(decode_utf8(s).size());
    if (width <= len) {
      r = Value(s);
    } else {
      check_value_bytes(saturating_mul(1, width) + s.size(), "zfill() result");
      const size_t sign = !s.empty() && (s[0] == '+' || s[0] == '-') ? 1 : 0;
      r = Value(s.substr(0, sign) + std::string(static_cast<size_t>(width - len), '0') +
                s.substr(sign));
    }
  } else if (name == "join") {
    const Value* it = a.get(0, "iterable");
    if (!it) throw Failure{"join() takes exactly one argument"};
    std::string out;
    bool first = true;
    for (const auto& e : iterate(*it)) {
      if (!e.is_string())
        throw Failure{"sequence item: expected str instance, " + e.type_name() + " found"};
      check_value_bytes(out.size() + (first ? 0 : s.size()) + e.str().size(), "join result");
      if (!first) out += s;
      out += e.str();
      first = false;
    }
    r = Value(out);
  } else if (name == "splitlines") {
    const Value* keep = a.get(0, "keepends");
    const bool keepends = keep && keep->truthy();
    std::u32string u = decode_utf8(s);
    List parts;
    size_t pos = 0;
    while (pos < u.size()) {
      size_t f = pos;
      while (f < u.size() && !is_line_break(u[f])) ++f;
      size_t next = f == u.size() ? f : f + 1;
      if (f + 1 < u.size() && u[f] == '\r' && u[f + 1] == '\n') next = f + 2;
      check_parts(parts.size() + 1, s);
      parts.emplace_back(encode_utf8(u.substr(pos, (keepends ? next : f) - pos)));
      pos = next;
    }
    r = Value::list(std::move(parts));
  } else if (name == "removeprefix" || name == "removesuffix") {
    std::string x = arg_str(a, 0, name == "removeprefix" ? "prefix" : "suffix", name);
    bool pre = name == "removeprefix";
    bool has = x.size() <= s.size() && s.compare(pre ? 0 : s.size() - x.size(), x.size(), x) == 0;
    r = Value(has ? (pre ? s.substr(x.size()) : s.substr(0, s.size() - x.size())) : s);
  } else if (name == "isspace" || name == "isdigit" || name == "isalpha" || name == "isalnum" ||
             name == "isdecimal" || name == "isnumeric" || name == "isascii") {
    std::u32string u = decode_utf8(s);
    bool ok = !u.empty() || name == "isascii";
    for (char32_t c : u) {
      auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
      bool letter = cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
      if (name == "isspace")
        ok = ok && is_py_space(c);
      else if (name == "isdecimal")
        ok = ok && cat == UTF8PROC_CATEGORY_ND;
      else if (name == "isdigit")
        ok = ok && unicode::is_digit(c);
      else if (name == "isnumeric")
        ok = ok && unicode::is_numeric(c);
      else if (name == "isascii")
        ok = ok && c < 0x80;
      else if (name == "isalpha")
        ok = ok && letter;
      else  // isalnum: isalpha or isdecimal or isdigit or isnumeric
        ok = ok && (letter || unicode::is_numeric(c));
    }
    r = Value(ok);
  } else if (name == "islower" || name == "isupper" || name == "istitle") {
    // CPython's rules: islower is false at any upper- or titlecase code point
    // and needs one lowercase one (isupper the mirror); istitle wants every
    // cased run to start upper/titlecase and go on lowercase.
    bool ok = true, any_cased = false, prev_cased = false;
    for (char32_t c : decode_utf8(s)) {
      const bool up = unicode::is_upper(c), lo = unicode::is_lower(c), ti = unicode::is_title(c);
      if (name == "islower") {
        ok = ok && !up && !ti;
        any_cased = any_cased || lo;
      } else if (name == "isupper") {
        ok = ok && !lo && !ti;
        any_cased = any_cased || up;
      } else if (up || ti) {
        ok = ok && !prev_cased;
        prev_cased = any_cased = true;
      } else if (lo) {
        ok = ok && prev_cased;
        prev_cased = any_cased = true;
      } else {
        prev_cased = false;
      }
    }
    r = Value(ok && any_cased);
  } else if (name == "swapcase" || name == "casefold") {
    std::u32string u = decode_utf8(s), out;
    out.reserve(u.size());
    for (size_t i = 0; i < u.size(); ++i) {
      if (name == "casefold")
        unicode::append_fold(u[i], out);
      else if (unicode::is_upper(u[i]))
        unicode::append_lower(u, i, out);
      else if (unicode::is_lower(u[i]))
        unicode::append_upper(u[i], out);
      else
        out += u[i];
    }
    r = Value(encode_utf8(out));
  } else if (name == "format") {
    std::string out;
    size_t auto_idx = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '{' && i + 1 < s.size() && s[i + 1] == '{') {
        out += '{';
        ++i;
      } else if (s[i] == '}' && i + 1 < s.size() && s[i + 1] == '}') {
        out += '}';
        ++i;
      } else if (s[i] == '{') {
        size_t e = s.find('}', i);
        if (e == std::string::npos) throw Failure{"format(): single '{' encountered"};
        std::string field = s.substr(i + 1, e - i - 1);
        if (field.find_first_of(":!") != std::string::npos)
          throw Failure{"format(): format specs are not supported", ErrorKind::kUnsupported};
        const Value* v = nullptr;
        if (field.empty())
          v = a.get(auto_idx++, "\x01");
        else if (std::isdigit(static_cast<unsigned char>(field[0])))
          v = a.get(field.size() > 9 ? SIZE_MAX : std::stoul(field), "\x01");
        else
          v = a.get(SIZE_MAX, field);
        if (!v) throw Failure{"format(): no argument for field '{" + field + "}'"};
        std::string piece = to_str(*v);
        check_value_bytes(out.size() + piece.size() + s.size(), "format result");
        out += piece;
        i = e;
      } else {
        out += s[i];
      }
    }
    r = Value(out);
  } else if (is_unimplemented_str_method(name)) {
    throw Failure{"str." + name + "() is not supported", ErrorKind::kUnsupported};
  } else {
    return false;
  }
  return true;
}

}  // namespace

std::string py_strip(const std::string& s, const Value* chars, bool left, bool right) {
  std::u32string u = decode_utf8(s);
  std::u32string set;
  bool ws = !chars || chars->is_none() || chars->is_undefined();
  if (!ws) {
    if (!chars->is_string()) throw Failure{"strip arg must be None or str"};
    set = decode_utf8(chars->str());
  }
  auto strip_it = [&](char32_t c) {
    return ws ? is_py_space(c) : set.find(c) != std::u32string::npos;
  };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip_it(u[b])) ++b;
  if (right)
    while (e > b && strip_it(u[e - 1])) --e;
  return encode_utf8(u.substr(b, e - b));
}

std::string py_upper(const std::string& s) {
  std::u32string u = decode_utf8(s), out;
  out.reserve(u.size());
  for (char32_t c : u) unicode::append_upper(c, out);
  return encode_utf8(out);
}

std::string py_lower(const std::string& s) {
  std::u32string u = decode_utf8(s), out;
  out.reserve(u.size());
  for (size_t i = 0; i < u.size(); ++i) unicode::append_lower(u, i, out);
  return encode_utf8(out);
}

std::string py_title(const std::string& s) {
  std::u32string u = decode_utf8(s), out;
  out.reserve(u.size());
  bool prev_cased = false;
  for (size_t i = 0; i < u.size(); ++i) {
    if (prev_cased)
      unicode::append_lower(u, i, out);
    else
      unicode::append_title(u[i], out);
    prev_cased = unicode::is_cased(u[i]);
  }
  return encode_utf8(out);
}

std::string py_capitalize(const std::string& s) {
  std::u32string u = decode_utf8(s), out;
  out.reserve(u.size());
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 0)
      unicode::append_title(u[i], out);
    else
      unicode::append_lower(u, i, out);
  }
  return encode_utf8(out);
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to,
                       int64_t count) {
  std::string out;
  if (from.empty()) {
    // Python inserts `to` before every code point and at the end.
    std::u32string u = decode_utf8(s);
    int64_t n = 0;
    for (size_t i = 0; i <= u.size(); ++i) {
      if (count < 0 || n < count) {
        check_value_bytes(out.size() + to.size() + s.size(), "replace result");
        out += to;
        ++n;
      }
      if (i < u.size()) out += encode_utf8(u.substr(i, 1));
    }
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    size_t f = s.find(from, pos);
    if (f == std::string::npos) break;
    check_value_bytes(out.size() + (f - pos) + to.size() + (s.size() - f), "replace result");
    out.append(s, pos, f - pos);
    out += to;
    pos = f + from.size();
    ++n;
  }
  return out + s.substr(pos);
}

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      undefined_access(obj);
    case Value::Kind::kDict:
    case Value::Kind::kNamespace:
      if (const Value* v = obj.dict_data().find(name)) return *v;
      return Value::undefined("'" + std::string(obj.is_dict() ? "dict object" : "Namespace") +
                              "' has no attribute '" + name + "'");
    default:
      return Value::undefined("'" + obj.type_name() + " object' has no attribute '" + name + "'");
  }
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) undefined_access(obj);
  if (key.is_string() && (obj.is_dict() || obj.kind() == Value::Kind::kNamespace))
    return get_attr(obj, key.str());
  if ((obj.is_list() || obj.is_string()) && key.kind() == Value::Kind::kInt) {
    if (obj.is_list()) {
      int64_t n = static_cast<int64_t>(obj.items().size()), i = key.as_int();
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.items()[static_cast<size_t>(i)];
    } else {
      std::u32string u = decode_utf8(obj.str());
      int64_t n = static_cast<int64_t>(u.size()), i = key.as_int();
      if (i < 0) i += n;
      if (i >= 0 && i < n) return Value(encode_utf8(u.substr(static_cast<size_t>(i), 1)));
    }
    return Value::undefined(obj.type_name() + " object has no element " +
                            std::to_string(key.as_int()));
  }
  if (key.is_string()) return get_attr(obj, key.str());
  return Value::undefined("'" + obj.type_name() + " object' has no item " + repr(key));
}

Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) undefined_access(obj);
  if (obj.is_list()) {
    List out;
    for (int64_t i : slice_indices(static_cast<int64_t>(obj.items().size()), start, stop, step)) {
      out.push_back(obj.items()[static_cast<size_t>(i)]);
    }
    return Value::list(std::move(out));
  }
  if (obj.is_string()) {
    std::u32string u = decode_utf8(obj.str()), out;
    for (int64_t i : slice_indices(static_cast<int64_t>(u.size()), start, stop, step))
      out += u[static_cast<size_t>(i)];
    return Value(encode_utf8(out));
  }
  throw Failure{"'" + obj.type_name() + "' object is not subscriptable with a slice"};
}

bool call_method(const Value& obj, const std::string& name, Args& a, Value& r) {
  if (obj.is_string()) return string_method(obj.str(), name, a, r);
  if (obj.is_dict()) {
    const Dict& d = obj.dict_data();
    if (name == "items" || name == "keys" || name == "values") {
      List out;
      for (const auto& [k, v] : d.items) {
        if (name == "items")
          out.push_back(Value::list({Value(k), v}, Value::Flavor::kTuple));
        else
          out.push_back(name == "keys" ? Value(k) : v);
      }
      r = Value::list(std::move(out), name == "items"  ? Value::Flavor::kDictItems
                                      : name == "keys" ? Value::Flavor::kDictKeys
                                                       : Value::Flavor::kDictValues);
      return true;
    }
    if (name == "get") {
      const Value* k = a.get(0, "key");
      if (!k) throw Failure{"get() takes at least 1 argument"};
      const Value* found = k->is_string() ? d.find(k->str()) : nullptr;
      const Value* dflt = a.get(1, "default");
      r = found ? *found : (dflt ? *dflt : Value::none());
      return true;
    }
    return false;
  }
  if (obj.is_list()) {
    if (name == "index" || name == "count") {
      const Value* x = a.get(0, "value");
      if (!x) throw Failure{name + "() takes exactly one argument"};
      int64_t n = 0;
      for (size_t i = 0; i < obj.items().size(); ++i) {
        if (!equals(obj.items()[i], *x)) continue;
        if (name == "index") {
          r = Value(static_cast<int64_t>(i));
          return true;
        }
        ++n;
      }
      if (name == "index") throw Failure{repr(*x) + " is not in list"};
      r = Value(n);
      return true;
    }
    if (name == "append" || name == "pop" || name == "insert" || name == "extend" ||
        name == "remove") {
      throw Failure{"access to list." + name + "() is unsafe in the sandbox (lists are immutable)"};
    }
  }
  return false;
}

int64_t length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return 0;
    case Value::Kind::kString:
      return static_cast<int64_t>(decode_utf8(v.str()).size());
    case Value::Kind::kList:
      return static_cast<int64_t>(v.items().size());
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.dict_data().items.size());
    default:
      throw Failure{"object of type '" + v.type_name() + "' has no len()"};
  }
}

List iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kList:
      return v.items();
    case Value::Kind::kDict: {
      List keys;
      for (const auto& kv : v.dict_data().items) keys.emplace_back(kv.first);
      return keys;
    }
    case Value::Kind::kString: {
      std::u32string u = decode_utf8(v.str());
      check_value_bytes(saturating_mul(sizeof(Value), static_cast<int64_t>(u.size())),
                        "the characters of a string");
      List chars;
      chars.reserve(u.size());
      for (char32_t c : u) chars.emplace_back(encode_utf8(std::u32string(1, c)));
      return chars;
    }
    default:
      throw Failure{"'" + v.type_name() + "' object is not iterable"};
  }
}

bool contains(const Value& container, const Value& item) {
  if (container.is_string()) {
    if (!item.is_string())
      throw Failure{"'in <string>' requires string as left operand, not " + item.type_name()};
    return container.str().find(item.str()) != std::string::npos;
  }
  if (container.is_dict() || container.kind() == Value::Kind::kNamespace) {
    return item.is_string() && container.dict_data().find(item.str()) != nullptr;
  }
  for (const auto& e : iterate(container)) {
    if (equals(e, item)) return true;
  }
  return false;
}

}  // namespace loratune::jinja
