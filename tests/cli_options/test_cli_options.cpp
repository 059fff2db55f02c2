// Options and inputs of generate, eval and tokenize through the real binary:
// every bad value is exactly one stderr line "loratune: error: <message>"
// naming the option, the value and the valid range, with the exit status of
// its kind; and the paths that must work (eval --chat-template, train and
// eval on pre-tokenized data with no tokenizer files) do.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/test_env.h"

namespace fs = std::filesystem;

namespace loratune::test {
namespace {

std::string tiny_model(const std::string& variant) {
  return testdata_dir() + "/models/" + variant;
}
// llama-rope3-tied: no tokenizer files; its pre-tokenized training data.
std::string no_tokenizer_model() {
  return tiny_model("llama-rope3-tied");
}
std::string tokenized_data() {
  return testdata_dir() + "/ref_train/llama-rope3-tied/train.jsonl";
}
// The same weights with a small word tokenizer (no chat template).
std::string tokmodel() {
  return testdata_dir() + "/ref_train/tokmodel";
}
// A real tokenizer with a chat template (tests/data fixture).
std::string chat_tokenizer() {
  return testdata_dir() + "/data/tokenizers/llama3_gen";
}

struct Split {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs `loratune <args>` with stdout and stderr kept apart.
Split run_loratune(const std::string& args) {
  static const std::string dir = make_temp_dir("cli_options_stderr");
  static int n = 0;
  const std::string err = dir + "/" + std::to_string(n++) + ".txt";
  const RunResult r = run("(" + quote(loratune_bin()) + " " + args + " 2>" + quote(err) + ")");
  return {r.status, r.out, read_file(err)};
}

// Exactly one stderr line: "loratune: error: " + `message` (or, when
// `message` ends in "...", a line starting with what comes before).
void expect_error(const Split& r, int status, const std::string& message) {
  EXPECT_EQ(r.status, status) << r.err;
  ASSERT_FALSE(r.err.empty()) << "nothing on stderr";
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "not one line:\n" << r.err;
  const std::string line = r.err.substr(0, r.err.size() - 1);
  const std::string prefix = "loratune: error: ";
  if (message.size() > 3 && message.compare(message.size() - 3, 3, "...") == 0) {
    const std::string start = prefix + message.substr(0, message.size() - 3);
    EXPECT_EQ(line.rfind(start, 0), 0u)
        << "want a line starting with: " << start << "\ngot: " << line;
  } else {
    EXPECT_EQ(line, prefix + message);
  }
}

struct Case {
  const char* name;
  std::string args;  // after `loratune`
  int status;
  std::string message;  // see expect_error
};

TEST(CliOptions, GenerateRejectsEachBadValueWithOneLineNamingOptionValueAndRange) {
  const std::string g = "generate --model " + quote(no_tokenizer_model()) + " ";
  const std::vector<Case> cases = {
      {"empty_ids", g + "--ids ''", 1,
       "--ids: '' is an empty token id list; give ids such as \"1 2 3\" (no --prompt, --chat or "
       "--ids at all starts the interactive chat)"},
      {"blank_ids", g + "--ids ' , '", 1, "--ids: ' , ' is an empty token id list; ..."},
      {"empty_prompt", g + "--prompt ''", 1, "--prompt: the prompt is empty; ..."},
      {"max_new_tokens_negative", g + "--ids 1 --max-new-tokens -1", 1,
       "--max-new-tokens: '-1' is out of range; expected an integer in [1, 16777216]"},
      {"max_new_tokens_zero", g + "--ids 1 --max-new-tokens 0", 1,
       "--max-new-tokens: '0' is out of range; expected an integer in [1, 16777216]"},
      {"max_new_tokens_not_a_number", g + "--ids 1 --max-new-tokens 10x", 1,
       "--max-new-tokens: '10x' is not an integer; expected an integer in [1, 16777216]"},
      {"max_new_tokens_beyond_context", g + "--ids 1 --max-new-tokens 16777216", 1,
       "--max-new-tokens: 16777216 leaves no room for a prompt in the model's context of ..."},
      {"top_p_above_one", g + "--ids 1 --top-p 5", 1,
       "--top-p: '5' is out of range; expected a number in (0, 1]"},
      {"top_p_zero", g + "--ids 1 --top-p 0", 1,
       "--top-p: '0' is out of range; expected a number in (0, 1]"},
      {"top_k_negative", g + "--ids 1 --top-k -3", 1,
       "--top-k: '-3' is out of range; expected an integer in [0, 2147483647]"},
      {"temperature_negative", g + "--ids 1 --temperature -1", 1,
       "--temperature: '-1' is out of range; expected a finite number >= 0"},
      {"temperature_nan", g + "--ids 1 --temperature nan", 1,
       "--temperature: 'nan' is out of range; expected a finite number >= 0"},
      {"temperature_inf", g + "--ids 1 --temperature inf", 1,
       "--temperature: 'inf' is out of range; expected a finite number >= 0"},
      {"repetition_penalty_zero", g + "--ids 1 --repetition-penalty 0", 1,
       "--repetition-penalty: '0' is out of range; expected a finite number > 0"},
      {"seed_negative", g + "--ids 1 --seed -1", 1,
       "--seed: '-1' is out of range; expected an integer in [0, 9223372036854775807]"},
      {"seed_overflow", g + "--ids 1 --seed 99999999999999999999", 1,
       "--seed: '99999999999999999999' is out of range; expected an integer in [0, "
       "9223372036854775807]"},
      {"unknown_device", g + "--ids 1 --device gpu", 1,
       "--device: 'gpu' is not one of auto, cpu, cuda, cuda:N (N a GPU index) (did you mean "
       "'cuda'?)"},
      {"unknown_dtype", g + "--ids 1 --dtype float33", 1, "--dtype: ..."},
      {"unknown_chat_template", g + "--ids 1 --chat-template llama-3", 1,
       "--chat-template: 'llama-3' is not one of auto, llama2, llama3, chatml, mistral, gemma, "
       "phi3 (did you mean 'llama3'?)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    expect_error(run_loratune(c.args), c.status, c.message);
  }
}

TEST(CliOptions, GenerateWithValidOptionsStillRuns) {
  const Split r = run_loratune("generate --model " + quote(no_tokenizer_model()) +
                               " --ids '1 2' --max-new-tokens 3 --temperature 0.7 --top-p 1 "
                               "--top-k 5 --repetition-penalty 1.1 --seed 3 --ignore-eos --json");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("\"ids\""), std::string::npos) << r.out;
}

TEST(CliOptions, EvalRejectsBadNumbersAndTemplateNames) {
  const std::string e =
      "eval --model " + quote(tokmodel()) + " --data " + quote(tokenized_data()) + " ";
  const std::vector<Case> cases = {
      {"max_seq_len_one", e + "--max-seq-len 1", 1,
       "--max-seq-len: '1' is out of range; expected an integer in [2, 16777216]"},
      {"batch_size_zero", e + "--batch-size 0", 1,
       "--batch-size: '0' is out of range; expected an integer in [1, 65536]"},
      {"batch_size_not_integer", e + "--batch-size 1.5", 1,
       "--batch-size: '1.5' is not an integer; expected an integer in [1, 65536]"},
      {"unknown_device", e + "--device cuda:x", 1,
       "--device: 'cuda:x' is not one of auto, cpu, cuda, cuda:N (N a GPU index) (did you mean "
       "'cuda'?)"},
      {"unknown_chat_template", e + "--chat-template chatm", 1,
       "--chat-template: 'chatm' is not one of auto, llama2, llama3, chatml, mistral, gemma, "
       "phi3 (did you mean 'chatml'?)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    expect_error(run_loratune(c.args), c.status, c.message);
  }
}

// tokmodel's tokenizer has no chat template: chat data needs --chat-template.
TEST(CliOptions, EvalChatTemplateOptionRendersChatDataForATokenizerWithoutOne) {
  const std::string dir = make_temp_dir("cli_options_eval_chat");
  const std::string data = dir + "/chat.jsonl";
  write_file(data, R"({"messages": [{"role": "user", "content": "hello"}, )"
                   R"({"role": "assistant", "content": "world"}]})"
                   "\n");
  const std::string e = "eval --model " + quote(tokmodel()) + " --data " + quote(data);
  expect_error(run_loratune(e), 1, data + ":1: chat record but ...");
  const Split r = run_loratune(e + " --chat-template chatml --json");
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("\"loss\""), std::string::npos) << r.out;
}

TEST(CliOptions, TokenizeChatFailsWithDataStatusAndOneSummaryLineWhenARecordFails) {
  const std::string dir = make_temp_dir("cli_options_tokenize_chat");
  const std::string file = dir + "/chat.jsonl";
  // Llama 2's template raises unless roles alternate user/assistant.
  write_file(
      file,
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})"
      "\n"
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})"
      "\n"
      R"({"messages": [{"role": "user", "content": "c"}]})"
      "\n");
  const std::string cmd = "tokenize --model " + quote(chat_tokenizer()) + " --chat " + quote(file) +
                          " --chat-template llama2";
  const Split r = run_loratune(cmd);
  expect_error(r, 3, "1 of 3 records failed; first: " + file + ":2: ...");
  // Every record still has its line on stdout; the failed one an "error".
  std::vector<std::string> lines;
  for (size_t at = 0; at < r.out.size();) {
    size_t nl = r.out.find('\n', at);
    if (nl == std::string::npos) nl = r.out.size();
    lines.push_back(r.out.substr(at, nl - at));
    at = nl + 1;
  }
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(lines[0].rfind("{\"text\"", 0), 0u) << lines[0];
  EXPECT_EQ(lines[1].rfind("{\"error\"", 0), 0u) << lines[1];
  EXPECT_EQ(lines[2].rfind("{\"text\"", 0), 0u) << lines[2];
  EXPECT_NE(r.err.find("alternate"), std::string::npos) << r.err;

  // All records fine: exit 0, nothing on stderr.
  write_file(file, R"({"messages": [{"role": "user", "content": "a"}]})"
                   "\n");
  const Split ok = run_loratune(cmd);
  EXPECT_EQ(ok.status, 0) << ok.err;
  EXPECT_EQ(ok.err, "");
}

// A model directory with config.json and weights but no tokenizer files
// trains and evaluates on pre-tokenized data; text data names what is missing.
TEST(CliOptions, PreTokenizedDataNeedsNoTokenizerFiles) {
  ASSERT_FALSE(fs::exists(no_tokenizer_model() + "/tokenizer.json"));
  ASSERT_FALSE(fs::exists(no_tokenizer_model() + "/tokenizer.model"));
  const std::string dir = make_temp_dir("cli_options_pretokenized");
  auto config = [&](const std::string& data, const std::string& out) {
    const std::string path = out + ".yaml";
    write_file(path, "model: {path: " + no_tokenizer_model() +
                         ", dtype: float32}\ndevice: cpu\nlora: {r: 2, target_modules: "
                         "[q_proj]}\ndata: {train: " +
                         data + ", max_seq_len: 64}\ntrain: {max_steps: 1}\noutput: {dir: " + out +
                         "}\n");
    return path;
  };
  const Split t = run_loratune("train --plain " + quote(config(tokenized_data(), dir + "/run")));
  EXPECT_EQ(t.status, 0) << t.err;
  EXPECT_TRUE(fs::exists(dir + "/run/adapter/adapter_model.safetensors")) << t.err;

  const Split e = run_loratune("eval --model " + quote(no_tokenizer_model()) + " --data " +
                               quote(tokenized_data()) + " --json");
  EXPECT_EQ(e.status, 0) << e.err;
  EXPECT_NE(e.out.find("\"loss\""), std::string::npos) << e.out;

  const std::string text = dir + "/text.jsonl";
  write_file(text, "{\"text\": \"hello\"}\n");
  expect_error(run_loratune("train --plain " + quote(config(text, dir + "/run-text"))), 1,
               text + ":1: this record needs a tokenizer but " + no_tokenizer_model() +
                   " has no tokenizer (tokenizer.json or tokenizer.model); without one only "
                   "pre-tokenized records {\"input_ids\", \"labels\"?} can be used");
}

TEST(CliOptions, CommandLineSyntaxErrorsAreOneLineNamingTheCommandsHelp) {
  expect_error(run_loratune("trian x.yaml"), 1,
               "unknown command 'trian' (did you mean 'train'?); commands: inspect, logits, "
               "tokenize, train, eval, merge, generate, import, export-gguf");
  expect_error(run_loratune(""), 1, "A subcommand is required (see `loratune --help`)");
  expect_error(run_loratune("generate --ids 1"), 1,
               "--model is required (see `loratune generate --help`)");
  expect_error(run_loratune("train"), 1, "config is required (see `loratune train --help`)");
  expect_error(run_loratune("inspect " + tokmodel() + " --bogus"), 1,
               "The following argument was not expected: --bogus (see `loratune inspect --help`)");
}

// A path given as '' meant "no adapter" to generate and the working
// directory's rename target to logits; a directory as --file read nothing.
TEST(CliOptions, EmptyPathsAndADirectoryAsFileAreOneLineErrors) {
  const std::string m = quote(tokmodel());
  expect_error(run_loratune("logits --model " + m + " --ids 1 --out ''"), 1,
               "--out: the path is empty (see `loratune logits --help`)");
  expect_error(run_loratune("generate --model " + m + " --ids 1 --adapter ''"), 1,
               "--adapter: the path is empty (see `loratune generate --help`)");
  expect_error(run_loratune("tokenize --model " + m + " --file ''"), 1,
               "--file: the path is empty (see `loratune tokenize --help`)");
  expect_error(run_loratune("train ''"), 1,
               "config: the path is empty (see `loratune train --help`)");
  const std::string dir = make_temp_dir("cli_file_dir");
  expect_error(run_loratune("tokenize --model " + m + " --file " + quote(dir)), 4,
               dir + ": read failed: Is a directory");
}

}  // namespace
}  // namespace loratune::test
