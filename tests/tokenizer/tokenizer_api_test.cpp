// The Tokenizer interface beyond ids: byte offsets into the input, special
// tokens in text (recognised or plain), eos ids from generation_config.json,
// chat templates in both tokenizer_config.json forms, id/token lookups.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "common/test_env.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::tokenizer {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

std::string model_dir(const std::string& name) {
  return test::testdata_dir() + "/tokenizer/models/" + name;
}

std::vector<std::string> corpus() {
  std::vector<std::string> lines;
  std::ifstream in(test::testdata_dir() + "/tokenizer/corpus.jsonl");
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(Json::parse(line).get<std::string>());
  return lines;
}

// Offsets are in-bounds, ordered, and agree with encode(); for a tokenizer
// without a normalizer (Llama 3) the token spans tile the input exactly.
TEST(TokenizerApi, OffsetsCoverTheInput) {
  const auto lines = corpus();
  ASSERT_GT(lines.size(), 2000u);
  for (const std::string name : {"llama3", "qwen3", "llama2", "gemma3", "sp_bpe"}) {
    auto tok = load_tokenizer(model_dir(name));
    size_t tiled = 0;
    for (const std::string& text : lines) {
      EncodeOptions opt{false, true};
      auto toks = tok->encode_with_offsets(text, opt);
      ASSERT_EQ(tok->encode(text, opt).size(), toks.size());
      std::string joined;
      uint32_t last_begin = 0, last_end = 0;
      for (const Token& t : toks) {
        ASSERT_LE(t.begin, t.end) << name << " " << Json(text).dump();
        ASSERT_LE(t.end, text.size()) << name << " " << Json(text).dump();
        ASSERT_GE(t.begin, last_begin) << name << " " << Json(text).dump();
        if (t.begin >= last_end) joined += text.substr(t.begin, t.end - t.begin);
        last_begin = t.begin;
        last_end = std::max(last_end, t.end);
      }
      if (joined == text) ++tiled;
      if (name == "llama3") {
        EXPECT_EQ(joined, text) << Json(text).dump();
      }
    }
    std::printf("[%s] token spans tile the input on %zu/%zu lines\n", name.c_str(), tiled,
                lines.size());
  }
}

TEST(TokenizerApi, SpecialTokenTextRecognisedOnlyWhenAsked) {
  auto tok = load_tokenizer(model_dir("llama3_1"));
  auto eot = tok->token_to_id("<|eot_id|>");
  ASSERT_TRUE(eot.has_value());
  const std::string text = "ab<|eot_id|>cd";
  auto as_special = tok->encode_with_offsets(text, {false, false});
  size_t found = 0;
  for (const Token& t : as_special) {
    if (t.id != *eot) continue;
    ++found;
    EXPECT_EQ(text.substr(t.begin, t.end - t.begin), "<|eot_id|>");
  }
  EXPECT_EQ(found, 1u);
  for (int32_t id : tok->encode(text, {false, true})) EXPECT_NE(id, *eot);
  // BOS from the post-processor sits at offset 0 with an empty span.
  auto with_bos = tok->encode_with_offsets(text, {true, true});
  ASSERT_FALSE(with_bos.empty());
  EXPECT_EQ(with_bos[0].id, tok->special_tokens().bos_id);
  EXPECT_EQ(with_bos[0].begin, with_bos[0].end);
}

TEST(TokenizerApi, IdTokenRoundTrip) {
  for (const std::string name : {"llama3", "gemma3", "sp_bpe"}) {
    auto tok = load_tokenizer(model_dir(name));
    for (int32_t id = 0; id < tok->vocab_size(); id += 97) {
      std::string s;
      if (!tok->id_to_token(id, &s)) continue;
      auto back = tok->token_to_id(s);
      ASSERT_TRUE(back.has_value()) << name << " id " << id;
      EXPECT_EQ(*back, id) << name << " token " << s;
    }
    std::string s;
    EXPECT_FALSE(tok->id_to_token(tok->vocab_size() + 10, &s));
    EXPECT_FALSE(tok->token_to_id("\x01not a token\x02").has_value());
  }
}

// Copies a fixture tokenizer and adds/overrides config files.
std::string variant(const std::string& name, const std::string& file, const Json& content) {
  std::string dir = test::make_temp_dir("tok-variant");
  for (const auto& e : fs::directory_iterator(model_dir(name)))
    fs::copy(e.path(), dir + "/" + e.path().filename().string());
  test::write_file(dir + "/" + file, content.dump());
  return dir;
}

TEST(TokenizerApi, EosIdsFromGenerationConfig) {
  auto base = load_tokenizer(model_dir("llama3_1"));
  int32_t eot = *base->token_to_id("<|eot_id|>"), eom = *base->token_to_id("<|eom_id|>");
  EXPECT_EQ(base->eos_ids(), (std::vector<int32_t>{base->special_tokens().eos_id}));
  auto list = load_tokenizer(
      variant("llama3_1", "generation_config.json", {{"eos_token_id", {eot, eom, eot}}}));
  EXPECT_EQ(list->eos_ids(), (std::vector<int32_t>{eot, eom}));
  auto single =
      load_tokenizer(variant("llama3_1", "generation_config.json", {{"eos_token_id", eom}}));
  EXPECT_EQ(single->eos_ids(), (std::vector<int32_t>{eom}));
}

// tokenizer_config.json's added_tokens_decoder is applied over tokenizer.json's
// added_tokens (transformers adds it again): where the two disagree on a
// token's options, the config's win. Ids from transformers 5.24.
TEST(TokenizerApi, ConfigAddedTokenOptionsWinOverTokenizerJson) {
  const std::string text = "rs <|eot_id|>   x";
  EncodeOptions plain;
  plain.add_special_tokens = false;
  Json cfg = Json::parse(test::read_file(model_dir("llama3") + "/tokenizer_config.json"));
  Json& eot = cfg["added_tokens_decoder"]["128009"];
  ASSERT_EQ(eot["content"], "<|eot_id|>");
  eot["lstrip"] = true;
  eot["rstrip"] = true;
  auto cfg_strips = load_tokenizer(variant("llama3", "tokenizer_config.json", cfg));
  EXPECT_EQ(cfg_strips->encode(text, plain), (std::vector<int32_t>{5544, 128009, 87}));
  Json tj = Json::parse(test::read_file(model_dir("llama3") + "/tokenizer.json"));
  for (Json& t : tj["added_tokens"]) {
    if (t["content"] == "<|eot_id|>") t["lstrip"] = t["rstrip"] = true;
  }
  auto json_strips = load_tokenizer(variant("llama3", "tokenizer.json", tj));
  EXPECT_EQ(json_strips->encode(text, plain), (std::vector<int32_t>{5544, 220, 128009, 256, 865}));
}

TEST(TokenizerApi, ChatTemplatesStringAndNamedList) {
  Json cfg = Json::parse(test::read_file(model_dir("qwen3") + "/tokenizer_config.json"));
  auto plain = load_tokenizer(model_dir("qwen3"));
  ASSERT_TRUE(plain->chat_template().has_value());
  EXPECT_EQ(*plain->chat_template(), cfg["chat_template"].get<std::string>());
  cfg["chat_template"] = Json::array(
      {{{"name", "default"}, {"template", "A"}}, {{"name", "tool_use"}, {"template", "B"}}});
  auto named = load_tokenizer(variant("qwen3", "tokenizer_config.json", cfg));
  ASSERT_EQ(named->chat_templates().size(), 2u);
  EXPECT_EQ(*named->chat_template(), "A");
  EXPECT_EQ(*named->chat_template("tool_use"), "B");
  EXPECT_FALSE(named->chat_template("missing").has_value());
  // One entry, not named "default": transformers' get_chat_template raises
  // ("multiple chat templates with no default"), so there is no default.
  cfg["chat_template"] = Json::array({{{"name", "tool_use"}, {"template", "B"}}});
  auto lone = load_tokenizer(variant("qwen3", "tokenizer_config.json", cfg));
  EXPECT_FALSE(lone->chat_template().has_value());
  EXPECT_EQ(*lone->chat_template("tool_use"), "B");
  EXPECT_EQ(lone->missing_chat_template(),
            "has chat templates 'tool_use' but none named 'default'");
}

// transformers (>= 4.50) saves templates as files; loading that directory
// with transformers 5 gives {'default': 'C', 'tool_use': 'D', 'rag': 'E'} for
// exactly this layout: chat_template.jinja replaces the config's whole list,
// additional_chat_templates/NAME.jinja adds NAME.
TEST(TokenizerApi, ChatTemplateFilesReplaceAndExtendTheConfigs) {
  Json cfg = Json::parse(test::read_file(model_dir("qwen3") + "/tokenizer_config.json"));
  cfg["chat_template"] = Json::array(
      {{{"name", "default"}, {"template", "A"}}, {{"name", "tool_use"}, {"template", "B"}}});
  const std::string dir = variant("qwen3", "tokenizer_config.json", cfg);
  test::write_file(dir + "/chat_template.jinja", "C");
  fs::create_directories(dir + "/additional_chat_templates");
  test::write_file(dir + "/additional_chat_templates/tool_use.jinja", "D");
  test::write_file(dir + "/additional_chat_templates/rag.jinja", "E");
  test::write_file(dir + "/additional_chat_templates/notes.txt", "not a template");
  auto tok = load_tokenizer(dir);
  ASSERT_EQ(tok->chat_templates().size(), 3u);
  EXPECT_EQ(*tok->chat_template(), "C");
  EXPECT_EQ(*tok->chat_template("tool_use"), "D");
  EXPECT_EQ(*tok->chat_template("rag"), "E");
  // Only the file: it is the default template.
  const std::string only = variant("qwen3", "chat_template.jinja", "x");
  test::write_file(only + "/chat_template.jinja", "{{ messages[0]['content'] }}");
  EXPECT_EQ(*load_tokenizer(only)->chat_template(), "{{ messages[0]['content'] }}");
  // A template file past the engine's 1 MiB source budget is refused unread.
  test::write_file(only + "/chat_template.jinja", std::string((1 << 20) + 1, 'x'));
  try {
    load_tokenizer(only);
    ADD_FAILURE() << "a 1 MiB + 1 template file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chat_template.jinja: chat template of 1048577 bytes "
                                         "exceeds the limit of 1048576 bytes"),
              std::string::npos)
        << e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kResource);
  }
}

}  // namespace
}  // namespace loratune::tokenizer
