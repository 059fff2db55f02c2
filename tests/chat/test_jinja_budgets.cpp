// Chat templates are untrusted code: every hostile template below must be
// refused quickly (< 1 s) with one kResource error that names the template
// and the limit, never crash (stack overflow), allocate gigabytes or hang
// (trainer/chat/jinja_budgets.h). Plus the error kinds of ordinary
// template errors, and the same refusal through `loratune tokenize --chat`.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "common/test_env.h"
#include "trainer/chat/chat_template.h"
#include "trainer/chat/jinja.h"
#include "trainer/io/error.h"

namespace {

using loratune::Error;
using loratune::ErrorKind;
using loratune::jinja::Budgets;
using loratune::jinja::Template;
using loratune::jinja::Value;
using Json = nlohmann::ordered_json;

struct Outcome {
  bool threw = false;
  std::string message;
  ErrorKind kind = ErrorKind::kInternal;
  double seconds = 0;
};

// Compiles and renders `source`; the error it raised, if any, and the time.
Outcome run_template(const std::string& source, const Budgets& budgets = {},
                     const std::string& context = "{}") {
  Outcome o;
  auto t0 = std::chrono::steady_clock::now();
  try {
    Template t(source, "chat template", budgets);
    Value ctx = Value::from_json(Json::parse(context));
    t.render(ctx.dict_data());
  } catch (const Error& e) {
    o.threw = true;
    o.message = e.what();
    o.kind = e.kind();
  }
  o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return o;
}

std::string repeat(const std::string& s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

constexpr double kQuick = 1.0;  // seconds
const std::string kValueLimit = std::to_string(Budgets{}.max_value_bytes);

#define EXPECT_RESOURCE(outcome, expected)                  \
  do {                                                      \
    const Outcome& o_ = (outcome);                          \
    EXPECT_TRUE(o_.threw);                                  \
    EXPECT_EQ(o_.message, (expected));                      \
    EXPECT_EQ(o_.kind, ErrorKind::kResource) << o_.message; \
    EXPECT_LT(o_.seconds, kQuick) << o_.message;            \
  } while (0)

TEST(JinjaBudgets, DefaultsAreDocumentedValues) {
  Budgets b;
  EXPECT_EQ(b.max_nesting, 256);
  EXPECT_EQ(b.max_call_depth, 100);
  EXPECT_EQ(b.max_loop_iterations, 1000000);
  EXPECT_EQ(b.max_output_bytes, size_t{16} << 20);
  EXPECT_EQ(b.max_value_bytes, size_t{16} << 20);
  EXPECT_EQ(b.max_source_bytes, size_t{1} << 20);
}

TEST(JinjaBudgets, RecursiveMacroIsRefused) {
  EXPECT_RESOURCE(run_template("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
                  "chat template line 1: macro calls nested deeper than the limit of 100");
  // Mutual recursion, and recursion through a filter argument.
  EXPECT_RESOURCE(run_template("{% macro a() %}{{ b() }}{% endmacro %}\n"
                               "{% macro b() %}{{ a() }}{% endmacro %}\n{{ a() }}"),
                  "chat template line 2: macro calls nested deeper than the limit of 100");
  EXPECT_RESOURCE(run_template("{% macro f(x) %}{{ f(x)|upper }}{% endmacro %}{{ f(1) }}"),
                  "chat template line 1: macro calls nested deeper than the limit of 100");
  // A caller's tighter budget is the one applied.
  Budgets b;
  b.max_call_depth = 5;
  EXPECT_RESOURCE(run_template("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", b),
                  "chat template line 1: macro calls nested deeper than the limit of 5");
}

TEST(JinjaBudgets, LegitimateRecursionStillRenders) {
  // Recursion 50 deep (like a JSON-schema renderer) is fine.
  Outcome o = run_template(
      "{% macro f(n) %}{% if n > 0 %}({{ f(n - 1) }}){% endif %}{% endmacro %}{{ f(50) }}");
  EXPECT_FALSE(o.threw) << o.message;
}

// Each construct nested `n` deep, as a template.
std::string nested(const std::string& construct, size_t n) {
  if (construct == "if") return repeat("{% if true %}", n) + "x" + repeat("{% endif %}", n);
  if (construct == "for") return repeat("{% for i in [1] %}", n) + "x" + repeat("{% endfor %}", n);
  if (construct == "paren") return "{{ " + repeat("(", n) + "1" + repeat(")", n) + " }}";
  if (construct == "list") return "{{ " + repeat("[", n) + repeat("]", n) + " }}";
  if (construct == "dict") return "{{ " + repeat("{'a': ", n) + "1" + repeat("}", n) + " }}";
  if (construct == "call") return "{{ " + repeat("dict(a=", n) + "1" + repeat(")", n) + " }}";
  if (construct == "not") return "{{ " + repeat("not ", n) + "x }}";
  if (construct == "minus") return "{{ " + repeat("- ", n) + "1 }}";
  if (construct == "plus_chain") return "{{ 1" + repeat(" + 1", n) + " }}";
  if (construct == "concat_chain") return "{{ 'a'" + repeat(" ~ 'a'", n) + " }}";
  if (construct == "filter_chain") return "{{ 'a'" + repeat("|upper", n) + " }}";
  if (construct == "attr_chain") return "{{ x" + repeat(".a", n) + " }}";
  if (construct == "cond_chain") return "{{ 1" + repeat(" if true else 2", n) + " }}";
  ADD_FAILURE() << construct;
  return "";
}

TEST(JinjaBudgets, DeepNestingIsRefusedByTheParser) {
  const std::string msg =
      "chat template line 1: template nested deeper than the limit of 256 levels";
  for (const char* c : {"if", "for", "paren", "list", "dict", "call", "not", "minus", "plus_chain",
                        "concat_chain", "filter_chain", "attr_chain", "cond_chain"}) {
    // A source limit large enough that the parser, not the size check, refuses.
    Budgets big_source;
    big_source.max_source_bytes = size_t{64} << 20;
    for (size_t n : {size_t{5000}, size_t{100000}}) {
      SCOPED_TRACE(std::string(c) + " x" + std::to_string(n));
      EXPECT_RESOURCE(run_template(nested(c, n), big_source), msg);
    }
    // Nesting real templates use is fine.
    SCOPED_TRACE(std::string(c) + " x20");
    Outcome ok = run_template(nested(c, 20), {}, "{\"x\": {}}");
    EXPECT_TRUE(!ok.threw || ok.kind != ErrorKind::kResource) << ok.message;
  }
}

TEST(JinjaBudgets, DeepTemplatesAreRefusedBeforeEvaluation) {
  // The body would raise if it ran: the parser refuses it first.
  EXPECT_RESOURCE(run_template("{{ raise_exception('ran') }}" + nested("if", 300)),
                  "chat template line 1: template nested deeper than the limit of 256 levels");
}

TEST(JinjaBudgets, HugeRangeIsRefusedBeforeBuilding) {
  const std::string items = std::to_string(Budgets{}.max_value_bytes / sizeof(Value));
  EXPECT_RESOURCE(run_template("{% for i in range(100000000) %}{% endfor %}"),
                  "chat template line 1: range() of 100000000 items exceeds the limit of " + items +
                      " items (" + kValueLimit + " bytes per value)");
  EXPECT_RESOURCE(run_template("{{ range(-9223372036854775807, 9223372036854775807, 3)|length }}"),
                  "chat template line 1: range() of 6148914691236517205 items exceeds the limit "
                  "of " +
                      items + " items (" + kValueLimit + " bytes per value)");
}

TEST(JinjaBudgets, LoopIterationsAreBounded) {
  EXPECT_RESOURCE(run_template("{% for i in range(100000) %}{% for j in range(100000) %}"
                               "{% endfor %}{% endfor %}"),
                  "chat template line 1: loop iterations exceed the limit of 1000000");
  Budgets b;
  b.max_loop_iterations = 10;
  EXPECT_RESOURCE(run_template("{% for i in range(11) %}{% endfor %}", b),
                  "chat template line 1: loop iterations exceed the limit of 10");
  EXPECT_FALSE(run_template("{% for i in range(10) %}{% endfor %}", b).threw);
}

TEST(JinjaBudgets, StringRepetitionIsCheckedBeforeAllocating) {
  EXPECT_RESOURCE(run_template("{{ 'x' * 1000000000 }}"),
                  "chat template line 1: string repetition of 1000000000 bytes exceeds the limit "
                  "of " +
                      kValueLimit + " bytes per value");
  EXPECT_RESOURCE(run_template("{{ 'xy' * 9223372036854775807 }}"),
                  "chat template line 1: string repetition of 18446744073709551614 bytes exceeds "
                  "the limit of " +
                      kValueLimit + " bytes per value");
  EXPECT_RESOURCE(run_template("{{ 'xyz' * 9223372036854775807 }}"),
                  "chat template line 1: string repetition of more than 2^64 bytes exceeds the "
                  "limit of " +
                      kValueLimit + " bytes per value");
}

TEST(JinjaBudgets, StringDoublingIsBounded) {
  EXPECT_RESOURCE(run_template("{% set ns = namespace(s='x') %}{% for i in range(64) %}"
                               "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"),
                  "chat template line 1: string concatenation of 33554432 bytes exceeds the limit "
                  "of " +
                      kValueLimit + " bytes per value");
  EXPECT_RESOURCE(run_template("{% set ns = namespace(s='x') %}{% for i in range(64) %}"
                               "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}"),
                  "chat template line 1: string concatenation of 33554432 bytes exceeds the limit "
                  "of " +
                      kValueLimit + " bytes per value");
}

TEST(JinjaBudgets, HugeJoinIsBounded) {
  EXPECT_RESOURCE(run_template("{{ (['x' * 1000000] * 16)|join('y' * 100000) }}"),
                  "chat template line 1: join result of 17500000 bytes exceeds the limit of " +
                      kValueLimit + " bytes per value");
  EXPECT_RESOURCE(run_template("{{ ('y' * 100000).join(['x' * 1000000] * 16) }}"),
                  "chat template line 1: join result of 17500000 bytes exceeds the limit of " +
                      kValueLimit + " bytes per value");
}

TEST(JinjaBudgets, ListRepetitionIsCheckedBeforeAllocating) {
  EXPECT_RESOURCE(run_template("{{ [1] * 100000000 }}"),
                  "chat template line 1: list repetition of " +
                      std::to_string(sizeof(Value) * 100000000) + " bytes exceeds the limit of " +
                      kValueLimit + " bytes per value");
  // A list of one big string repeated: its elements count, not just the slots.
  EXPECT_RESOURCE(run_template("{{ ['x' * 10000000] * 2 }}"),
                  "chat template line 1: list repetition of " +
                      std::to_string(2 * (sizeof(Value) + 10000000)) +
                      " bytes exceeds the limit of " + kValueLimit + " bytes per value");
}

TEST(JinjaBudgets, BigOutputIsBounded) {
  EXPECT_RESOURCE(run_template("{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}"),
                  "chat template line 1: rendered output exceeds the limit of 16777216 bytes");
  Budgets b;
  b.max_output_bytes = 100;
  EXPECT_RESOURCE(run_template("{% for i in range(11) %}0123456789{% endfor %}", b),
                  "chat template line 1: rendered output exceeds the limit of 100 bytes");
  // Captured output ({% set %} blocks, macros) is a value.
  EXPECT_RESOURCE(
      run_template("{% set x %}{% for i in range(1000) %}{{ 'x' * 100000 }}"
                   "{% endfor %}{% endset %}"),
      "chat template line 1: captured block output exceeds the limit of " + kValueLimit + " bytes");
}

TEST(JinjaBudgets, GrowingFiltersAndMethodsAreBounded) {
  const std::string limit = " exceeds the limit of " + kValueLimit + " bytes per value";
  EXPECT_RESOURCE(run_template("{{ 'a'|indent(1000000000000) }}"),
                  "chat template line 1: indent width of 1000000000000 bytes" + limit);
  EXPECT_RESOURCE(run_template("{{ [[[[1]]]]|tojson(indent=10000000) }}"),
                  "chat template line 1: tojson output exceeds the limit of " + kValueLimit +
                      " bytes per value");
  EXPECT_RESOURCE(run_template("{{ [[1]]|tojson(indent=100000000) }}"),
                  "chat template line 1: tojson indent of 100000000 bytes" + limit);
  Outcome o = run_template("{{ ('x' * 1000000)|replace('x', 'y' * 20) }}");
  EXPECT_EQ(o.kind, ErrorKind::kResource) << o.message;
  EXPECT_EQ(o.message.rfind("chat template line 1: replace result of ", 0), 0u) << o.message;
  EXPECT_LT(o.seconds, kQuick);
  o = run_template("{{ ('x' * 1000000).replace('x', 'y' * 20) }}");
  EXPECT_EQ(o.kind, ErrorKind::kResource) << o.message;
  EXPECT_LT(o.seconds, kQuick);
  o = run_template("{{ ('a,' * 8000000).split(',')|length }}");
  EXPECT_EQ(o.kind, ErrorKind::kResource) << o.message;
  EXPECT_EQ(o.message.rfind("chat template line 1: split result of ", 0), 0u) << o.message;
  EXPECT_LT(o.seconds, kQuick);
  EXPECT_RESOURCE(run_template("{% for c in 'x' * 10000000 %}{% endfor %}"),
                  "chat template line 1: the characters of a string of " +
                      std::to_string(sizeof(Value) * 10000000) + " bytes" + limit);
  // Exponentiation by squaring: a huge exponent returns (or overflows 64
  // bits, an unsupported-feature error) at once.
  o = run_template("{{ 3 ** 1000000000000000 }}");
  EXPECT_EQ(o.kind, ErrorKind::kUnsupported) << o.message;
  EXPECT_LT(o.seconds, kQuick);
  o = run_template("{{ (-1) ** 1000000000000001 }}");
  EXPECT_FALSE(o.threw) << o.message;
  EXPECT_LT(o.seconds, kQuick);
}

TEST(JinjaBudgets, DeeplyNestedValuesAreBounded) {
  EXPECT_RESOURCE(run_template("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}"
                               "{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}"),
                  "chat template line 1: a value nested deeper than the limit of 256 levels");
  // Namespaces cannot be chained (that is how an unbounded chain would be built).
  Outcome o = run_template(
      "{% set ns = namespace(cur=none) %}{% for i in range(100000) %}"
      "{% set ns.cur = namespace(next=ns.cur) %}{% endfor %}");
  EXPECT_EQ(o.message, "chat template line 1: a namespace inside a namespace is not supported");
  EXPECT_EQ(o.kind, ErrorKind::kUnsupported);
  // Deeply nested JSON input is refused before it is converted.
  loratune::chat::ChatTemplate tpl("{{ messages }}");
  Json msgs = Json::parse(repeat("[", 5000) + repeat("]", 5000));
  try {
    tpl.render_text(Json::array({Json{{"role", "user"}, {"content", msgs}}}), {});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "chat: JSON input nested deeper than the limit of 256 levels");
    EXPECT_EQ(e.kind(), ErrorKind::kData);
  }
}

TEST(JinjaBudgets, RenderTimeIsBounded) {
  Budgets b;
  b.max_seconds = 0.05;
  // Each iteration scans a 10 MB string: minutes without the time budget.
  EXPECT_RESOURCE(run_template("{% set s = 'x' * 10000000 %}{% for i in range(100000) %}"
                               "{{ s|length }}{% endfor %}",
                               b),
                  "chat template line 1: rendering took longer than the limit of 50 ms");
  // A quadratic builtin inside one expression (no loop iteration to count).
  EXPECT_RESOURCE(run_template("{{ range(100000)|unique|length }}", b),
                  "chat template line 1: rendering took longer than the limit of 50 ms");
}

TEST(JinjaBudgets, HugeSourcesAreRefusedOrLexedQuickly) {
  Outcome o = run_template(std::string(size_t{100} << 20, 'x'));
  EXPECT_RESOURCE(o,
                  "chat template: template source of 104857600 bytes exceeds the limit of "
                  "1048576 bytes");
  // Just under the limit: a 1 MB template of tags lexes, parses and renders in time.
  o = run_template(repeat("{{ x }}{% if x %}y{% endif %}", 30000), {}, "{\"x\": 1}");
  EXPECT_FALSE(o.threw) << o.message;
  EXPECT_LT(o.seconds, kQuick);
}

TEST(JinjaBudgets, TemplateNameStartsTheMessage) {
  try {
    Template t("{% macro f() %}{{ f() }}{% endmacro %}\n{{ f() }}",
               "/m/tokenizer_config.json: chat template");
    t.render({});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "/m/tokenizer_config.json: chat template line 1: macro calls nested deeper than "
              "the limit of 100");
    EXPECT_EQ(e.kind(), ErrorKind::kResource);
  }
}

TEST(JinjaErrorKinds, SyntaxDataAndUnsupportedAreTold) {
  Outcome o = run_template("{{ x ");
  EXPECT_EQ(o.message, "chat template line 1: unclosed '{{'");
  EXPECT_EQ(o.kind, ErrorKind::kCorrupt);
  o = run_template("{% if %}{% endif %}");
  EXPECT_EQ(o.kind, ErrorKind::kCorrupt) << o.message;
  o = run_template("{{ raise_exception('Conversation roles must alternate') }}");
  EXPECT_EQ(o.message, "chat template line 1: raise_exception: Conversation roles must alternate");
  EXPECT_EQ(o.kind, ErrorKind::kData);
  o = run_template("{% include 'x' %}");
  EXPECT_EQ(o.kind, ErrorKind::kUnsupported) << o.message;
  o = run_template("{{ x|frobnicate }}");
  EXPECT_EQ(o.kind, ErrorKind::kUnsupported) << o.message;
  o = run_template("{{ 99999999999999999999999 }}");
  EXPECT_EQ(o.message,
            "chat template line 1: number literal '99999999999999999999999' is out of "
            "range");
  EXPECT_EQ(o.kind, ErrorKind::kUnsupported);
  o = run_template("{{ '\\xZZ' }}");
  EXPECT_EQ(o.message, "chat template line 1: truncated \\x escape");
  EXPECT_EQ(o.kind, ErrorKind::kCorrupt);
}

TEST(JinjaErrorKinds, ConversationProblemsAreData) {
  loratune::chat::ChatTemplate tpl("{{ messages }}");
  try {
    tpl.render_text(Json::array({1}), {});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "chat: message 0 is not a JSON object");
    EXPECT_EQ(e.kind(), ErrorKind::kData);
  }
}

// A model directory with a word-level BPE tokenizer and `chat_template`.
std::string tiny_model(const std::string& chat_template) {
  const std::string dir = loratune::test::make_temp_dir("jinja_budget_model");
  Json vocab = Json::object();
  const char* words[] = {"<s>", "</s>", "a", "b", "c", "x", "y", "z", " "};
  for (int i = 0; i < 9; ++i) vocab[words[i]] = i;
  Json tok = {{"version", "1.0"},
              {"added_tokens", Json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", Json::array()}}}};
  loratune::test::write_file(dir + "/tokenizer.json", tok.dump());
  Json cfg = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"chat_template", chat_template}};
  loratune::test::write_file(dir + "/tokenizer_config.json", cfg.dump());
  return dir;
}

TEST(JinjaBudgetsCli, RecursiveMacroTemplateExitsWithResourceError) {
  const std::string model = tiny_model("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  const std::string chat = model + "/chat.jsonl";
  loratune::test::write_file(chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n");
  // stdout is dropped: the error line is what stderr says.
  auto r = loratune::test::run("{ " + loratune::test::quote(loratune::test::loratune_bin()) +
                               " tokenize --model " + loratune::test::quote(model) + " --chat " +
                               loratune::test::quote(chat) + " 2>&1 >/dev/null; }");
  EXPECT_EQ(r.status, 7) << r.out;
  // One line; it may name the record before the template ("F.jsonl:1: ").
  const std::string tail =
      "chat template line 1: macro calls nested deeper than the limit of 100\n";
  EXPECT_EQ(r.out.rfind("loratune: error: ", 0), 0u) << r.out;
  ASSERT_GE(r.out.size(), tail.size()) << r.out;
  EXPECT_EQ(r.out.substr(r.out.size() - tail.size()), tail) << r.out;
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << r.out;
}

}  // namespace
