// libFuzzer target: a chat template through the Jinja lexer, parser and
// evaluator (chat::ChatTemplate), rendered with a small fixed conversation,
// with and without the generation prompt, and with the assistant spans.
// The render runs under budgets 10x below the defaults (jinja_budgets.h) and a
// 0.2 s clock, so that libFuzzer's 1 s timeout flags work the budgets fail to
// bound, not templates that legitimately spend their (30 s) default budget.
#include <cstdint>
#include <string>

#include "trainer/chat/chat_template.h"
#include "trainer/io/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using loratune::chat::Json;
  static const Json messages = Json::parse(R"([
      {"role": "system", "content": "You are helpful."},
      {"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": "4", "reasoning_content": "add"},
      {"role": "user", "content": "Thanks <|im_end|>"},
      {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
        "function": {"name": "f", "arguments": {"x": 1, "y": [true, null, 2.5]}}}]}])");
  static const Json tools = Json::parse(
      R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])");
  const std::string source(reinterpret_cast<const char*>(data), size);
  try {
    static const loratune::jinja::Budgets budgets = [] {
      loratune::jinja::Budgets b;
      b.max_loop_iterations = 100000;
      b.max_output_bytes = size_t{1} << 20;
      b.max_value_bytes = size_t{1} << 20;
      b.max_seconds = 0.2;
      return b;
    }();
    const loratune::chat::ChatTemplate tpl(source, "fuzz template", budgets);
    loratune::chat::RenderOptions opts;
    opts.bos_token = "<s>";
    opts.eos_token = "</s>";
    opts.tools = tools;
    opts.extra = {{"enable_thinking", false}};
    (void)tpl.render_text(messages, opts);
    opts.add_generation_prompt = true;
    const auto rendered = tpl.render(messages, opts);
    for (const auto& s : rendered.assistant_spans) {
      if (s.begin > s.end || s.end > rendered.text.size()) __builtin_trap();
    }
  } catch (const loratune::Error&) {
  }
  return 0;
}
