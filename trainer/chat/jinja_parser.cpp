// trainer/chat/jinja_parser.cpp — tokens to the syntax tree, following
// jinja2.parser's grammar and operator precedence (filters bind tighter than
// binary operators; "not" looser than comparisons).
//
// Nesting is bounded (Budgets::max_nesting) twice: the recursion depth of the
// parser (statements in statements, parenthesised/bracketed/argument
// expressions, chained unary operators) is counted on the way down, and the
// height of each expression tree (left-associative chains such as a+b+c...,
// x|f|g..., x.a.b...) as nodes are built, so that neither parsing, evaluating
// nor destroying a tree can run out of stack.
#include <algorithm>
#include <string>
#include <vector>

#include "trainer/chat/jinja_ast.h"
#include "trainer/io/error.h"

namespace loratune::jinja {
namespace {

using TK = Token::Kind;

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& name, const Budgets& budgets)
      : t_(std::move(tokens)), name_(name), budgets_(budgets) {}

  Body parse_template() {
    std::string stop;
    Body body = parse_body({}, stop);
    return body;
  }

 private:
  [[noreturn]] void fail(int line, const std::string& what,
                         ErrorKind kind = ErrorKind::kCorrupt) const {
    throw Error(name_ + " line " + std::to_string(line) + ": " + what, kind);
  }
  [[noreturn]] void too_deep(int line) const {
    fail(line,
         "template nested deeper than the limit of " + std::to_string(budgets_.max_nesting) +
             " levels",
         ErrorKind::kResource);
  }

  // One level of parser recursion for the guard's lifetime.
  struct Nest {
    explicit Nest(Parser& p) : p_(p) {
      if (++p_.nest_ > p_.budgets_.max_nesting) p_.too_deep(p_.cur().line);
    }
    ~Nest() { --p_.nest_; }
    Parser& p_;
  };

  // Records the height of a finished node (1 + its tallest child).
  ExprPtr grown(ExprPtr n) {
    int h = 0;
    for (const auto& a : n->args) h = a ? std::max(h, a->depth) : h;
    for (const auto& kv : n->kwargs) h = kv.second ? std::max(h, kv.second->depth) : h;
    n->depth = h + 1;
    if (n->depth > budgets_.max_nesting) too_deep(n->line);
    return n;
  }
  const Token& cur() const { return t_[i_]; }
  const Token& next() { return t_[i_++]; }
  bool is_op(const std::string& op) const { return cur().kind == TK::kOp && cur().text == op; }
  bool is_name(const std::string& n) const { return cur().kind == TK::kName && cur().text == n; }
  bool accept_op(const std::string& op) {
    if (!is_op(op)) return false;
    ++i_;
    return true;
  }
  bool accept_name(const std::string& n) {
    if (!is_name(n)) return false;
    ++i_;
    return true;
  }
  std::string describe(const Token& t) const {
    switch (t.kind) {
      case TK::kBlockEnd:
        return "end of statement block";
      case TK::kVarEnd:
        return "end of print statement";
      case TK::kEnd:
        return "end of template";
      case TK::kString:
        return "string";
      default:
        return "'" + t.text + "'";
    }
  }
  void expect_op(const std::string& op) {
    if (!accept_op(op)) fail(cur().line, "expected '" + op + "', got " + describe(cur()));
  }
  std::string expect_name() {
    if (cur().kind != TK::kName) fail(cur().line, "expected a name, got " + describe(cur()));
    return next().text;
  }
  void expect_block_end(const std::string& stmt) {
    if (cur().kind != TK::kBlockEnd) {
      fail(cur().line,
           "'" + stmt + "' statement: expected end of statement block, got " + describe(cur()));
    }
    ++i_;
  }

  // Parses statements until a block whose keyword is in `stops`; leaves that
  // keyword in `stop` and the parser just after it (before its arguments).
  Body parse_body(const std::vector<std::string>& stops, std::string& stop) {
    Body body;
    while (true) {
      const Token& tok = cur();
      if (tok.kind == TK::kEnd) {
        if (!stops.empty())
          fail(tok.line, "unexpected end of template, expected '" + stops[0] + "'");
        return body;
      }
      if (tok.kind == TK::kText) {
        auto s = std::make_unique<Stmt>(Stmt{Stmt::Kind::kText, tok.line});
        s->text = tok.text;
        body.push_back(std::move(s));
        ++i_;
      } else if (tok.kind == TK::kVarBegin) {
        ++i_;
        auto s = std::make_unique<Stmt>(Stmt{Stmt::Kind::kOutput, tok.line});
        s->expr = parse_tuple();
        if (cur().kind != TK::kVarEnd)
          fail(cur().line, "expected end of print statement, got " + describe(cur()));
        ++i_;
        body.push_back(std::move(s));
      } else if (tok.kind == TK::kBlockBegin) {
        ++i_;
        if (cur().kind != TK::kName)
          fail(cur().line, "expected a statement keyword, got " + describe(cur()));
        std::string kw = cur().text;
        if (std::find(stops.begin(), stops.end(), kw) != stops.end()) {
          ++i_;
          stop = kw;
          return body;
        }
        body.push_back(parse_statement());
      } else {
        fail(tok.line, "unexpected " + describe(tok));
      }
    }
  }

  StmtPtr parse_statement() {
    Nest nest(*this);
    const Token& kw = next();
    int line = kw.line;
    auto s = std::make_unique<Stmt>(Stmt{Stmt::Kind::kText, line});
    std::string stop;
    if (kw.text == "if") {
      s->kind = Stmt::Kind::kIf;
      ExprPtr cond = parse_tuple();
      while (true) {
        expect_block_end("if");
        Body b = parse_body({"elif", "else", "endif"}, stop);
        s->branches.emplace_back(std::move(cond), std::move(b));
        if (stop == "endif") break;
        if (stop == "else") {
          expect_block_end("else");
          s->branches.emplace_back(nullptr, parse_body({"endif"}, stop));
          break;
        }
        cond = parse_tuple();
      }
      expect_block_end("endif");
    } else if (kw.text == "for") {
      s->kind = Stmt::Kind::kFor;
      do {
        s->targets.push_back(expect_name());
      } while (accept_op(","));
      if (!accept_name("in"))
        fail(cur().line, "'for' statement: expected 'in', got " + describe(cur()));
      s->expr = parse_tuple(/*allow_cond=*/false);
      if (accept_name("if")) s->filter = parse_expression();
      if (is_name("recursive"))
        fail(cur().line, "'for ... recursive' loops are not supported", ErrorKind::kUnsupported);
      expect_block_end("for");
      s->body = parse_body({"else", "endfor"}, stop);
      if (stop == "else") {
        expect_block_end("else");
        s->else_body = parse_body({"endfor"}, stop);
      }
      expect_block_end("endfor");
    } else if (kw.text == "set") {
      std::string first = expect_name();
      if (accept_op(".")) {
        s->kind = Stmt::Kind::kSet;
        auto obj = std::make_unique<Expr>(Expr{Expr::Kind::kName, line});
        obj->name = first;
        s->attr_object = std::move(obj);
        s->attr = expect_name();
        expect_op("=");
        s->expr = parse_tuple();
        expect_block_end("set");
      } else {
        s->targets.push_back(first);
        while (accept_op(",")) s->targets.push_back(expect_name());
        if (accept_op("=")) {
          s->kind = Stmt::Kind::kSet;
          s->expr = parse_tuple();
          expect_block_end("set");
        } else {
          if (s->targets.size() != 1) fail(line, "'set' block statement takes one name");
          s->kind = Stmt::Kind::kSetBlock;
          if (accept_op("|")) s->expr = parse_filter_chain(nullptr);
          expect_block_end("set");
          s->body = parse_body({"endset"}, stop);
          expect_block_end("endset");
        }
      }
    } else if (kw.text == "macro") {
      s->kind = Stmt::Kind::kMacro;
      s->name = expect_name();
      expect_op("(");
      while (!accept_op(")")) {
        std::string p = expect_name();
        ExprPtr def;
        if (accept_op("=")) def = parse_expression();
        s->params.emplace_back(p, std::move(def));
        if (!is_op(")")) expect_op(",");
      }
      expect_block_end("macro");
      s->body = parse_body({"endmacro"}, stop);
      expect_block_end("endmacro");
    } else if (kw.text == "break" || kw.text == "continue") {
      s->kind = kw.text == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      expect_block_end(kw.text);
    } else if (kw.text == "generation") {
      s->kind = Stmt::Kind::kGeneration;
      expect_block_end("generation");
      s->body = parse_body({"endgeneration"}, stop);
      expect_block_end("endgeneration");
    } else if (kw.text == "filter") {
      s->kind = Stmt::Kind::kFilterBlock;
      s->expr = parse_filter_chain(nullptr);
      expect_block_end("filter");
      s->body = parse_body({"endfilter"}, stop);
      expect_block_end("endfilter");
    } else {
      fail(line, "unsupported statement '" + kw.text + "'", ErrorKind::kUnsupported);
    }
    return s;
  }

  ExprPtr node(Expr::Kind k, int line) { return std::make_unique<Expr>(Expr{k, line}); }

  // An expression, or an unparenthesised tuple "a, b".
  ExprPtr parse_tuple(bool allow_cond = true) {
    int line = cur().line;
    ExprPtr first = allow_cond ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    auto t = node(Expr::Kind::kList, line);
    t->name = "tuple";
    t->args.push_back(std::move(first));
    while (accept_op(",")) {
      if (cur().kind == TK::kBlockEnd || cur().kind == TK::kVarEnd || is_op(")")) break;
      t->args.push_back(allow_cond ? parse_expression() : parse_or());
    }
    return grown(std::move(t));
  }

  ExprPtr parse_expression() {
    Nest nest(*this);
    ExprPtr e = parse_or();
    while (is_name("if")) {
      int line = next().line;
      auto c = node(Expr::Kind::kCond, line);
      c->args.push_back(std::move(e));
      c->args.push_back(parse_or());
      c->args.push_back(accept_name("else") ? parse_expression() : nullptr);
      e = grown(std::move(c));
    }
    return e;
  }

  ExprPtr binary(const std::string& op, ExprPtr a, ExprPtr b, int line) {
    auto n = node(Expr::Kind::kBinary, line);
    n->name = op;
    n->args.push_back(std::move(a));
    n->args.push_back(std::move(b));
    return grown(std::move(n));
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      int line = next().line;
      e = binary("or", std::move(e), parse_and(), line);
    }
    return e;
  }
  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      int line = next().line;
      e = binary("and", std::move(e), parse_not(), line);
    }
    return e;
  }
  ExprPtr parse_not() {
    if (is_name("not")) {
      Nest nest(*this);
      auto n = node(Expr::Kind::kUnary, next().line);
      n->name = "not";
      n->args.push_back(parse_not());
      return grown(std::move(n));
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    int line = cur().line;
    ExprPtr e = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().kind == TK::kOp &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == ">" ||
           cur().text == "<=" || cur().text == ">=")) {
        op = next().text;
      } else if (accept_name("in")) {
        op = "in";
      } else if (is_name("not") && t_[i_ + 1].kind == TK::kName && t_[i_ + 1].text == "in") {
        i_ += 2;
        op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(Expr::Kind::kCompare, line);
        cmp->args.push_back(std::move(e));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? grown(std::move(cmp)) : std::move(e);
  }
  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& op = next();
      e = binary(op.text, std::move(e), parse_concat(), op.line);
    }
    return e;
  }
  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token& op = next();
      e = binary("~", std::move(e), parse_math2(), op.line);
    }
    return e;
  }
  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& op = next();
      e = binary(op.text, std::move(e), parse_pow(), op.line);
    }
    return e;
  }
  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const Token& op = next();
      e = binary("**", std::move(e), parse_unary(true), op.line);
    }
    return e;
  }
  ExprPtr parse_unary(bool with_filter) {
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      Nest nest(*this);
      const Token& op = next();
      e = node(Expr::Kind::kUnary, op.line);
      e->name = op.text;
      e->args.push_back(parse_unary(false));
      e = grown(std::move(e));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& tok = next();
    switch (tok.kind) {
      case TK::kName: {
        const std::string& n = tok.text;
        auto lit = node(Expr::Kind::kLiteral, tok.line);
        if (n == "true" || n == "True")
          lit->value = Value(true);
        else if (n == "false" || n == "False")
          lit->value = Value(false);
        else if (n == "none" || n == "None")
          lit->value = Value::none();
        else {
          lit->kind = Expr::Kind::kName;
          lit->name = n;
        }
        return lit;
      }
      case TK::kString: {
        std::string s = tok.text;
        while (cur().kind == TK::kString) s += next().text;  // adjacent literals concatenate
        auto lit = node(Expr::Kind::kLiteral, tok.line);
        lit->value = Value(s);
        return lit;
      }
      case TK::kInt:
      case TK::kFloat: {
        auto lit = node(Expr::Kind::kLiteral, tok.line);
        try {
          if (tok.kind == TK::kInt)
            lit->value = Value(static_cast<int64_t>(std::stoll(tok.text)));
          else
            lit->value = Value(std::stod(tok.text));
        } catch (const std::exception&) {
          fail(tok.line, "number literal '" + tok.text + "' is out of range",
               ErrorKind::kUnsupported);
        }
        return lit;
      }
      case TK::kOp:
        if (tok.text == "(") {
          if (accept_op(")")) {
            auto empty = node(Expr::Kind::kList, tok.line);
            empty->name = "tuple";
            return empty;
          }
          ExprPtr e = parse_tuple();
          expect_op(")");
          return e;
        }
        if (tok.text == "[") {
          auto l = node(Expr::Kind::kList, tok.line);
          while (!accept_op("]")) {
            l->args.push_back(parse_expression());
            if (!is_op("]")) expect_op(",");
          }
          return grown(std::move(l));
        }
        if (tok.text == "{") {
          auto d = node(Expr::Kind::kDict, tok.line);
          while (!accept_op("}")) {
            d->args.push_back(parse_expression());
            expect_op(":");
            d->args.push_back(parse_expression());
            if (!is_op("}")) expect_op(",");
          }
          return grown(std::move(d));
        }
        break;
      default:
        break;
    }
    fail(tok.line, "unexpected " + describe(tok) + " in expression");
  }

  void parse_call_args(Expr& call) {
    // '(' already consumed
    while (!accept_op(")")) {
      if (cur().kind == TK::kName && t_[i_ + 1].kind == TK::kOp && t_[i_ + 1].text == "=") {
        std::string k = next().text;
        ++i_;
        call.kwargs.emplace_back(k, parse_expression());
      } else {
        if (!call.kwargs.empty()) fail(cur().line, "positional argument after keyword argument");
        call.args.push_back(parse_expression());
      }
      if (!is_op(")")) expect_op(",");
    }
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      int line = cur().line;
      if (accept_op(".")) {
        auto a = node(Expr::Kind::kGetAttr, line);
        if (cur().kind == TK::kInt) {
          a->kind = Expr::Kind::kGetItem;
          a->args.push_back(std::move(e));
          auto idx = node(Expr::Kind::kLiteral, line);
          idx->value = Value(static_cast<int64_t>(std::strtoll(next().text.c_str(), nullptr, 10)));
          a->args.push_back(std::move(idx));
        } else {
          a->name = expect_name();
          a->args.push_back(std::move(e));
        }
        e = grown(std::move(a));
      } else if (accept_op("[")) {
        e = parse_subscript(std::move(e), line);
      } else if (accept_op("(")) {
        auto c = node(Expr::Kind::kCall, line);
        c->args.push_back(std::move(e));
        parse_call_args(*c);
        e = grown(std::move(c));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, int line) {
    ExprPtr parts[3];
    int n = 0;
    bool slice = false;
    while (true) {
      if (is_op(":")) {
        ++i_;
        slice = true;
        if (++n > 2) fail(line, "slice takes at most three parts");
        continue;
      }
      if (is_op("]")) break;
      if (parts[n]) fail(line, "expected ':' or ']' in subscript");
      parts[n] = parse_expression();
    }
    expect_op("]");
    if (!slice) {
      if (!parts[0]) fail(line, "empty subscript");
      auto g = node(Expr::Kind::kGetItem, line);
      g->args.push_back(std::move(obj));
      g->args.push_back(std::move(parts[0]));
      return grown(std::move(g));
    }
    auto s = node(Expr::Kind::kSlice, line);
    s->args.push_back(std::move(obj));
    for (auto& p : parts) s->args.push_back(std::move(p));
    return grown(std::move(s));
  }

  // "| name(args)" chain; `input` null for {% filter %} blocks.
  ExprPtr parse_filter_chain(ExprPtr input) {
    do {
      int line = cur().line;
      auto f = node(Expr::Kind::kFilter, line);
      f->name = expect_name();
      while (accept_op(".")) f->name += "." + expect_name();
      if (!is_known_filter(f->name))
        fail(line, "unknown filter '" + f->name + "'", ErrorKind::kUnsupported);
      f->args.push_back(std::move(input));
      if (accept_op("(")) parse_call_args(*f);
      input = grown(std::move(f));
    } while (accept_op("|"));
    return input;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (accept_op("|")) {
        e = parse_filter_chain(std::move(e));
      } else if (is_name("is")) {
        int line = next().line;
        auto t = node(Expr::Kind::kTest, line);
        t->negated = accept_name("not");
        t->name = expect_name();
        if (!is_known_test(t->name))
          fail(line, "unknown test '" + t->name + "'", ErrorKind::kUnsupported);
        t->args.push_back(std::move(e));
        if (accept_op("(")) {
          parse_call_args(*t);
        } else if ((cur().kind == TK::kName && cur().text != "else" && cur().text != "or" &&
                    cur().text != "and" && cur().text != "if") ||
                   cur().kind == TK::kString || cur().kind == TK::kInt ||
                   cur().kind == TK::kFloat || is_op("[") || is_op("{")) {
          t->args.push_back(parse_postfix(parse_primary()));
        }
        e = grown(std::move(t));
      } else if (accept_op("(")) {
        auto c = node(Expr::Kind::kCall, t_[i_ - 1].line);
        c->args.push_back(std::move(e));
        parse_call_args(*c);
        e = grown(std::move(c));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  const std::string& name_;
  const Budgets& budgets_;
  size_t i_ = 0;
  int nest_ = 0;  // parser recursion levels active (Nest)
};

}  // namespace

Body parse(const std::string& source, const std::string& name, const Budgets& budgets) {
  return Parser(lex(source, name, budgets), name, budgets).parse_template();
}

}  // namespace loratune::jinja
