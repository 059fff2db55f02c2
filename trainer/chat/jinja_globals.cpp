// trainer/chat/jinja_globals.cpp — arithmetic operators and the global
// functions of transformers' chat-template environment (raise_exception,
// strftime_now, namespace, dict) plus jinja2's range.
#include <cmath>
#include <ctime>
#include <string>
#include <unordered_map>

#include "trainer/chat/jinja_ast.h"

namespace loratune::jinja {
namespace {

[[noreturn]] void fail_undefined(const Value& v) {
  throw Failure{v.str()};
}

}  // namespace

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
    if (op == "+") return ints ? Value(ival(a) + ival(b)) : Value(dval(a) + dval(b));
    if (op == "-") return ints ? Value(ival(a) - ival(b)) : Value(dval(a) - dval(b));
    if (op == "*") return ints ? Value(ival(a) * ival(b)) : Value(dval(a) * dval(b));
    if (op == "/") {
      if (dval(b) == 0.0) throw Failure{"division by zero"};
      return Value(dval(a) / dval(b));
    }
    if (op == "//" || op == "%") {
      if (dval(b) == 0.0) throw Failure{"integer division or modulo by zero"};
      if (ints) {
        int64_t x = ival(a), y = ival(b), q = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
        return op == "//" ? Value(q) : Value(x - q * y);
      }
      double q = std::floor(dval(a) / dval(b));
      return op == "//" ? Value(q) : Value(dval(a) - q * dval(b));
    }
    if (op == "**") {
      if (ints && ival(b) >= 0) {
        // By squaring (O(log b)); wraps on overflow like the other int ops.
        uint64_t r = 1, base = static_cast<uint64_t>(ival(a));
        for (uint64_t e = static_cast<uint64_t>(ival(b)); e != 0; e >>= 1) {
          if (e & 1) r *= base;
          base *= base;
        }
        return Value(static_cast<int64_t>(r));
      }
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
  if (op == "%" && a.is_string())
    throw Failure{"printf-style '%' string formatting is not supported", ErrorKind::kUnsupported};
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
