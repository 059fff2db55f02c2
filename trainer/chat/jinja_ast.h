// trainer/chat/jinja_ast.h — tokens and syntax tree of the Jinja subset
// (internal to the jinja_*.cpp files; the public entry point is jinja.h).
//
// Every token and node carries its 1-based template line so that errors read
// "chat template line N: ...".
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "trainer/chat/jinja_value.h"

namespace loratune::jinja {

struct Token {
  enum class Kind {
    kText,
    kVarBegin,
    kVarEnd,
    kBlockBegin,
    kBlockEnd,
    kName,
    kString,
    kInt,
    kFloat,
    kOp,
    kEnd
  };
  Kind kind;
  std::string text;  // text, name, decoded string literal, number or operator
  int line;
};

// Lexes with transformers' Environment options: trim_blocks and lstrip_blocks
// on, keep_trailing_newline off, "{%- -%}" / "{%+ +%}" whitespace control.
// Throws loratune::Error "<name> line N: ..." (kCorrupt) on a lexical error
// and (kResource) for a source over budgets.max_source_bytes.
std::vector<Token> lex(const std::string& source, const std::string& name, const Budgets& budgets);

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,  // value
    kName,     // name
    kGetAttr,  // args[0].name
    kGetItem,  // args[0][args[1]]
    kSlice,    // args[0][args[1]:args[2]:args[3]] (null parts allowed)
    kCall,     // args[0](args[1..], kwargs)
    kFilter,   // args[0] | name(args[1..], kwargs)
    kTest,     // args[0] is [not] name(args[1..])
    kUnary,    // name in {"-", "+", "not"} applied to args[0]
    kBinary,   // args[0] name args[1]; name in + - * / // % ** ~ and or
    kCompare,  // args[0] ops[0] args[1] ops[1] args[2] ... (chained)
    kCond,     // args[0] if args[1] else args[2] (args[2] may be null)
    kList,     // [args...] (also tuples)
    kDict,     // {args[0]: args[1], args[2]: args[3], ...}
  };
  Expr(Kind k, int l) : kind(k), line(l) {}
  Kind kind;
  int line;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
  int depth = 1;  // height of this subtree (the parser bounds it)
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // branches: (cond, body); cond null for else
    kFor,       // for targets in expr [if filter] body [else else_body]
    kSet,       // set targets = expr, or set attr_object.attr = expr
    kSetBlock,  // set targets[0] %} body {% endset
    kMacro,     // macro name(params) body
    kBreak,
    kContinue,
    kGeneration,   // {% generation %} body {% endgeneration %}
    kFilterBlock,  // {% filter expr %} body (expr is a kFilter with null input)
  };
  Stmt(Kind k, int l) : kind(k), line(l) {}
  Kind kind;
  int line;
  std::string text;
  ExprPtr expr;
  ExprPtr filter;       // for-loop condition
  ExprPtr attr_object;  // namespace expression in "set ns.attr = ..."
  std::string attr;
  std::vector<std::string> targets;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body, else_body;
  std::string name;
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro parameters, default may be null
  bool uses_loop = true;  // kFor: whether the body names `loop` (else it is not built)
};

// Parses a whole template; throws loratune::Error "<name> line N: ...":
// kCorrupt for syntax errors, kUnsupported for constructs outside the subset,
// kResource for nesting deeper than budgets.max_nesting (checked on the way
// down, so the recursive-descent parser itself never overflows the stack).
Body parse(const std::string& source, const std::string& name, const Budgets& budgets);

// Names the parser accepts after "|" and "is" (jinja_filters.cpp).
bool is_known_filter(const std::string& name);
bool is_known_test(const std::string& name);

// Built-ins; each throws Failure on a type or argument error.
// jinja_filters.cpp:
Value apply_filter(const std::string& name, const Value& input, Args& args);
bool apply_test(const std::string& name, const Value& v, Args& args);
// jinja_methods.cpp — jinja2 getattr/getitem semantics (a missing key gives
// undefined; any access on undefined fails) and Python str/dict/list methods.
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
Value slice_value(const Value& obj, const Value& start, const Value& stop, const Value& step);
// Calls obj.name(args); returns false when obj has no such method.
bool call_method(const Value& obj, const std::string& name, Args& args, Value& result);
// Python len(), iteration (dict: keys; str: characters; undefined: nothing)
// and `in`.
int64_t length(const Value& v);
List iterate(const Value& v);
bool contains(const Value& container, const Value& item);
// jinja_globals.cpp: a binary operator (+ - * / // % **) with Python
// semantics, and the globals a template sees under its own variables.
Value binary_op(const std::string& op, const Value& a, const Value& b);
void install_globals(std::unordered_map<std::string, Value>& globals);
// Python int arithmetic on 64 bits: a result that does not fit throws
// Failure (kUnsupported; Python would switch to a big integer) instead of
// wrapping.
[[noreturn]] void int_overflow();
int64_t int_add(int64_t a, int64_t b);
int64_t int_sub(int64_t a, int64_t b);
int64_t int_mul(int64_t a, int64_t b);
int64_t int_neg(int64_t a);
// Python int(d) for a float: truncates; nan/inf throw Failure (kData), a
// value outside 64 bits int_overflow().
int64_t float_to_int(double d);
// Python's printf-style `fmt % args`: args is a tuple (its items are the
// arguments), a dict (for %(key)s) or any other single value.
std::string percent_format(const std::string& fmt, const Value& args);
// Python str methods used by filters too.
std::string py_strip(const std::string& s, const Value* chars, bool left, bool right);
std::string py_upper(const std::string& s);
std::string py_lower(const std::string& s);
std::string py_title(const std::string& s);
std::string py_capitalize(const std::string& s);
std::string py_replace(const std::string& s, const std::string& from, const std::string& to,
                       int64_t count);

}  // namespace loratune::jinja
