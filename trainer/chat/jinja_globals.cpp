// trainer/chat/jinja_globals.cpp — arithmetic operators and the global
// functions of transformers' chat-template environment (raise_exception,
// strftime_now, namespace, dict) plus jinja2's range.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <string>
#include <unordered_map>
#include <utility>

#include "trainer/chat/jinja_ast.h"

namespace loratune::jinja {
namespace {

[[noreturn]] void fail_undefined(const Value& v) {
  throw Failure{v.str()};
}

// Python float // and % (floatobject.c float_divmod): the remainder takes
// the divisor's sign.
std::pair<double, double> float_divmod(double x, double y) {
  double mod = std::fmod(x, y);
  double div = (x - mod) / y;
  if (mod != 0.0) {
    if ((y < 0) != (mod < 0)) {
      mod += y;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, y);
  }
  double floordiv;
  if (div != 0.0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, x / y);
  }
  return {floordiv, mod};
}

// base ** exp by squaring (O(log exp)), checked.
int64_t int_pow(int64_t base, int64_t exp) {
  int64_t r = 1;
  for (uint64_t e = static_cast<uint64_t>(exp);;) {
    if (e & 1) r = int_mul(r, base);
    e >>= 1;
    if (e == 0) break;
    base = int_mul(base, base);  // a later bit needs it: overflowing here overflows r
  }
  return r;
}

// One printf-style conversion spec: %[(key)][flags][width][.precision]type.
struct Spec {
  bool left = false, plus = false, space = false, alt = false, zero = false;
  int64_t width = -1, precision = -1;
  char type = 0;
};

std::string pad_to_width(const std::string& body, const Spec& sp) {
  const int64_t len = static_cast<int64_t>(decode_utf8(body).size());
  if (sp.width <= len) return body;
  check_value_bytes(static_cast<size_t>(sp.width) + body.size(), "printf-style format result");
  const std::string fill(static_cast<size_t>(sp.width - len), ' ');
  return sp.left ? body + fill : fill + body;
}

std::string format_int(int64_t v, const Spec& sp) {
  const uint64_t mag = v < 0 ? uint64_t{0} - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  const unsigned base = sp.type == 'x' || sp.type == 'X' ? 16 : sp.type == 'o' ? 8 : 10;
  const char* digit_chars = sp.type == 'X' ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string digits;
  for (uint64_t m = mag; m != 0 || digits.empty(); m /= base)
    digits.insert(0, 1, digit_chars[m % base]);
  if (sp.precision > static_cast<int64_t>(digits.size())) {
    check_value_bytes(static_cast<size_t>(sp.precision), "printf-style format result");
    digits.insert(0, static_cast<size_t>(sp.precision) - digits.size(), '0');
  }
  std::string prefix = v < 0 ? "-" : sp.plus ? "+" : sp.space ? " " : "";
  if (sp.alt && base != 10) prefix += sp.type == 'o' ? "0o" : sp.type == 'x' ? "0x" : "0X";
  const int64_t len = static_cast<int64_t>(prefix.size() + digits.size());
  if (sp.zero && !sp.left && sp.width > len) {
    check_value_bytes(static_cast<size_t>(sp.width), "printf-style format result");
    digits.insert(0, static_cast<size_t>(sp.width - len), '0');
  }
  return pad_to_width(prefix + digits, sp);
}

std::string format_float(double d, const Spec& sp) {
  std::string f = "%";
  if (sp.left) f += '-';
  if (sp.plus) f += '+';
  if (sp.space) f += ' ';
  if (sp.alt) f += '#';
  if (sp.zero) f += '0';
  if (sp.width >= 0) f += std::to_string(sp.width);
  f += "." + std::to_string(sp.precision < 0 ? 6 : sp.precision);
  f += sp.type;
  // %f of 1e308 has 309 integer digits.
  auto size = [](int64_t n) { return static_cast<size_t>(std::clamp<int64_t>(n, 0, 1LL << 40)); };
  check_value_bytes(size(sp.width) + size(sp.precision) + 330, "printf-style format result");
  const int n = std::max(std::snprintf(nullptr, 0, f.c_str(), d), 0);
  std::string out(static_cast<size_t>(n) + 1, '\0');
  std::snprintf(out.data(), out.size(), f.c_str(), d);
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string format_one(const Value& v, const Spec& sp) {
  using K = Value::Kind;
  switch (sp.type) {
    case 's':
    case 'r': {
      std::string body = sp.type == 's' ? to_str(v) : repr(v);
      if (sp.precision >= 0) {
        std::u32string u = decode_utf8(body);
        if (static_cast<int64_t>(u.size()) > sp.precision)
          body = encode_utf8(u.substr(0, static_cast<size_t>(sp.precision)));
      }
      return pad_to_width(body, sp);
    }
    case 'd':
    case 'i':
    case 'u':
    case 'x':
    case 'X':
    case 'o': {
      const bool decimal = sp.type == 'd' || sp.type == 'i' || sp.type == 'u';
      if (v.kind() == K::kInt || v.kind() == K::kBool)
        return format_int(v.kind() == K::kBool ? int64_t{v.as_bool()} : v.as_int(), sp);
      if (v.kind() == K::kFloat && decimal) return format_int(float_to_int(v.as_double()), sp);
      throw Failure{std::string("%") + sp.type +
                    " format: " + (decimal ? "a real number" : "an integer") +
                    " is required, not " + v.type_name()};
    }
    case 'e':
    case 'E':
    case 'f':
    case 'F':
    case 'g':
    case 'G':
      if (!v.is_number() && v.kind() != K::kBool)
        throw Failure{"must be real number, not " + v.type_name()};
      return format_float(v.kind() == K::kBool ? (v.as_bool() ? 1.0 : 0.0) : v.as_double(), sp);
    case 'c':
      if (v.is_string() && decode_utf8(v.str()).size() == 1) return pad_to_width(v.str(), sp);
      if (v.kind() == K::kInt && v.as_int() >= 0 && v.as_int() < 0x110000)
        return pad_to_width(encode_utf8(std::u32string(1, static_cast<char32_t>(v.as_int()))), sp);
      throw Failure{"%c requires an int in range(0x110000) or a single character"};
    default:
      throw Failure{std::string("printf-style format character '") + sp.type + "' is not supported",
                    ErrorKind::kUnsupported};
  }
}

}  // namespace

[[noreturn]] void int_overflow() {
  throw Failure{"integer result does not fit in 64 bits (Python would use a big integer)",
                ErrorKind::kUnsupported};
}

int64_t int_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) int_overflow();
  return r;
}

int64_t int_sub(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) int_overflow();
  return r;
}

int64_t int_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) int_overflow();
  return r;
}

int64_t int_neg(int64_t a) {
  return int_sub(0, a);
}

int64_t float_to_int(double d) {
  if (std::isnan(d)) throw Failure{"cannot convert float NaN to integer"};
  if (std::isinf(d)) throw Failure{"cannot convert float infinity to integer"};
  d = std::trunc(d);
  // [-2^63, 2^63): both bounds are exact doubles.
  if (d < -9223372036854775808.0 || d >= 9223372036854775808.0) int_overflow();
  return static_cast<int64_t>(d);
}

std::string percent_format(const std::string& fmt, const Value& args) {
  const bool tuple = args.is_list() && args.flavor() == Value::Flavor::kTuple;
  // Python treats a mapping (and any sequence but a tuple) as a possible
  // source of %(key)s values; then unused arguments are no error.
  const bool mapping = args.is_dict() || (args.is_list() && !tuple);
  const List* items = tuple ? &args.items() : nullptr;
  size_t next = 0;
  bool single_used = false;
  auto next_arg = [&]() -> const Value& {
    if (items) {
      if (next < items->size()) return (*items)[next++];
    } else if (!single_used) {
      single_used = true;
      return args;
    }
    throw Failure{"not enough arguments for format string"};
  };
  std::string out;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) throw Failure{"incomplete format"};
    if (fmt[i] == '%') {
      out += '%';
      continue;
    }
    const Value* keyed = nullptr;
    if (fmt[i] == '(') {
      const size_t close = fmt.find(')', i);
      if (close == std::string::npos) throw Failure{"incomplete format key"};
      const std::string key = fmt.substr(i + 1, close - i - 1);
      if (!args.is_dict()) throw Failure{"format requires a mapping"};
      keyed = args.dict_data().find(key);
      if (!keyed) throw Failure{"KeyError: " + repr(Value(key))};
      i = close + 1;
    }
    Spec sp;
    for (; i < fmt.size(); ++i) {
      const char c = fmt[i];
      if (c == '-')
        sp.left = true;
      else if (c == '+')
        sp.plus = true;
      else if (c == ' ')
        sp.space = true;
      else if (c == '#')
        sp.alt = true;
      else if (c == '0')
        sp.zero = true;
      else
        break;
    }
    // A width or precision: digits, or '*' taking the next argument.
    auto number = [&]() -> int64_t {
      if (i < fmt.size() && fmt[i] == '*') {
        ++i;
        const Value& v = next_arg();
        if (v.kind() != Value::Kind::kInt) throw Failure{"* wants int"};
        return v.as_int();
      }
      int64_t n = -1;
      while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i]))) {
        if (n > 100000000) throw Failure{"width too big"};
        n = std::max<int64_t>(n, 0) * 10 + (fmt[i++] - '0');
      }
      return n;
    };
    sp.width = number();
    if (sp.width < -1) {  // '*' with a negative width: left-justified
      sp.left = true;
      sp.width = sp.width == INT64_MIN ? INT64_MAX : -sp.width;
    }
    if (i < fmt.size() && fmt[i] == '.') {
      ++i;
      sp.precision = std::max<int64_t>(number(), 0);
    }
    while (i < fmt.size() && (fmt[i] == 'h' || fmt[i] == 'l' || fmt[i] == 'L')) ++i;
    if (i >= fmt.size()) throw Failure{"incomplete format"};
    sp.type = fmt[i];
    std::string piece = format_one(keyed ? *keyed : next_arg(), sp);
    check_value_bytes(out.size() + piece.size(), "printf-style format result");
    out += piece;
  }
  const bool unused = items ? next < items->size() : !single_used;
  if (unused && !mapping && !(items && items->empty()))
    throw Failure{"not all arguments converted during string formatting"};
  return out;
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  using K = Value::Kind;
  auto numeric = [](const Value& v) { return v.is_number() || v.kind() == K::kBool; };
  auto ival = [](const Value& v) {
    return v.kind() == K::kBool ? int64_t{v.as_bool()} : v.as_int();
  };
  auto dval = [](const Value& v) {
    return v.kind() == K::kBool ? (v.as_bool() ? 1.0 : 0.0) : v.as_double();
  };
  if (numeric(a) && numeric(b)) {
    bool ints = a.kind() != K::kFloat && b.kind() != K::kFloat;
    if (op == "+") return ints ? Value(int_add(ival(a), ival(b))) : Value(dval(a) + dval(b));
    if (op == "-") return ints ? Value(int_sub(ival(a), ival(b))) : Value(dval(a) - dval(b));
    if (op == "*") return ints ? Value(int_mul(ival(a), ival(b))) : Value(dval(a) * dval(b));
    if (op == "/") {
      if (dval(b) == 0.0) throw Failure{"division by zero"};
      return Value(dval(a) / dval(b));
    }
    if (op == "//" || op == "%") {
      if (dval(b) == 0.0) throw Failure{"integer division or modulo by zero"};
      if (ints) {
        const int64_t x = ival(a), y = ival(b);
        if (y == -1) return op == "//" ? Value(int_neg(x)) : Value(int64_t{0});  // no x % -1 UB
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {
          r += y;  // opposite signs: cannot overflow
          --q;     // |y| >= 2, so |q| <= 2^62
        }
        return op == "//" ? Value(q) : Value(r);
      }
      auto [q, r] = float_divmod(dval(a), dval(b));
      return op == "//" ? Value(q) : Value(r);
    }
    if (op == "**") {
      if (ints && ival(b) >= 0) return Value(int_pow(ival(a), ival(b)));
      if (ints && ival(a) == 0) throw Failure{"0.0 cannot be raised to a negative power"};
      return Value(std::pow(dval(a), dval(b)));
    }
  }
  if (op == "+" && a.is_string() && b.is_string()) {
    check_value_bytes(a.bytes() + b.bytes(), "string concatenation");
    return Value(a.str() + b.str());
  }
  if (op == "+" && a.is_list() && b.is_list()) {
    check_value_bytes(a.bytes() + b.bytes(), "list concatenation");
    List out = a.items();
    out.insert(out.end(), b.items().begin(), b.items().end());
    return Value::list(std::move(out));
  }
  if (op == "*" && (a.is_string() || a.is_list()) && b.kind() == K::kInt) {
    if (a.is_string()) {
      check_value_bytes(saturating_mul(a.bytes(), b.as_int()), "string repetition");
      std::string out;
      out.reserve(saturating_mul(a.bytes(), b.as_int()));
      for (int64_t i = 0; i < b.as_int(); ++i) out += a.str();
      return Value(out);
    }
    check_value_bytes(saturating_mul(a.bytes(), b.as_int()), "list repetition");
    List out;
    for (int64_t i = 0; i < b.as_int(); ++i)
      out.insert(out.end(), a.items().begin(), a.items().end());
    return Value::list(std::move(out));
  }
  if (op == "%" && a.is_string()) return Value(percent_format(a.str(), b));
  throw Failure{"unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" +
                b.type_name() + "'"};
}

void install_globals(std::unordered_map<std::string, Value>& globals_) {
  globals_["raise_exception"] = Value::callable("raise_exception", [](Args& a) -> Value {
    // The template refuses the conversation (kData).
    throw Failure{"raise_exception: " + (a.pos.empty() ? std::string() : to_str(a.pos[0]))};
  });
  globals_["strftime_now"] = Value::callable("strftime_now", [](Args& a) -> Value {
    if (a.pos.empty() || !a.pos[0].is_string())
      throw Failure{"strftime_now(format) needs a format string"};
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[256];
    size_t n = std::strftime(buf, sizeof buf, a.pos[0].str().c_str(), &tm);
    return Value(std::string(buf, n));
  });
  auto make_dict = [](Args& a) {
    Dict d;
    for (const auto& p : a.pos) {
      if (!p.is_dict()) throw Failure{"dict()/namespace() positional argument must be a mapping"};
      for (const auto& [k, v] : p.dict_data().items) d.set(k, v);
    }
    for (const auto& [k, v] : a.kw) d.set(k, v);
    return d;
  };
  globals_["namespace"] = Value::callable("namespace", [make_dict](Args& a) {
    Dict d = make_dict(a);
    if (d.has_namespace) {
      throw Failure{"a namespace inside a namespace is not supported", ErrorKind::kUnsupported};
    }
    for (const auto& kv : d.items) {
      if (!kv.first.empty() && kv.first[0] == '_') {
        throw Failure{"namespace attributes cannot start with '_': '" + kv.first + "'"};
      }
    }
    return Value::make_namespace(std::move(d));
  });
  globals_["dict"] =
      Value::callable("dict", [make_dict](Args& a) { return Value::dict(make_dict(a)); });
  globals_["range"] = Value::callable("range", [](Args& a) {
    for (const auto& p : a.pos) {
      if (p.kind() != Value::Kind::kInt) throw Failure{"range() arguments must be integers"};
    }
    int64_t start = 0, stop = 0, step = 1;
    if (a.pos.size() == 1)
      stop = a.pos[0].as_int();
    else if (a.pos.size() >= 2)
      start = a.pos[0].as_int(), stop = a.pos[1].as_int();
    if (a.pos.size() == 3) step = a.pos[2].as_int();
    if (a.pos.empty() || a.pos.size() > 3 || step == 0)
      throw Failure{"range() takes 1 to 3 integer arguments"};
    // The length, computed without overflow, is checked before anything is built.
    uint64_t n = 0;
    if (step > 0 && start < stop)
      n = (static_cast<uint64_t>(stop) - static_cast<uint64_t>(start) - 1) /
              static_cast<uint64_t>(step) +
          1;
    else if (step < 0 && start > stop)
      n = (static_cast<uint64_t>(start) - static_cast<uint64_t>(stop) - 1) /
              (uint64_t{0} - static_cast<uint64_t>(step)) +
          1;
    const size_t limit = active_budgets().max_value_bytes;
    if (n > limit / sizeof(Value)) {
      throw Failure{"range() of " + std::to_string(n) + " items exceeds the limit of " +
                        std::to_string(limit / sizeof(Value)) + " items (" + std::to_string(limit) +
                        " bytes per value)",
                    ErrorKind::kResource};
    }
    List out;
    out.reserve(static_cast<size_t>(n));
    for (uint64_t i = 0; i < n; ++i) {
      out.emplace_back(
          static_cast<int64_t>(static_cast<uint64_t>(start) + i * static_cast<uint64_t>(step)));
    }
    return Value::list(std::move(out));
  });
}

}  // namespace loratune::jinja
