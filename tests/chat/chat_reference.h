// Shared by the chat-template tests: the reference written by the fixture
// chat_reference (tests/python/ref_chat.py) and the render options that
// reproduce what apply_chat_template passed for one reference case.
#pragma once

#include <string>

#include "common/test_env.h"
#include "trainer/chat/chat_template.h"

namespace loratune::test::chat {

using Json = loratune::chat::Json;

// $LORATUNE_TESTDATA/chat/ref_chat.json, parsed once.
inline const Json& reference() {
  static const Json ref = Json::parse(read_file(testdata_dir() + "/chat/ref_chat.json"));
  return ref;
}

// apply_chat_template passes the tokenizer's special-token strings, then the
// call's kwargs, tools and add_generation_prompt.
inline loratune::chat::RenderOptions options_for(const Json& tpl, const Json& c) {
  loratune::chat::RenderOptions o;
  for (auto it = tpl["special"].begin(); it != tpl["special"].end(); ++it) {
    const std::string v = it.value().get<std::string>();
    if (it.key() == "bos_token") {
      o.bos_token = v;
    } else if (it.key() == "eos_token") {
      o.eos_token = v;
    } else {
      o.special_tokens[it.key()] = v;
    }
  }
  for (auto it = c["extra"].begin(); it != c["extra"].end(); ++it) o.extra[it.key()] = it.value();
  o.tools = c["tools"];
  o.add_generation_prompt = c["add_generation_prompt"].get<bool>();
  return o;
}

}  // namespace loratune::test::chat
