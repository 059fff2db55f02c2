// trainer/chat/jinja_eval.cpp — executes the syntax tree.
//
// Scoping follows jinja2: each for-loop iteration gets a fresh scope over the
// enclosing ones (so a `set` inside a loop is gone at the next iteration —
// the reason templates use namespace()), if-blocks share their scope, and a
// macro body sees only the template's top-level scope and its parameters.
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "trainer/chat/jinja.h"
#include "trainer/chat/jinja_ast.h"
#include "trainer/io/error.h"

namespace loratune::jinja {

struct Template::Program {
  Body body;
  std::string name;
  Budgets budgets;
};

namespace {

[[noreturn]] void fail_undefined(const Value& v) {
  throw Failure{v.str()};
}

bool expr_names(const Expr* e, const std::string& name) {
  if (!e) return false;
  if (e->kind == Expr::Kind::kName && e->name == name) return true;
  for (const auto& a : e->args) {
    if (expr_names(a.get(), name)) return true;
  }
  for (const auto& kv : e->kwargs) {
    if (expr_names(kv.second.get(), name)) return true;
  }
  return false;
}

// Whether a statement in `body` names `loop`; marks each for-loop whose body
// never does (its `loop` variable is then not built: a macro body cannot see
// it, so a name in the subtree is the only way to reach it).
bool mark_loop_use(Body& body) {
  bool found = false;
  for (auto& s : body) {
    bool here = expr_names(s->expr.get(), "loop") || expr_names(s->filter.get(), "loop") ||
                expr_names(s->attr_object.get(), "loop");
    for (auto& br : s->branches) {
      const bool in_branch = mark_loop_use(br.second);  // always runs: it marks loops
      here = expr_names(br.first.get(), "loop") || in_branch || here;
    }
    for (auto& p : s->params) here = expr_names(p.second.get(), "loop") || here;
    const bool in_body = mark_loop_use(s->body);
    const bool in_else = mark_loop_use(s->else_body);
    here = in_else || in_body || here;
    if (s->kind == Stmt::Kind::kFor) s->uses_loop = in_body;
    found = found || here;
  }
  return found;
}

bool body_has_generation(const Body& body) {
  for (const auto& s : body) {
    if (s->kind == Stmt::Kind::kGeneration) return true;
    if (body_has_generation(s->body) || body_has_generation(s->else_body)) return true;
    for (const auto& br : s->branches) {
      if (body_has_generation(br.second)) return true;
    }
  }
  return false;
}

class Evaluator {
 public:
  Evaluator(const std::string& name, const Budgets& budgets, const Dict& context,
            const std::vector<Value>& tracked, RenderOutput& result)
      : name_(name), budgets_(budgets), result_(result), out_(&result.text) {
    install_globals(globals_);
    auto root = std::make_shared<Frame>();
    for (const auto& [k, v] : context.items) (*root)[k] = v;
    scopes_.push_back(root);
    result_.tracked_segments.resize(tracked.size());
    for (size_t i = 0; i < tracked.size(); ++i) {
      if (const void* id = tracked[i].identity()) tracked_.emplace(id, i);
    }
  }

  void run(const Body& body) {
    Flow f = exec_body(body);
    if (f != Flow::kNormal)
      throw Error(name_ + ": 'break'/'continue' outside of a loop", ErrorKind::kCorrupt);
  }

 private:
  using Frame = std::unordered_map<std::string, Value>;
  enum class Flow { kNormal, kBreak, kContinue };

  // Redirects output into `buf` for the guard's lifetime (set blocks, macros).
  struct Capture {
    Capture(Evaluator& e, std::string& buf) : e_(e), saved_(e.out_) {
      e_.out_ = &buf;
      ++e_.capture_depth_;
    }
    ~Capture() {
      e_.out_ = saved_;
      --e_.capture_depth_;
    }
    Evaluator& e_;
    std::string* saved_;
  };

  [[noreturn]] void fail(int line, const Failure& f) const {
    throw Error(name_ + " line " + std::to_string(line) + ": " + f.message, f.kind);
  }

  [[noreturn]] static void exceeded(const std::string& what, int64_t limit,
                                    const std::string& unit = "") {
    throw Failure{what + " the limit of " + std::to_string(limit) + unit, ErrorKind::kResource};
  }

  // Counts one evaluation level for the guard's lifetime (stack guard).
  struct Level {
    explicit Level(Evaluator& e) : e_(e) {
      if (++e_.depth_ > e_.budgets_.max_eval_depth) {
        --e_.depth_;
        exceeded("evaluation nested deeper than", e_.budgets_.max_eval_depth, " levels");
      }
    }
    ~Level() { --e_.depth_; }
    Evaluator& e_;
  };

  // One loop iteration (or one item a loop's `if` tests); also checks the time.
  void count_iteration() {
    if (++iterations_ > budgets_.max_loop_iterations)
      exceeded("loop iterations exceed", budgets_.max_loop_iterations);
    check_render_time();
  }

  // Appends rendered text: the render's output, or a captured block (a value).
  void emit(const std::string& text) {
    const bool captured = out_ != &result_.text;
    const size_t limit = captured ? budgets_.max_value_bytes : budgets_.max_output_bytes;
    if (text.size() > limit || out_->size() > limit - text.size()) {
      throw Failure{std::string(captured ? "captured block output" : "rendered output") +
                        " exceeds the limit of " + std::to_string(limit) + " bytes",
                    ErrorKind::kResource};
    }
    *out_ += text;
  }

  // A value the template built (not one it was given) must fit the budgets.
  void check_built(const Value& v) const {
    if (v.bytes() > budgets_.max_value_bytes) check_value_bytes(v.bytes(), "a value");
    if (v.depth() > static_cast<uint32_t>(budgets_.max_nesting))
      exceeded("a value nested deeper than", budgets_.max_nesting, " levels");
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = (*it)->find(name);
      if (f != (*it)->end()) return f->second;
    }
    auto g = globals_.find(name);
    if (g != globals_.end()) return g->second;
    return Value::undefined("'" + name + "' is undefined");
  }

  void assign(const std::vector<std::string>& targets, const Value& v) {
    Frame& f = *scopes_.back();
    if (targets.size() == 1) {
      f[targets[0]] = v;
      return;
    }
    List items = iterate(v);
    if (items.size() != targets.size()) {
      throw Failure{"cannot unpack " + std::to_string(items.size()) + " values into " +
                    std::to_string(targets.size()) + " names"};
    }
    for (size_t i = 0; i < targets.size(); ++i) f[targets[i]] = items[i];
  }

  Flow exec_body(const Body& body) {
    for (const auto& s : body) {
      Flow f = exec(*s);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  std::string capture(const Body& body) {
    std::string buf;
    Capture c(*this, buf);
    if (exec_body(body) != Flow::kNormal)
      throw Failure{"'break'/'continue' inside a captured block"};
    return buf;
  }

  Flow exec(const Stmt& s) {
    try {
      Level level(*this);
      return exec_inner(s);
    } catch (const Failure& f) {
      fail(s.line, f);
    }
  }

  Flow exec_inner(const Stmt& s) {
    switch (s.kind) {
      case Stmt::Kind::kText:
        emit(s.text);
        return Flow::kNormal;
      case Stmt::Kind::kOutput:
        emit(to_str(eval(*s.expr)));
        return Flow::kNormal;
      case Stmt::Kind::kIf:
        for (const auto& [cond, body] : s.branches) {
          if (!cond || eval(*cond).truthy()) return exec_body(body);
        }
        return Flow::kNormal;
      case Stmt::Kind::kFor:
        return exec_for(s);
      case Stmt::Kind::kSet:
        if (s.attr_object) {
          Value ns = eval(*s.attr_object);
          if (ns.kind() != Value::Kind::kNamespace) {
            throw Failure{"cannot assign attribute '" + s.attr + "' on a " + ns.type_name() +
                          " (not a namespace)"};
          }
          if (!s.attr.empty() && s.attr[0] == '_')
            throw Failure{"namespace attributes cannot start with '_'"};
          Value v = eval(*s.expr);
          // Keeps namespaces acyclic and their recorded depth exact.
          if (v.holds_namespace()) {
            throw Failure{"a namespace inside a namespace is not supported",
                          ErrorKind::kUnsupported};
          }
          ns.namespace_data().set(s.attr, std::move(v));
        } else {
          assign(s.targets, eval(*s.expr));
        }
        return Flow::kNormal;
      case Stmt::Kind::kSetBlock: {
        Value v(capture(s.body));
        if (s.expr) v = apply_chain(*s.expr, v);
        assign(s.targets, v);
        return Flow::kNormal;
      }
      case Stmt::Kind::kMacro:
        define_macro(s);
        return Flow::kNormal;
      case Stmt::Kind::kBreak:
        return Flow::kBreak;
      case Stmt::Kind::kContinue:
        return Flow::kContinue;
      case Stmt::Kind::kGeneration: {
        if (capture_depth_ > 0) {
          throw Failure{
              "{% generation %} inside a macro, set block or filter block is not supported"};
        }
        size_t begin = out_->size();
        Flow f = exec_body(s.body);
        result_.generation_spans.push_back({begin, out_->size()});
        return f;
      }
      case Stmt::Kind::kFilterBlock:
        emit(to_str(apply_chain(*s.expr, Value(capture(s.body)))));
        return Flow::kNormal;
    }
    return Flow::kNormal;
  }

  // What loop.changed() last saw, shared by a loop's iterations (unset: not
  // called yet). Cleared when the loop ends, so that a value holding the
  // callable itself leaves no reference cycle behind.
  using ChangedState = std::shared_ptr<std::optional<List>>;

  // jinja2's `loop` in iteration i over `items` (distinct keys: appended
  // directly; Value::dict computes the sizes).
  static Value loop_variable(const List& items, int64_t i, const ChangedState& changed) {
    const int64_t n = static_cast<int64_t>(items.size());
    Dict loop;
    loop.items.reserve(13);
    loop.items.emplace_back("index", Value(i + 1));
    loop.items.emplace_back("index0", Value(i));
    loop.items.emplace_back("revindex", Value(n - i));
    loop.items.emplace_back("revindex0", Value(n - i - 1));
    loop.items.emplace_back("first", Value(i == 0));
    loop.items.emplace_back("last", Value(i == n - 1));
    loop.items.emplace_back("length", Value(n));
    loop.items.emplace_back("depth", Value(int64_t{1}));
    loop.items.emplace_back("depth0", Value(int64_t{0}));
    loop.items.emplace_back("previtem", i > 0 ? items[static_cast<size_t>(i - 1)]
                                              : Value::undefined("there is no previous item"));
    loop.items.emplace_back("nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)]
                                                  : Value::undefined("there is no next item"));
    loop.items.emplace_back("cycle", Value::callable("loop.cycle", [i](Args& a) -> Value {
                              if (a.pos.empty()) throw Failure{"no items for cycling given"};
                              return a.pos[static_cast<size_t>(i) % a.pos.size()];
                            }));
    // True when called with other values than at the previous call (or first).
    loop.items.emplace_back("changed", Value::callable("loop.changed", [changed](Args& a) -> Value {
                              if (!a.kw.empty())
                                throw Failure{"loop.changed() takes no keyword arguments"};
                              std::optional<List>& last = *changed;
                              bool same = last && last->size() == a.pos.size();
                              for (size_t k = 0; same && k < a.pos.size(); ++k)
                                same = equals((*last)[k], a.pos[k]);
                              if (same) return Value(false);
                              last = a.pos;
                              return Value(true);
                            }));
    return Value::dict(std::move(loop));
  }

  Flow exec_for(const Stmt& s) {
    const Value seq = eval(*s.expr);
    List owned;  // iterate()'s copy, or the kept items; a list is used in place
    const List* items = &owned;
    if (seq.is_list())
      items = &seq.items();
    else
      owned = iterate(seq);
    if (s.filter) {
      List kept;
      for (const auto& it : *items) {
        count_iteration();
        scopes_.push_back(std::make_shared<Frame>());
        assign(s.targets, it);
        bool keep = eval(*s.filter).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(it);
      }
      owned = std::move(kept);
      items = &owned;
    }
    if (items->empty()) return exec_body(s.else_body);
    const int64_t n = static_cast<int64_t>(items->size());
    // One scope, emptied for each iteration (nothing keeps a loop scope alive:
    // macros see only the top-level scope).
    auto frame = std::make_shared<Frame>();
    auto changed = std::make_shared<std::optional<List>>();
    struct ClearChanged {
      ChangedState& state;
      ~ClearChanged() { state->reset(); }
    } clear_changed{changed};
    for (int64_t i = 0; i < n; ++i) {
      count_iteration();
      const Value& item = (*items)[static_cast<size_t>(i)];
      frame->clear();
      scopes_.push_back(frame);
      assign(s.targets, item);
      if (s.uses_loop) (*frame)["loop"] = loop_variable(*items, i, changed);
      size_t begin = out_->size();
      Flow f = exec_body(s.body);
      scopes_.pop_back();
      track(item, begin);
      if (f == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  void track(const Value& item, size_t begin) {
    if (capture_depth_ > 0 || out_->size() == begin) return;
    const void* id = item.identity();
    if (!id) return;
    auto it = tracked_.find(id);
    if (it != tracked_.end()) result_.tracked_segments[it->second].push_back({begin, out_->size()});
  }

  void define_macro(const Stmt& s) {
    const Stmt* def = &s;
    (*scopes_.back())[s.name] = Value::callable(s.name, [this, def](Args& a) -> Value {
      if (call_depth_ >= budgets_.max_call_depth)
        exceeded("macro calls nested deeper than", budgets_.max_call_depth);
      struct CallDepth {
        int& d;
        ~CallDepth() { --d; }
      } guard{++call_depth_};
      auto frame = std::make_shared<Frame>();
      if (a.pos.size() > def->params.size())
        throw Failure{"macro '" + def->name + "' takes " + std::to_string(def->params.size()) +
                      " arguments"};
      std::vector<std::shared_ptr<Frame>> saved = {scopes_[0], frame};
      std::swap(saved, scopes_);
      try {
        for (size_t i = 0; i < def->params.size(); ++i) {
          const auto& [pname, dflt] = def->params[i];
          const Value* v = a.get(i, pname);
          (*frame)[pname] =
              v ? *v : (dflt ? eval(*dflt) : Value::undefined("'" + pname + "' is undefined"));
        }
        for (const auto& kv : a.kw) {
          bool known = false;
          for (const auto& p : def->params) known = known || p.first == kv.first;
          if (!known)
            throw Failure{"macro '" + def->name + "' takes no keyword argument '" + kv.first + "'"};
        }
        std::string out = capture(def->body);
        std::swap(saved, scopes_);
        return Value(out);
      } catch (...) {
        std::swap(saved, scopes_);
        throw;
      }
    });
  }

  Value eval(const Expr& e) {
    try {
      Level level(*this);
      Value v = eval_inner(e);
      switch (e.kind) {
        case Expr::Kind::kLiteral:
        case Expr::Kind::kName:
        case Expr::Kind::kGetAttr:
        case Expr::Kind::kGetItem:
          break;  // existing values
        default:
          check_built(v);
      }
      return v;
    } catch (const Failure& f) {
      fail(e.line, f);
    }
  }

  Args eval_args(const Expr& e, size_t first) {
    Args a;
    for (size_t i = first; i < e.args.size(); ++i) a.pos.push_back(eval(*e.args[i]));
    for (const auto& [k, v] : e.kwargs) a.kw.emplace_back(k, eval(*v));
    return a;
  }

  // Applies a filter chain whose innermost input slot is null to `input`.
  Value apply_chain(const Expr& f, const Value& input) {
    Value in = f.args[0] ? apply_chain(*f.args[0], input) : input;
    Args a = eval_args(f, 1);
    return apply_filter(f.name, in, a);
  }

  Value call(const Expr& e) {
    const Expr& callee = *e.args[0];
    Args a = eval_args(e, 1);
    Value fn;
    if (callee.kind == Expr::Kind::kGetAttr) {
      Value obj = eval(*callee.args[0]);
      Value r;
      if (call_method(obj, callee.name, a, r)) return r;
      fn = get_attr(obj, callee.name);
    } else {
      fn = eval(callee);
    }
    if (fn.is_undefined()) fail_undefined(fn);
    if (fn.kind() != Value::Kind::kCallable)
      throw Failure{"'" + fn.type_name() + "' object is not callable"};
    return fn.call(a);
  }

  Value eval_inner(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName:
        return lookup(e.name);
      case Expr::Kind::kGetAttr:
        return get_attr(eval(*e.args[0]), e.name);
      case Expr::Kind::kGetItem:
        return get_item(eval(*e.args[0]), eval(*e.args[1]));
      case Expr::Kind::kSlice: {
        auto part = [&](size_t i) { return e.args[i] ? eval(*e.args[i]) : Value::none(); };
        return slice_value(eval(*e.args[0]), part(1), part(2), part(3));
      }
      case Expr::Kind::kCall:
        return call(e);
      case Expr::Kind::kFilter: {
        Value in = eval(*e.args[0]);
        Args a = eval_args(e, 1);
        return apply_filter(e.name, in, a);
      }
      case Expr::Kind::kTest: {
        Value v = eval(*e.args[0]);
        Args a = eval_args(e, 1);
        return Value(apply_test(e.name, v, a) != e.negated);
      }
      case Expr::Kind::kUnary: {
        Value v = eval(*e.args[0]);
        if (e.name == "not") return Value(!v.truthy());
        if (v.is_undefined()) fail_undefined(v);
        if (v.kind() == Value::Kind::kBool) v = Value(int64_t{v.as_bool()});
        if (v.kind() == Value::Kind::kInt)
          return Value(e.name == "-" ? int_neg(v.as_int()) : v.as_int());
        if (v.kind() == Value::Kind::kFloat)
          return Value(e.name == "-" ? -v.as_double() : v.as_double());
        throw Failure{"bad operand type for unary " + e.name + ": '" + v.type_name() + "'"};
      }
      case Expr::Kind::kBinary: {
        if (e.name == "and" || e.name == "or") {
          Value a = eval(*e.args[0]);
          if (a.truthy() == (e.name == "or")) return a;
          return eval(*e.args[1]);
        }
        Value a = eval(*e.args[0]);
        Value b = eval(*e.args[1]);
        if (e.name == "~") {
          std::string x = to_str(a), y = to_str(b);
          check_value_bytes(x.size() + y.size(), "string concatenation");
          return Value(x + y);
        }
        return binary_op(e.name, a, b);
      }
      case Expr::Kind::kCompare: {
        Value left = eval(*e.args[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1]);
          const std::string& op = e.ops[i];
          bool ok;
          if (op == "==")
            ok = equals(left, right);
          else if (op == "!=")
            ok = !equals(left, right);
          else if (op == "in")
            ok = contains(right, left);
          else if (op == "not in")
            ok = !contains(right, left);
          else {
            if (left.is_undefined()) fail_undefined(left);
            if (right.is_undefined()) fail_undefined(right);
            int c = compare(left, right);
            ok = op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
          }
          if (!ok) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::kCond:
        if (eval(*e.args[1]).truthy()) return eval(*e.args[0]);
        return e.args[2] ? eval(*e.args[2])
                         : Value::undefined("the inline if-expression evaluated to false");
      case Expr::Kind::kList: {
        List items;
        for (const auto& x : e.args) items.push_back(eval(*x));
        return Value::list(std::move(items),
                           e.name == "tuple" ? Value::Flavor::kTuple : Value::Flavor::kList);
      }
      case Expr::Kind::kDict: {
        Dict d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i]);
          if (!k.is_string())
            throw Failure{"dict literal keys must be strings here, got " + k.type_name()};
          d.set(k.str(), eval(*e.args[i + 1]));
        }
        return Value::dict(std::move(d));
      }
    }
    throw Failure{"internal: unknown expression"};
  }

  const std::string& name_;
  const Budgets& budgets_;
  RenderOutput& result_;
  std::string* out_;
  int capture_depth_ = 0;
  int depth_ = 0;       // evaluation levels active (Level)
  int call_depth_ = 0;  // macro calls active
  int64_t iterations_ = 0;
  std::vector<std::shared_ptr<Frame>> scopes_;
  Frame globals_;
  std::unordered_map<const void*, size_t> tracked_;
};

}  // namespace

Template::Template(const std::string& source, const std::string& name, const Budgets& budgets)
    : program_(std::make_unique<Program>()) {
  program_->name = name;
  program_->budgets = budgets;
  program_->body = parse(source, name, budgets);
  has_generation_ = body_has_generation(program_->body);
  mark_loop_use(program_->body);
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

RenderOutput Template::render(const Dict& context, const std::vector<Value>& tracked) const {
  RenderOutput out;
  BudgetScope scope(program_->budgets);
  Evaluator ev(program_->name, program_->budgets, context, tracked, out);
  ev.run(program_->body);
  return out;
}

}  // namespace loratune::jinja
