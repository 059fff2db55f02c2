// trainer/chat/jinja_budgets.h — the work and memory a chat template may
// use.
//
// Chat templates come from downloaded tokenizer_config.json files: they are
// untrusted code. Every template is compiled and rendered under a Budgets;
// exceeding one is a loratune::Error of kind kResource that names the template
// and the limit ("chat template line 3: loop iterations exceed the limit of
// 1000000"), raised before the memory or time is spent (sizes are checked
// before a value is built). The defaults are far above what real templates
// need (Llama 2/3, Qwen2.5/3, Gemma 2/3, Mistral, Phi-3, DeepSeek and the
// tool-calling templates: < 40 KB of source, nesting < 15, a handful of
// macro levels, one loop pass over the messages) and far below what would hurt
// the process (stack, RAM, minutes of CPU).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace loratune::jinja {

struct Budgets {
  // Bytes of template source. Real templates are 0.5-40 KB; 1 MiB keeps
  // lexing and parsing well under a second and the token list small.
  size_t max_source_bytes = size_t{1} << 20;
  // How deeply statements ({% if %} in {% for %} ...) and expressions
  // (parentheses, brackets, call arguments, operator and filter chains) nest,
  // checked while parsing, so that neither the parser nor the evaluator can
  // run out of stack. Real templates nest < 15 deep.
  int max_nesting = 256;
  // Macro calls active at once (recursion). Templates that render JSON
  // schemas recurse once per schema level (< 20); transformers' own renderer
  // stops near 100-200 levels (Python's recursion limit).
  int max_call_depth = 100;
  // Statements and expressions being evaluated at once, across macro calls:
  // the evaluator's stack guard (each level is one or two C++ frames). Real
  // templates stay below ~200 even when they recurse.
  int max_eval_depth = 1024;
  // Loop iterations per render, all {% for %} loops together (including items
  // tested by a loop's `if`). A 10,000-message conversation with a few tool
  // calls per message needs < 100,000.
  int64_t max_loop_iterations = 1000000;
  // Bytes of rendered text per render: 16 MiB is ~4M tokens, 30x the longest
  // context windows.
  size_t max_output_bytes = size_t{16} << 20;
  // Bytes of any one value the template builds: a string, or a list/dict
  // counted as its elements' sizes plus the memory of each element slot
  // (range(100000) is ~11 MiB). Same rationale as the output limit.
  size_t max_value_bytes = size_t{16} << 20;
  // Wall-clock seconds per render: the backstop for work no count above
  // bounds (e.g. a linear string method called in a long loop on a large
  // value). Real templates render in milliseconds.
  double max_seconds = 30.0;
};

// The budgets of the render running on this thread (the defaults when none
// is): the value helpers (filters, methods, operators) check sizes against
// it. Set by BudgetScope for the duration of a render.
const Budgets& active_budgets();

// Makes `b` the active budgets of this thread and starts the render's clock.
class BudgetScope {
 public:
  explicit BudgetScope(const Budgets& b);
  ~BudgetScope();
  BudgetScope(const BudgetScope&) = delete;
  BudgetScope& operator=(const BudgetScope&) = delete;

 private:
  const Budgets* saved_budgets_;
  double saved_start_;
};

// Throws Failure (kind kResource) "rendering took longer than the limit of N
// ms" once the active render has run longer than max_seconds. Called once
// per loop iteration and periodically by builtins that loop internally.
void check_render_time();

// Throws Failure (kind kResource) "<what> of N bytes exceeds the limit of M
// bytes per value" when `bytes` > active_budgets().max_value_bytes.
void check_value_bytes(size_t bytes, const std::string& what);
// a * n, saturating at SIZE_MAX (n <= 0 gives 0).
size_t saturating_mul(size_t a, int64_t n);

}  // namespace loratune::jinja
