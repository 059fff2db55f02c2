// trainer/chat/jinja_value.h — the values a chat template computes with.
//
// A Value mirrors what Jinja2 sees when transformers renders a chat template
// from plain JSON data: undefined, None, bool, int, float, str, list, dict, a
// namespace() and callables (macros, globals, loop.cycle). Lists and dicts are
// shared and immutable (the sandbox forbids mutation); a namespace is the one
// mutable container. Dict keys keep insertion order, as Python dicts do,
// because tojson and items() expose it.
//
// Strings are UTF-8. Everything Python counts in characters (len, slicing,
// indexing, strip sets) is counted in code points here.
//
// Helpers throw jinja::Failure (no template line known yet); the evaluator
// turns it into loratune::Error naming the template line.
//
// Lists and dicts record their size (bytes(): the deep size of their
// elements plus one Value slot each) and nesting depth() when built, so that
// budgets (jinja_budgets.h) can be checked in O(1) before a bigger value is
// built from them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/chat/jinja_budgets.h"
#include "trainer/io/error.h"

namespace loratune::jinja {

// A runtime error without a location; the evaluator adds "chat template line N: ".
// kData: the template refuses or cannot handle the conversation (its own
// raise_exception, a type error on the data); kResource: a budget;
// kUnsupported: a construct loratune does not implement.
struct Failure {
  std::string message;
  ErrorKind kind = ErrorKind::kData;
};

class Value;
using List = std::vector<Value>;

// Insertion-ordered string-keyed map (Python dict semantics for our inputs).
// set() keeps bytes/depth/has_namespace up to date (a namespace is mutated
// through it); code that edits `items` directly must not rely on them.
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  size_t bytes = 0;            // deep size (see Value::bytes)
  uint32_t depth = 1;          // 1 + deepest value
  bool has_namespace = false;  // some value is or holds a namespace
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value value);
};

// Call arguments: positional then keyword.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // The argument named `name`, else positional `index`, else nullptr.
  const Value* get(size_t index, const std::string& name) const;
};

using NativeFn = std::function<Value(Args&)>;

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kDict,
    kNamespace,
    kCallable
  };

  Value() = default;  // undefined
  Value(bool b) : kind_(Kind::kBool), b_(b) {}
  Value(int v) : kind_(Kind::kInt), i_(v) {}
  Value(int64_t v) : kind_(Kind::kInt), i_(v) {}
  Value(double v) : kind_(Kind::kFloat), f_(v) {}
  Value(std::string s) : kind_(Kind::kString), s_(std::move(s)) {}
  Value(const char* s) : kind_(Kind::kString), s_(s) {}

  // `hint` names what was undefined, for error messages ("'x' is undefined").
  static Value undefined(std::string hint);
  static Value none();
  // How a list prints: Python list, tuple, or a dict view (items()/keys()/values()).
  enum class Flavor : uint8_t { kList, kTuple, kDictItems, kDictKeys, kDictValues };
  static Value list(List items, Flavor flavor = Flavor::kList);
  static Value dict(Dict d);
  static Value make_namespace(Dict d);
  static Value callable(std::string name, NativeFn fn);
  // Converts JSON (objects keep their key order). JSON nested deeper than
  // Budgets::max_nesting throws Failure (kData) instead of recursing on.
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }
  double as_double() const { return kind_ == Kind::kInt ? static_cast<double>(i_) : f_; }
  const std::string& str() const { return s_; }  // string content, or the undefined hint
  const List& items() const { return *list_; }
  Flavor flavor() const { return flavor_; }
  const Dict& dict_data() const { return *dict_; }
  Dict& namespace_data() const { return *dict_; }  // the one mutable container
  const std::string& callable_name() const { return s_; }
  Value call(Args& args) const { return (*fn_)(args); }

  // Deep size in bytes: a string's length; a list/dict/namespace: the sum
  // over elements of sizeof(Value) + key + element bytes (saturating); else 0.
  size_t bytes() const;
  // Nesting: 0 for scalars, 1 + the deepest element for lists/dicts.
  uint32_t depth() const;
  // True for a namespace or a list/dict that contains one.
  bool holds_namespace() const;

  // Stable identity of a list/dict payload (message tracking), else nullptr.
  const void* identity() const;
  // Python's type name: "str", "int", "list", "dict", "NoneType", ...
  std::string type_name() const;
  bool truthy() const;

 private:
  Kind kind_ = Kind::kUndefined;
  Flavor flavor_ = Flavor::kList;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0.0;
  std::string s_;
  std::shared_ptr<const List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<NativeFn> fn_;
  size_t bytes_ = 0;  // lists (dicts keep theirs in Dict)
  uint32_t depth_ = 0;
  bool has_namespace_ = false;
};

// Python str(value) / repr(value). Printing undefined gives "".
std::string to_str(const Value& v);
std::string repr(const Value& v);
// Python ==, and ordering (<0, 0, >0) for numbers, strings and lists; throws
// Failure for unorderable types.
bool equals(const Value& a, const Value& b);
int compare(const Value& a, const Value& b);

// json.dumps options as transformers' tojson filter passes them.
struct JsonOptions {
  bool ensure_ascii = false;
  int indent = -1;         // < 0: no newlines
  std::string indent_str;  // when indent was given as a string
  bool sort_keys = false;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  size_t max_bytes = SIZE_MAX;  // longer output throws Failure (kResource) before it is built
};
std::string to_json(const Value& v, const JsonOptions& opts);

// UTF-8 <-> code points (invalid bytes decode as U+FFFD).
std::u32string decode_utf8(const std::string& s);
std::string encode_utf8(const std::u32string& s);
// Python str.isspace() for one code point.
bool is_py_space(char32_t c);
// Python float repr ("1.0", "0.1", "1e+16").
std::string float_repr(double d);

}  // namespace loratune::jinja
