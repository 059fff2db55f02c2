// `loratune tokenize --chat`: one JSON object per conversation with the
// text, ids and assistant mask, or the template's refusal, compared with
// transformers (fixture chat_reference).
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "chat/chat_reference.h"
#include "common/test_env.h"

namespace {

using loratune::test::chat::Json;
using loratune::test::chat::reference;

TEST(ChatCli, PrintsTextIdsMaskOrError) {
  const Json& ref = reference();
  const std::string dir = loratune::test::make_temp_dir("chat_cli");
  // The first few llama3_1 conversations (one refused by none) and gemma3's refusals.
  std::vector<const Json*> cases;
  for (const Json& c : ref["cases"]) {
    if (c["template"] == "gemma3" && c["extra"].empty() &&
        !c["add_generation_prompt"].get<bool>() && (cases.size() < 4 || c.contains("error"))) {
      cases.push_back(&c);
    }
  }
  ASSERT_GE(cases.size(), 4u);
  std::string jsonl;
  for (const Json* c : cases) jsonl += Json{{"messages", (*c)["messages"]}}.dump() + "\n";
  loratune::test::write_file(dir + "/chat.jsonl", jsonl);
  const Json& t = ref["templates"]["gemma3"];
  auto r = loratune::test::run(loratune::test::quote(loratune::test::loratune_bin()) +
                               " tokenize --model " + loratune::test::quote(t["model_dir"]) +
                               " --chat " + dir + "/chat.jsonl");
  ASSERT_EQ(r.status, 0) << r.out;
  std::istringstream lines(r.out);
  std::string line;
  for (const Json* c : cases) {
    ASSERT_TRUE(std::getline(lines, line)) << r.out;
    Json got = Json::parse(line);
    if (c->contains("error")) {
      ASSERT_TRUE(got.contains("error")) << line;
      EXPECT_NE(got["error"].get<std::string>().find((*c)["error"].get<std::string>()),
                std::string::npos);
    } else {
      EXPECT_EQ(got["text"], (*c)["text"]);
      EXPECT_EQ(got["ids"], (*c)["sanitized_ids"]);
      EXPECT_EQ(got["assistant_mask"].size(), got["ids"].size());
    }
  }
}

TEST(ChatCli, BrokenLineAndUnknownBuiltinAreErrors) {
  const Json& ref = reference();
  const std::string dir = loratune::test::make_temp_dir("chat_cli_bad");
  loratune::test::write_file(dir + "/bad.jsonl", "{\"messages\": []}\n{not json\n");
  const std::string model = ref["templates"]["builtin_llama2"]["model_dir"].get<std::string>();
  const std::string bin = loratune::test::quote(loratune::test::loratune_bin()) +
                          " tokenize --model " + loratune::test::quote(model) + " --chat ";
  auto r = loratune::test::run(bin + dir + "/bad.jsonl --chat-template llama2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("bad.jsonl:2: invalid JSON at column 3"), std::string::npos) << r.out;
  r = loratune::test::run(bin + dir + "/bad.jsonl --chat-template lama2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("did you mean 'llama2'"), std::string::npos) << r.out;
  // Llama 2's tokenizer ships no template: the error names the built-ins.
  r = loratune::test::run(bin + dir + "/bad.jsonl");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--chat-template"), std::string::npos) << r.out;
}

}  // namespace
