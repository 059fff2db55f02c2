// Parity of chat::encode_chat with transformers' apply_chat_template
// (tokenize=True) on the real tokenizers: ids with every control token
// recognised (kEverywhere = HF default), ids with content sanitised
// (kTemplateOnly = sanitize_control_tokens=True), assistant masks where a
// template marks {% generation %}, and mask/span alignment otherwise.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "chat/chat_reference.h"
#include "common/test_env.h"
#include "trainer/chat/chat_template.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

namespace {

using loratune::chat::ChatTemplate;
using loratune::chat::ControlTokens;
using loratune::chat::Json;
using loratune::test::chat::options_for;
using loratune::test::chat::reference;

// The tokenizer of a model directory, loaded once; nullptr (and one test
// failure naming it) when it does not load.
const loratune::tokenizer::Tokenizer* tokenizer_for(const std::string& model_dir) {
  static std::map<std::string, std::unique_ptr<loratune::tokenizer::Tokenizer>> cache;
  static std::map<std::string, std::string> failed;
  if (failed.count(model_dir)) return nullptr;
  auto& t = cache[model_dir];
  if (!t) {
    try {
      t = loratune::tokenizer::load_tokenizer(model_dir);
    } catch (const loratune::Error& e) {
      failed[model_dir] = e.what();
      ADD_FAILURE() << "tokenizer does not load: " << e.what();
      return nullptr;
    }
  }
  return t.get();
}

loratune::chat::ChatEncoding encode(const Json& t, const Json& c, ControlTokens mode,
                                    bool mask = true) {
  ChatTemplate tpl(t["source"].get<std::string>());
  loratune::chat::EncodeChatOptions enc;
  enc.control_tokens = mode;
  enc.assistant_mask = mask;
  return loratune::chat::encode_chat(tpl, *tokenizer_for(t["model_dir"]), c["messages"],
                                     options_for(t, c), enc);
}

TEST(ChatTokens, IdsMatchTransformersBothControlTokenModes) {
  const Json& ref = reference();
  std::map<std::string, std::array<int, 3>> score;  // hf ids, sanitized ids, total
  for (const Json& c : ref["cases"]) {
    if (!c.contains("ids")) continue;
    const std::string name = c["template"];
    const Json& t = ref["templates"][name];
    SCOPED_TRACE(name + ": " + c["messages"].dump());
    auto& s = score[name];
    ++s[2];
    if (!tokenizer_for(t["model_dir"])) continue;
    auto hf = encode(t, c, ControlTokens::kEverywhere, false);
    EXPECT_EQ(hf.text, c["text"].get<std::string>());
    EXPECT_EQ(hf.ids, c["ids"].get<std::vector<int32_t>>());
    s[0] += hf.ids == c["ids"].get<std::vector<int32_t>>();
    if (c.contains("sanitized_ids")) {
      // (The text may differ from c["text"]: string methods in the template see the markers.)
      auto safe = encode(t, c, ControlTokens::kTemplateOnly, false);
      EXPECT_EQ(safe.ids, c["sanitized_ids"].get<std::vector<int32_t>>()) << "sanitized";
      s[1] += safe.ids == c["sanitized_ids"].get<std::vector<int32_t>>();
    }
  }
  for (const auto& [name, s] : score) {
    std::printf("%-18s ids identical %d/%d, sanitized ids identical %d/%d\n", name.c_str(), s[0],
                s[2], s[1], s[2]);
  }
  EXPECT_GE(score.size(), 7u);
}

TEST(ChatTokens, InjectedControlTokensStayTextByDefault) {
  const Json& ref = reference();
  int checked = 0;
  for (const Json& c : ref["cases"]) {
    if (!c.contains("ids") || c["messages"].dump().find("<|eot_id|>") == std::string::npos)
      continue;
    const Json& t = ref["templates"][c["template"].get<std::string>()];
    const auto* tok = tokenizer_for(t["model_dir"]);
    if (!tok) continue;
    auto eot = tok->token_to_id("<|eot_id|>");
    if (!eot) continue;
    auto count = [&](const std::vector<int32_t>& ids) {
      return std::count(ids.begin(), ids.end(), *eot);
    };
    auto hf = encode(t, c, ControlTokens::kEverywhere, false);
    auto safe = encode(t, c, ControlTokens::kTemplateOnly, false);
    // transformers' default lets the content forge a turn end; the default mode does not.
    EXPECT_EQ(count(hf.ids), count(safe.ids) + 1) << c["template"];
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

TEST(ChatTokens, AssistantMasksMatchTransformersForGenerationTemplates) {
  const Json& ref = reference();
  int checked = 0;
  for (const Json& c : ref["cases"]) {
    if (!c.contains("assistant_masks")) continue;
    const Json& t = ref["templates"][c["template"].get<std::string>()];
    SCOPED_TRACE(c["messages"].dump());
    if (!tokenizer_for(t["model_dir"])) continue;
    auto e = encode(t, c, ControlTokens::kEverywhere);
    EXPECT_EQ(e.assistant_mask, c["assistant_masks"].get<std::vector<uint8_t>>());
    ++checked;
  }
  EXPECT_GE(checked, 30);
}

// Without generation tags the mask comes from the constructed spans: it must
// start and stop on token boundaries (no header token half-masked) and cover
// the end-of-turn token.
TEST(ChatTokens, ConstructedMasksAlignWithTokenBoundaries) {
  const Json& ref = reference();
  int spans = 0;
  for (const Json& c : ref["cases"]) {
    if (!c.contains("ids")) continue;
    const Json& t = ref["templates"][c["template"].get<std::string>()];
    if (t["has_generation"].get<bool>() || c["messages"][0]["role"] == "assistant") continue;
    SCOPED_TRACE(c["template"].get<std::string>() + ": " + c["messages"].dump());
    const auto* tok = tokenizer_for(t["model_dir"]);
    if (!tok) continue;
    auto e = encode(t, c, ControlTokens::kEverywhere);
    loratune::tokenizer::EncodeOptions opt;
    opt.add_special_tokens = false;
    auto toks = tok->encode_with_offsets(e.text, opt);
    for (const auto& s : e.assistant_spans) {
      bool starts = false, ends = false;
      for (const auto& k : toks) {
        starts = starts || k.begin == s.begin;
        ends = ends || k.end == s.end;
      }
      EXPECT_TRUE(starts) << "span begins inside a token: '" << e.text.substr(s.begin, 20) << "'";
      EXPECT_TRUE(ends) << "span ends inside a token";
      ++spans;
    }
    size_t masked = std::count(e.assistant_mask.begin(), e.assistant_mask.end(), 1);
    EXPECT_EQ(masked > 0, !e.assistant_spans.empty());
  }
  EXPECT_GE(spans, 100);
}

}  // namespace
