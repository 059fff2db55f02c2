// `loratune generate` with none of --prompt/--chat/--ids: the interactive
// chat, fed through a pipe. Each turn's prompt ids equal transformers'
// apply_chat_template of the whole conversation so far (user and assistant
// turns), greedy replies equal transformers' generate for that conversation,
// /reset starts a new conversation, a message that does not fit the context
// is refused with a message (not a crash), and the plain-text output is the
// replies as streamed text.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sstream>
#include <string>
#include <vector>

#include "common/test_env.h"

using namespace loratune;
using nlohmann::json;

namespace {

const std::vector<std::vector<std::string>> kSessions = {
    {"Hello! Who are you?", "Tell me more about home batteries, please."},
    {"What is 2 + 2?"},
};
constexpr int kNewTokens = 12;

std::string model_dir() {
  return test::testdata_dir() + "/chat/qwen3-chat";
}

// What is piped in: session 0, a message far past the 1024-token context,
// /reset, session 1.
std::string piped_input() {
  std::string long_message;
  for (int i = 0; i < 1200; ++i) long_message += "word ";
  return kSessions[0][0] + "\n" + kSessions[0][1] + "\n" + long_message + "\n/reset\n" +
         kSessions[1][0] + "\n";
}

// transformers' turns for kSessions, computed once.
const json& reference() {
  static const json ref = [] {
    const std::string dir = test::make_temp_dir("chat-ref");
    test::write_file(dir + "/sessions.json", json(kSessions).dump());
    test::run_python("tests/python/ref_chat_generate.py",
                     "greedy --model " + test::quote(model_dir()) + " --sessions " +
                         test::quote(dir + "/sessions.json") + " --new " +
                         std::to_string(kNewTokens) + " --out " + test::quote(dir + "/ref.json"));
    return json::parse(test::read_file(dir + "/ref.json"));
  }();
  return ref;
}

struct ChatRun {
  test::RunResult result;  // stdout only
  std::string err;
};

ChatRun run_chat(const std::string& extra) {
  const std::string dir = test::make_temp_dir("chat-run");
  test::write_file(dir + "/in.txt", piped_input());
  ChatRun r;
  // In a subshell: test::run adds 2>&1, which must not undo 2> err.txt.
  r.result = test::run("(" + test::quote(test::loratune_bin()) + " generate --model " +
                       test::quote(model_dir()) + " --max-new-tokens " +
                       std::to_string(kNewTokens) + " " + extra + " < " +
                       test::quote(dir + "/in.txt") + " 2> " + test::quote(dir + "/err.txt") + ")");
  r.err = test::read_file(dir + "/err.txt");
  return r;
}

TEST(GenerateChat, PipedTurnsEqualTransformersTemplateAndGreedyGenerate) {
  ChatRun r = run_chat("--json");
  ASSERT_EQ(r.result.status, 0) << r.result.out << r.err;
  std::vector<json> turns;
  std::istringstream lines(r.result.out);
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line[0] == '{') turns.push_back(json::parse(line));
  }
  const json& ref = reference();
  std::vector<json> want;  // the long message and /reset print no turn
  for (const auto& session : ref) {
    for (const auto& t : session) want.push_back(t);
  }
  ASSERT_EQ(turns.size(), want.size()) << r.result.out << r.err;
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE("turn " + std::to_string(i));
    EXPECT_EQ(turns[i]["prompt_ids"], want[i]["prompt_ids"]);
    EXPECT_EQ(turns[i]["ids"], want[i]["ids"]);
    EXPECT_EQ(turns[i]["text"], want[i]["text"]);
  }
  // The second turn's prompt holds the first turn's exchange.
  EXPECT_GT(turns[1]["prompt_ids"].size(),
            turns[0]["prompt_ids"].size() + turns[0]["ids"].size() - 1);
  EXPECT_NE(r.err.find("the model's context is 1024: message not sent"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("(conversation cleared)"), std::string::npos) << r.err;
}

TEST(GenerateChat, PlainOutputIsTheStreamedRepliesWithoutPrompts) {
  ChatRun r = run_chat("");
  ASSERT_EQ(r.result.status, 0) << r.result.out << r.err;
  std::string want;
  for (const auto& session : reference()) {
    for (const auto& t : session) want += t["text"].get<std::string>() + "\n";
  }
  EXPECT_EQ(r.result.out, want);
  EXPECT_EQ(r.err.find("> "), std::string::npos) << "a prompt was shown on a pipe: " << r.err;
}

TEST(GenerateChat, ExitEndsTheChatAndAnUnknownTemplateIsAOneLineError) {
  const std::string dir = test::make_temp_dir("chat-exit");
  test::write_file(dir + "/in.txt", "/exit\nnever answered\n");
  const std::string cmd = test::quote(test::loratune_bin()) + " generate --model " +
                          test::quote(model_dir()) + " --json";
  auto r = test::run(cmd + " < " + test::quote(dir + "/in.txt"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out.find('{'), std::string::npos) << r.out;
  auto bad = test::run(cmd + " --chat-template chatm < " + test::quote(dir + "/in.txt"));
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("chatml"), std::string::npos) << bad.out;
}

TEST(GenerateChat, ALineThatIsNotUtf8IsNotSentAndTheChatGoesOn) {
  const std::string dir = test::make_temp_dir("chat-utf8");
  test::write_file(dir + "/in.txt", "\xff\xfe bad\nhi\n");
  auto r = test::run("(" + test::quote(test::loratune_bin()) + " generate --model " +
                     test::quote(model_dir()) + " --json --max-new-tokens 2 < " +
                     test::quote(dir + "/in.txt") + " 2> " + test::quote(dir + "/err.txt") + ")");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(test::read_file(dir + "/err.txt"),
            "loratune: error: input line 1: invalid UTF-8 at byte 0; message not sent\n");
  // Only "hi" was sent: one reply whose prompt holds it alone.
  std::istringstream lines(r.out);
  std::string line;
  int replies = 0;
  while (std::getline(lines, line)) replies += line.rfind("{", 0) == 0;
  EXPECT_EQ(replies, 1) << r.out;
}

TEST(GenerateChat, AChatFileThatCannotBeUsedIsNamed) {
  const std::string dir = test::make_temp_dir("chat-file");
  const std::string cmd = test::quote(test::loratune_bin()) + " generate --model " +
                          test::quote(model_dir()) + " --max-new-tokens 2 --chat ";
  test::write_file(dir + "/empty.json", "[]");
  auto r = test::run(cmd + test::quote(dir + "/empty.json") + " 2>&1");
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find(dir + "/empty.json: the conversation has no messages"), std::string::npos)
      << r.out;
  // Missing: the file is named (not the template), exit 4.
  r = test::run(cmd + test::quote(dir + "/missing.json") + " --chat-template llama2 2>&1");
  EXPECT_EQ(r.status, 4) << r.out;
  EXPECT_NE(r.out.find(dir + "/missing.json"), std::string::npos) << r.out;
  // A template's own refusal of the file's messages names the file too.
  test::write_file(dir + "/odd.json", R"([{"role": "assistant", "content": "Hi"}])");
  r = test::run(cmd + test::quote(dir + "/odd.json") + " --chat-template llama2 2>&1");
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find(dir + "/odd.json: chat template line 1: raise_exception: Conversation "
                             "roles must alternate"),
            std::string::npos)
      << r.out;
}

}  // namespace
