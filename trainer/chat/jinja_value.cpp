// trainer/chat/jinja_value.cpp — Value construction, Python str/repr,
// comparisons and json.dumps formatting.
#include "trainer/chat/jinja_value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace loratune::jinja {
namespace {

size_t add_sat(size_t a, size_t b) {
  return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

// Memory of one element slot: the Value plus its key (dicts).
size_t slot_bytes(const std::string& key, const Value& v) {
  return add_sat(sizeof(Value) + key.size(), v.bytes());
}

}  // namespace

const Value* Dict::find(const std::string& key) const {
  for (const auto& [k, v] : items) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Dict::set(const std::string& key, Value value) {
  depth = std::max<uint32_t>(depth, value.depth() + 1);
  has_namespace = has_namespace || value.holds_namespace();
  const size_t add = slot_bytes(key, value);
  for (auto& [k, v] : items) {
    if (k == key) {
      bytes = add_sat(bytes - std::min(bytes, slot_bytes(k, v)), add);
      v = std::move(value);
      return;
    }
  }
  bytes = add_sat(bytes, add);
  items.emplace_back(key, std::move(value));
}

const Value* Args::get(size_t index, const std::string& name) const {
  for (const auto& [k, v] : kw) {
    if (k == name) return &v;
  }
  return index < pos.size() ? &pos[index] : nullptr;
}

Value Value::undefined(std::string hint) {
  Value v;
  v.s_ = std::move(hint);
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}

Value Value::list(List items, Flavor flavor) {
  Value v;
  v.kind_ = Kind::kList;
  v.flavor_ = flavor;
  uint32_t depth = 0;
  for (const auto& e : items) {
    v.bytes_ = add_sat(v.bytes_, slot_bytes(std::string(), e));
    depth = std::max(depth, e.depth());
    v.has_namespace_ = v.has_namespace_ || e.holds_namespace();
  }
  v.depth_ = depth + 1;
  v.list_ = std::make_shared<const List>(std::move(items));
  return v;
}

Value Value::dict(Dict d) {
  Value v;
  v.kind_ = Kind::kDict;
  d.bytes = 0;
  d.depth = 1;
  d.has_namespace = false;
  for (const auto& [k, e] : d.items) {
    d.bytes = add_sat(d.bytes, slot_bytes(k, e));
    d.depth = std::max<uint32_t>(d.depth, e.depth() + 1);
    d.has_namespace = d.has_namespace || e.holds_namespace();
  }
  v.dict_ = std::make_shared<Dict>(std::move(d));
  return v;
}

size_t Value::bytes() const {
  switch (kind_) {
    case Kind::kString:
      return s_.size();
    case Kind::kList:
      return bytes_;
    case Kind::kDict:
    case Kind::kNamespace:
      return dict_->bytes;
    default:
      return 0;
  }
}

uint32_t Value::depth() const {
  if (kind_ == Kind::kList) return depth_;
  if (kind_ == Kind::kDict || kind_ == Kind::kNamespace) return dict_->depth;
  return 0;
}

bool Value::holds_namespace() const {
  if (kind_ == Kind::kNamespace) return true;
  if (kind_ == Kind::kList) return has_namespace_;
  if (kind_ == Kind::kDict) return dict_->has_namespace;
  return false;
}

Value Value::make_namespace(Dict d) {
  Value v = dict(std::move(d));
  v.kind_ = Kind::kNamespace;
  return v;
}

Value Value::callable(std::string name, NativeFn fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.s_ = std::move(name);
  v.fn_ = std::make_shared<NativeFn>(std::move(fn));
  return v;
}

namespace {

Value from_json_at(const nlohmann::ordered_json& j, int depth);

}  // namespace

Value Value::from_json(const nlohmann::ordered_json& j) {
  return from_json_at(j, 0);
}

namespace {

Value from_json_at(const nlohmann::ordered_json& j, int depth) {
  if (depth > active_budgets().max_nesting) {
    throw Failure{"JSON input nested deeper than the limit of " +
                  std::to_string(active_budgets().max_nesting) + " levels"};
  }
  using Value = ::loratune::jinja::Value;
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::none();
    case nlohmann::ordered_json::value_t::boolean:
      return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned:
      return Value(static_cast<int64_t>(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float:
      return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List items;
      for (const auto& e : j) items.push_back(from_json_at(e, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it)
        d.set(it.key(), from_json_at(it.value(), depth + 1));
      return Value::dict(std::move(d));
    }
    default:
      throw Failure{"unsupported JSON value (binary or discarded)"};
  }
}

}  // namespace

const void* Value::identity() const {
  if (kind_ == Kind::kList) return list_.get();
  if (kind_ == Kind::kDict || kind_ == Kind::kNamespace) return dict_.get();
  return nullptr;
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "Namespace";
    case Kind::kCallable:
      return "function";
  }
  return "?";
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return b_;
    case Kind::kInt:
      return i_ != 0;
    case Kind::kFloat:
      return f_ != 0.0;
    case Kind::kString:
      return !s_.empty();
    case Kind::kList:
      return !list_->empty();
    case Kind::kDict:
      return !dict_->items.empty();
    default:
      return true;
  }
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*e", prec - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  // buf is d.ddde±XX with the shortest round-tripping digits.
  std::string s(buf);
  size_t e = s.find('e');
  std::string mant = s.substr(0, e);
  int exp = std::atoi(s.c_str() + e + 1);
  bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  } else if (exp < 0) {
    out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  } else {
    size_t int_len = static_cast<size_t>(exp) + 1;
    if (digits.size() <= int_len) {
      out = digits + std::string(int_len - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, int_len) + "." + digits.substr(int_len);
    }
  }
  return neg ? "-" + out : out;
}

namespace {

std::string py_string_repr(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char q = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == static_cast<unsigned char>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += q;
  return out;
}

void json_string(const std::string& s, bool ensure_ascii, std::string& out) {
  out += '"';
  for (char32_t c : decode_utf8(s)) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default: {
        char buf[16];
        if (c < 0x20 || (ensure_ascii && c > 0x7e)) {
          if (c > 0xffff) {
            char32_t v = c - 0x10000;
            std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x",
                          static_cast<unsigned>(0xd800 + (v >> 10)),
                          static_cast<unsigned>(0xdc00 + (v & 0x3ff)));
          } else {
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          }
          out += buf;
        } else {
          out += encode_utf8(std::u32string(1, c));
        }
      }
    }
  }
  out += '"';
}

void json_value(const Value& v, const JsonOptions& o, int level, std::string& out) {
  auto check = [&](size_t more) {
    if (more > o.max_bytes || out.size() > o.max_bytes - more) {
      throw Failure{
          "tojson output exceeds the limit of " + std::to_string(o.max_bytes) + " bytes per value",
          ErrorKind::kResource};
    }
  };
  auto newline = [&](int lvl) {
    if (o.indent < 0 && o.indent_str.empty()) return;
    const size_t step = o.indent_str.empty() ? static_cast<size_t>(o.indent) : o.indent_str.size();
    check(add_sat(1, saturating_mul(step, lvl)));
    out += '\n';
    for (int i = 0; i < lvl; ++i) {
      if (o.indent_str.empty())
        out.append(static_cast<size_t>(o.indent), ' ');
      else
        out += o.indent_str;
    }
  };
  check(0);
  switch (v.kind()) {
    case Value::Kind::kNone:
      out += "null";
      return;
    case Value::Kind::kBool:
      out += v.as_bool() ? "true" : "false";
      return;
    case Value::Kind::kInt:
      out += std::to_string(v.as_int());
      return;
    case Value::Kind::kFloat: {
      double d = v.as_double();
      if (std::isnan(d))
        out += "NaN";
      else if (std::isinf(d))
        out += d > 0 ? "Infinity" : "-Infinity";
      else
        out += float_repr(d);
      return;
    }
    case Value::Kind::kString:
      check(v.str().size());
      json_string(v.str(), o.ensure_ascii, out);
      return;
    case Value::Kind::kList: {
      if (v.items().empty()) {
        out += "[]";
        return;
      }
      out += '[';
      bool first = true;
      for (const auto& e : v.items()) {
        if (!first) check(o.item_sep.size()), out += o.item_sep;
        first = false;
        newline(level + 1);
        json_value(e, o, level + 1, out);
      }
      newline(level);
      out += ']';
      return;
    }
    case Value::Kind::kDict: {
      auto items = v.dict_data().items;
      if (items.empty()) {
        out += "{}";
        return;
      }
      if (o.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
      }
      out += '{';
      bool first = true;
      for (const auto& [k, e] : items) {
        if (!first) check(o.item_sep.size()), out += o.item_sep;
        first = false;
        newline(level + 1);
        check(k.size() + o.key_sep.size());
        json_string(k, o.ensure_ascii, out);
        out += o.key_sep;
        json_value(e, o, level + 1, out);
      }
      newline(level);
      out += '}';
      return;
    }
    default:
      throw Failure{"Object of type " + v.type_name() + " is not JSON serializable"};
  }
}

}  // namespace

std::string to_str(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kString:
      return v.str();
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.as_bool() ? "True" : "False";
    case Value::Kind::kInt:
      return std::to_string(v.as_int());
    case Value::Kind::kFloat:
      return float_repr(v.as_double());
    default:
      return repr(v);
  }
}

std::string repr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kString:
      return py_string_repr(v.str());
    case Value::Kind::kList: {
      const bool tuple = v.flavor() == Value::Flavor::kTuple;
      std::string out = tuple ? "(" : "[";
      for (size_t i = 0; i < v.items().size(); ++i) out += (i ? ", " : "") + repr(v.items()[i]);
      out += tuple ? (v.items().size() == 1 ? ",)" : ")") : "]";
      switch (v.flavor()) {
        case Value::Flavor::kDictItems:
          return "dict_items(" + out + ")";
        case Value::Flavor::kDictKeys:
          return "dict_keys(" + out + ")";
        case Value::Flavor::kDictValues:
          return "dict_values(" + out + ")";
        default:
          return out;
      }
    }
    case Value::Kind::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, e] : v.dict_data().items) {
        out += (first ? "" : ", ") + py_string_repr(k) + ": " + repr(e);
        first = false;
      }
      return out + "}";
    }
    case Value::Kind::kNamespace:
      return "<Namespace>";
    case Value::Kind::kCallable:
      return "<function " + v.callable_name() + ">";
    default:
      return to_str(v);
  }
}

bool equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() || a.kind() == K::kBool) {
    if (!(b.is_number() || b.kind() == K::kBool)) return false;
    auto num = [](const Value& x) {
      return x.kind() == K::kBool ? (x.as_bool() ? 1.0 : 0.0) : x.as_double();
    };
    if (a.kind() != K::kFloat && b.kind() != K::kFloat) {
      auto iv = [](const Value& x) {
        return x.kind() == K::kBool ? int64_t{x.as_bool()} : x.as_int();
      };
      return iv(a) == iv(b);
    }
    return num(a) == num(b);
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone:
      return true;
    case K::kString:
      return a.str() == b.str();
    case K::kList: {
      if (a.items().size() != b.items().size()) return false;
      for (size_t i = 0; i < a.items().size(); ++i) {
        if (!equals(a.items()[i], b.items()[i])) return false;
      }
      return true;
    }
    case K::kDict: {
      const auto& x = a.dict_data().items;
      if (x.size() != b.dict_data().items.size()) return false;
      for (const auto& [k, v] : x) {
        const Value* o = b.dict_data().find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    }
    default:
      return a.identity() == b.identity();
  }
}

int compare(const Value& a, const Value& b) {
  using K = Value::Kind;
  auto numeric = [](const Value& x) { return x.is_number() || x.kind() == K::kBool; };
  if (numeric(a) && numeric(b)) {
    double x = a.kind() == K::kBool ? a.as_bool() : a.as_double();
    double y = b.kind() == K::kBool ? b.as_bool() : b.as_double();
    if (a.kind() == K::kInt && b.kind() == K::kInt)
      return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int();
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) {
    // Code point order equals UTF-8 byte order.
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if (a.is_list() && b.is_list()) {
    size_t n = std::min(a.items().size(), b.items().size());
    for (size_t i = 0; i < n; ++i) {
      if (int c = compare(a.items()[i], b.items()[i])) return c;
    }
    return a.items().size() < b.items().size() ? -1 : (a.items().size() > b.items().size());
  }
  throw Failure{"'<' not supported between instances of '" + a.type_name() + "' and '" +
                b.type_name() + "'"};
}

std::string to_json(const Value& v, const JsonOptions& opts) {
  std::string out;
  json_value(v, opts, 0, out);
  return out;
}

std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + static_cast<size_t>(len) > s.size()) {
      out += U'\uFFFD';
      ++i;
      continue;
    }
    char32_t cp = len == 1 ? c : (c & (0xff >> (len + 1)));
    bool ok = true;
    for (int k = 1; k < len; ++k) {
      unsigned char d = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
      if ((d >> 6) != 2) ok = false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (!ok) {
      out += U'\uFFFD';
      ++i;
      continue;
    }
    out += cp;
    i += static_cast<size_t>(len);
  }
  return out;
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  for (char32_t c : s) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xc0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      out += static_cast<char>(0xe0 | (c >> 12));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (c & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (c >> 18));
      out += static_cast<char>(0x80 | ((c >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (c & 0x3f));
    }
  }
  return out;
}

bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

}  // namespace loratune::jinja
