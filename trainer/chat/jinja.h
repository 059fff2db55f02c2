// trainer/chat/jinja.h — a native Jinja2 subset, sized for chat templates.
//
// Renders like transformers' chat-template environment
// (utils/chat_template_utils.py): ImmutableSandboxedEnvironment with
// trim_blocks=True, lstrip_blocks=True, the loopcontrols extension (break,
// continue), transformers' tojson filter, the globals raise_exception,
// strftime_now, namespace and dict, and the {% generation %} tag.
//
// Supported: {{ }}, {% if/elif/else %}, {% for %} (tuple targets, "if"
// filter, else, loop.index/index0/revindex/revindex0/first/last/length/
// previtem/nextitem/cycle/changed), {% set %} (tuples, namespace attributes,
// block set), {% macro %}, {% filter %}, {% raw %}, comments, whitespace
// control, Python literals, arithmetic, printf-style '%' formatting,
// comparisons, in/not in, slicing, common str/dict/list methods (Python's
// full Unicode case mapping: jinja_unicode.h), and the filters/tests listed
// in jinja_filters.cpp. Integers are 64-bit: a result Python would need a
// big integer for is an error (kUnsupported), never a wrapped value.
// Undefined follows jinja2.Undefined: it prints as "", is false, iterates
// empty, and fails on attribute access, arithmetic and calls.
//
// Anything outside the subset (include, extends, import, call blocks,
// recursive loops, unknown filters/tests, a namespace stored inside a
// namespace) is a loratune::Error at compile time or at the point it is
// evaluated — never silently different output. Errors read
// "chat template line N: <what>"; raise_exception('m') reads
// "chat template line N: raise_exception: m".
//
// Templates are untrusted code: compiling and rendering run under Budgets
// (jinja_budgets.h) for nesting, macro recursion, loop iterations, output and
// value sizes and time; no template can crash the process, exhaust its
// memory or hang it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "trainer/chat/jinja_value.h"

namespace loratune::jinja {

// A half-open byte range [begin, end) of rendered output.
struct Span {
  size_t begin = 0;
  size_t end = 0;
  bool operator==(const Span& o) const { return begin == o.begin && end == o.end; }
};

struct RenderOutput {
  std::string text;
  // Output of each {% generation %} block, in order (byte offsets in text).
  std::vector<Span> generation_spans;
  // For each value in `tracked` (by index): the non-empty output that loop
  // iterations whose loop variable *is* that value (same list/dict object)
  // wrote, in order. Lets callers find which output a template wrote for a
  // given message without any text matching.
  std::vector<std::vector<Span>> tracked_segments;
};

class Template {
 public:
  // Compiles `source`; throws loratune::Error on a syntax error (kCorrupt),
  // an unsupported construct (kUnsupported) or a source larger or nested
  // deeper than `budgets` allow (kResource). `name` starts every message
  // ("<name> line N: ..."): where the template comes from, e.g.
  // "<dir>/tokenizer_config.json: chat template".
  explicit Template(const std::string& source, const std::string& name = "chat template",
                    const Budgets& budgets = {});
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // True when the template contains a {% generation %} block.
  bool has_generation() const { return has_generation_; }

  // Renders with `context` as the template's variables (on top of the
  // globals). `tracked` values are compared by identity (Value::identity) to
  // loop variables. Throws loratune::Error: kData when the template refuses
  // the conversation (raise_exception) or fails on it, kResource when a
  // budget (jinja_budgets.h) is exceeded, kUnsupported for constructs met
  // only at run time. Thread-safe: rendering does not mutate the compiled
  // template.
  RenderOutput render(const Dict& context, const std::vector<Value>& tracked = {}) const;

 private:
  struct Program;
  std::unique_ptr<Program> program_;
  bool has_generation_ = false;
};

}  // namespace loratune::jinja
