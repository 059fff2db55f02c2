// Missing, truncated or malformed tokenizer files and unsupported components
// each give one loratune::Error that names the file and the problem.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <initializer_list>
#include <optional>

#include "common/test_env.h"
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::tokenizer {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

// A small valid tokenizer.json: byte-level BPE over "a", "b", "ab".
Json small_tokenizer() {
  return Json::parse(R"({
    "version": "1.0", "added_tokens": [
      {"id": 3, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
       "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [3], "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false,
              "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})");
}

std::string write_dir(const std::string& tag,
                      const std::vector<std::pair<std::string, std::string>>& files) {
  std::string dir = test::make_temp_dir(tag);
  for (const auto& [name, content] : files) test::write_file(dir + "/" + name, content);
  return dir;
}

// load_tokenizer(dir) throws loratune::Error whose message has every part.
void expect_load_error(const std::string& dir, std::initializer_list<std::string> parts) {
  try {
    load_tokenizer(dir);
    ADD_FAILURE() << "expected an error loading " << dir;
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

TEST(TokenizerBadInput, SmallValidTokenizerLoads) {
  std::string dir = write_dir("tok-ok", {{"tokenizer.json", small_tokenizer().dump()}});
  auto tok = load_tokenizer(dir);
  EXPECT_EQ(tok->encode("ab"), (std::vector<int32_t>{3, 2}));
  EXPECT_EQ(tok->encode("ab<s>", {false, false}), (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(tok->decode({3, 2, 0}, true), "aba");
}

TEST(TokenizerBadInput, MissingDirectory) {
  expect_load_error(test::make_temp_dir("tok-missing") + "/nope", {"/nope", "not a directory"});
}

TEST(TokenizerBadInput, DirectoryWithoutTokenizerFiles) {
  std::string dir = write_dir("tok-empty", {{"config.json", "{}"}});
  expect_load_error(dir, {dir, "no tokenizer.json or tokenizer.model"});
}

TEST(TokenizerBadInput, TruncatedTokenizerJson) {
  std::string text = small_tokenizer().dump();
  std::string dir = write_dir("tok-trunc", {{"tokenizer.json", text.substr(0, text.size() / 2)}});
  expect_load_error(dir, {dir + "/tokenizer.json:1:", "invalid JSON"});
}

TEST(TokenizerBadInput, TokenizerJsonWithoutModel) {
  Json j = small_tokenizer();
  j.erase("model");
  expect_load_error(write_dir("tok-nomodel", {{"tokenizer.json", j.dump()}}),
                    {"tokenizer.json", "no 'model'"});
}

TEST(TokenizerBadInput, UnsupportedModelType) {
  Json j = small_tokenizer();
  j["model"] = {{"type", "Unigram"}, {"vocab", Json::array()}, {"unk_id", 0}};
  expect_load_error(write_dir("tok-unigram", {{"tokenizer.json", j.dump()}}),
                    {"tokenizer.json", "model type 'Unigram' is not supported"});
}

TEST(TokenizerBadInput, UnsupportedNormalizer) {
  Json j = small_tokenizer();
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", {{{"type", "Precompiled"}, {"precompiled_charsmap", ""}}}}};
  expect_load_error(
      write_dir("tok-norm", {{"tokenizer.json", j.dump()}}),
      {"tokenizer.json", "normalizer.normalizers[0]", "'Precompiled' is not supported"});
}

TEST(TokenizerBadInput, UnsupportedPreTokenizer) {
  Json j = small_tokenizer();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_load_error(write_dir("tok-pre", {{"tokenizer.json", j.dump()}}),
                    {"tokenizer.json", "pre_tokenizer", "'Whitespace' is not supported"});
}

TEST(TokenizerBadInput, UnsupportedDecoder) {
  Json j = small_tokenizer();
  j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
  expect_load_error(write_dir("tok-dec", {{"tokenizer.json", j.dump()}}),
                    {"tokenizer.json", "decoder", "'WordPiece' is not supported"});
}

TEST(TokenizerBadInput, UnsupportedPostProcessorAndOption) {
  Json j = small_tokenizer();
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"Sequence", {{"id", "B"}}}}}}};
  expect_load_error(write_dir("tok-post", {{"tokenizer.json", j.dump()}}),
                    {"tokenizer.json", "post_processor", "sequence A"});
  Json k = small_tokenizer();
  k["model"]["dropout"] = 0.1;
  expect_load_error(write_dir("tok-dropout", {{"tokenizer.json", k.dump()}}),
                    {"tokenizer.json", "dropout"});
  Json m = small_tokenizer();
  m["pre_tokenizer"]["prefix_magic"] = true;
  expect_load_error(write_dir("tok-option", {{"tokenizer.json", m.dump()}}),
                    {"tokenizer.json", "ByteLevel", "unsupported option 'prefix_magic'"});
}

TEST(TokenizerBadInput, MergeWithUnknownToken) {
  Json j = small_tokenizer();
  j["model"]["merges"] = {"a c"};
  expect_load_error(write_dir("tok-merge", {{"tokenizer.json", j.dump()}}),
                    {"tokenizer.json", "merges[0]", "not in the vocab: 'c'"});
  j["model"]["merges"] = {"abc"};
  expect_load_error(write_dir("tok-merge2", {{"tokenizer.json", j.dump()}}),
                    {"tokenizer.json", "merges[0]", "not two tokens"});
}

TEST(TokenizerBadInput, RegexThatDoesNotCompile) {
  Json j = small_tokenizer();
  j["pre_tokenizer"] = {{"type", "Split"},
                        {"pattern", {{"Regex", "(?<=a+)b|(unclosed"}}},
                        {"behavior", "Isolated"},
                        {"invert", false}};
  expect_load_error(write_dir("tok-regex", {{"tokenizer.json", j.dump()}}),
                    {"tokenizer.json", "pre_tokenizer (Split)", "does not compile"});
}

TEST(TokenizerBadInput, MalformedTokenizerConfig) {
  std::string dir = write_dir(
      "tok-cfg", {{"tokenizer.json", small_tokenizer().dump()},
                  {"tokenizer_config.json", "{\"bos_token\": \"<s>\",\n \"add_bos_token\": tru"}});
  expect_load_error(dir, {dir + "/tokenizer_config.json:2:", "invalid JSON"});
  std::string dir2 = write_dir("tok-cfg2", {{"tokenizer.json", small_tokenizer().dump()},
                                            {"tokenizer_config.json", R"({"chat_template": 42})"}});
  expect_load_error(dir2, {"tokenizer_config.json", "'chat_template' must be a string or a list"});
  std::string dir3 =
      write_dir("tok-cfg3", {{"tokenizer.json", small_tokenizer().dump()},
                             {"tokenizer_config.json", R"({"add_bos_token": "yes"})"}});
  expect_load_error(dir3, {"tokenizer_config.json", "'add_bos_token' must be a boolean"});
}

TEST(TokenizerBadInput, MalformedGenerationConfig) {
  std::string dir =
      write_dir("tok-gen", {{"tokenizer.json", small_tokenizer().dump()},
                            {"generation_config.json", R"({"eos_token_id": "two"})"}});
  expect_load_error(dir, {"generation_config.json", "eos_token_id"});
}

TEST(TokenizerBadInput, GarbageAndTruncatedSentencePieceModel) {
  std::string dir =
      write_dir("tok-sp", {{"tokenizer.model", std::string("\x0a\xff\x01garbage", 10)}});
  expect_load_error(dir, {dir + "/tokenizer.model", "not a valid SentencePiece model"});
  std::string good =
      test::read_file(test::testdata_dir() + "/tokenizer/models/sp_bpe/tokenizer.model");
  std::string dir2 = write_dir("tok-sp2", {{"tokenizer.model", good.substr(0, good.size() / 3)}});
  expect_load_error(dir2, {dir2 + "/tokenizer.model", "not a valid SentencePiece model"});
}

TEST(TokenizerBadInput, InvalidUtf8Text) {
  auto tok = load_tokenizer(write_dir("tok-utf8", {{"tokenizer.json", small_tokenizer().dump()}}));
  try {
    tok->encode("ab\xC3(");
    ADD_FAILURE() << "invalid UTF-8 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid UTF-8 at byte 2"), std::string::npos) << e.what();
  }
}

// ---- Hostile tokenizer files (tokenizers refuses them: so does loratune) ----

TEST(TokenizerBadInput, DuplicateKeyNulAndTrailingGarbageRefused) {
  std::string text = small_tokenizer().dump();
  // A second "model" (serde: "duplicate field `model`"); nlohmann kept the last.
  std::string dup = text.substr(0, text.size() - 1) + R"(,"model":{"type":"BPE"}})";
  expect_load_error(write_dir("tok-dupkey", {{"tokenizer.json", dup}}),
                    {"tokenizer.json", "duplicate key \"model\""});
  expect_load_error(write_dir("tok-nul", {{"tokenizer.json", text + std::string("\0garbage", 8)}}),
                    {"tokenizer.json:1:", "invalid JSON (a NUL byte)"});
  std::string cfg_dir = write_dir(
      "tok-cfgdup", {{"tokenizer.json", text},
                     {"tokenizer_config.json", R"({"bos_token": "<s>", "bos_token": "a"})"}});
  expect_load_error(cfg_dir, {"tokenizer_config.json", "duplicate key \"bos_token\""});
  std::string gen_dir = write_dir(
      "tok-gennul",
      {{"tokenizer.json", text},
       {"generation_config.json", std::string(R"({"eos_token_id": 3})") + std::string("\0x", 2)}});
  expect_load_error(gen_dir, {"generation_config.json:1:", "NUL byte"});
}

// Sequence components nested 20000 deep once overflowed the stack; tokenizers
// (serde_json) stops at 128 levels of JSON, and 62 nested Sequences (126
// levels) still load there and here.
TEST(TokenizerBadInput, DeeplyNestedComponentsRefused) {
  auto nested = [](const std::string& type, const char* list, const std::string& leaf, int n) {
    std::string open, close;
    for (int i = 0; i < n; ++i) {
      open += R"({"type":")" + type + R"(",")" + list + R"(":[)";
      close += "]}";
    }
    return open + leaf + close;
  };
  auto with = [&](const char* key, const std::string& value) {
    Json j = small_tokenizer();
    j[key] = "@@";
    std::string s = j.dump();
    return s.replace(s.find("\"@@\""), 4, value);
  };
  struct Kind {
    const char* key;
    std::string type;
    const char* list;
    std::string leaf;
  };
  for (const Kind& k :
       {Kind{"normalizer", "Sequence", "normalizers", R"({"type":"Lowercase"})"},
        Kind{"pre_tokenizer", "Sequence", "pretokenizers", R"({"type":"Digits"})"},
        Kind{"decoder", "Sequence", "decoders", R"({"type":"Fuse"})"},
        Kind{"post_processor", "Sequence", "processors", R"({"type":"ByteLevel"})"}}) {
    SCOPED_TRACE(k.key);
    expect_load_error(write_dir("tok-deep", {{"tokenizer.json",
                                              with(k.key, nested(k.type, k.list, k.leaf, 20000))}}),
                      {"tokenizer.json", "JSON nested deeper than 127 levels"});
    EXPECT_NO_THROW(load_tokenizer(write_dir(
        "tok-deep-ok", {{"tokenizer.json", with(k.key, nested(k.type, k.list, k.leaf, 62))}})));
  }
}

// Wrong-typed fields once escaped as "internal error: [json.exception...]"
// (exit 2); each is now a corrupt-file error naming the key.
TEST(TokenizerBadInput, WrongTypedFieldsNameTheKey) {
  struct Case {
    std::function<void(Json&)> edit;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {[](Json& j) { j["model"]["dropout"] = "abc"; }, {"model", "'dropout' must be a number"}},
      {[](Json& j) { j["model"]["type"] = 5; }, {"model", "'type' must be a string"}},
      {[](Json& j) { j["model"]["unk_token"] = 5; }, {"model", "'unk_token' must be a string"}},
      {[](Json& j) { j["model"]["end_of_word_suffix"] = 5; },
       {"model", "'end_of_word_suffix' must be a string"}},
      {[](Json& j) { j["post_processor"]["single"][1]["Sequence"] = 5; },
       {"post_processor", "single[1]", "'Sequence' must be an object with a string 'id'"}},
      {[](Json& j) { j["post_processor"]["single"][1]["Sequence"]["id"] = 0; },
       {"post_processor", "single[1]", "'Sequence' must be an object with a string 'id'"}},
      {[](Json& j) { j["post_processor"]["single"][0]["SpecialToken"]["id"] = Json::array(); },
       {"post_processor", "single[0]", "'SpecialToken' must be an object with a string 'id'"}},
      {[](Json& j) { j["post_processor"]["single"][0] = "x"; },
       {"post_processor", "single[0]", "must be {\"Sequence\""}},
      {[](Json& j) { j["post_processor"]["special_tokens"]["<s>"]["ids"] = {"3"}; },
       {"post_processor", "special_tokens['<s>'].ids[0] must be a token id"}},
      {[](Json& j) { j["post_processor"]["special_tokens"] = 5; },
       {"post_processor", "'special_tokens' must be an object"}},
      {[](Json& j) {
         j["post_processor"] = {
             {"type", "BertProcessing"}, {"cls", {"<s>", "3"}}, {"sep", {"<s>", 3}}};
       },
       {"post_processor", "'cls'[1] must be a token id"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    Json j = small_tokenizer();
    cases[i].edit(j);
    try {
      load_tokenizer(write_dir("tok-type", {{"tokenizer.json", j.dump()}}));
      ADD_FAILURE() << "accepted: " << j.dump();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kCorrupt) << e.what();
      const std::string msg = e.what();
      EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
      for (const auto& p : cases[i].parts)
        EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
    }
  }
}

// Ids beyond int32 were truncated (2^32 + 7 became 7); tokenizers refuses
// what is not a u32, loratune what does not fit its int32 ids.
TEST(TokenizerBadInput, HugeIdsRefusedNotTruncated) {
  Json j = small_tokenizer();
  j["added_tokens"][0]["id"] = (uint64_t{1} << 32) + 3;
  expect_load_error(write_dir("tok-added-huge", {{"tokenizer.json", j.dump()}}),
                    {"tokenizer.json", "added_tokens[0]: 'id' must be a token id", "4294967299"});
  Json k = small_tokenizer();
  k["model"]["vocab"]["b"] = (uint64_t{1} << 32) + 1;
  expect_load_error(write_dir("tok-vocab-huge", {{"tokenizer.json", k.dump()}}),
                    {"tokenizer.json", "vocab['b']: id 4294967297 is out of range"});
  k["model"]["vocab"]["b"] = -1;
  expect_load_error(write_dir("tok-vocab-neg", {{"tokenizer.json", k.dump()}}),
                    {"tokenizer.json", "vocab['b']: id -1 is out of range"});
  std::string dir = write_dir("tok-gen-huge",
                              {{"tokenizer.json", small_tokenizer().dump()},
                               {"generation_config.json", R"({"eos_token_id": [3, 4294967298]})"}});
  expect_load_error(dir, {"generation_config.json", "'eos_token_id' 4294967298 is out of range"});
  std::string dir2 = write_dir("tok-ct-utf8", {{"tokenizer.json", small_tokenizer().dump()},
                                               {"chat_template.jinja", "{{ 'a' }}\xff\xfe"}});
  expect_load_error(dir2, {dir2 + "/chat_template.jinja", "invalid UTF-8 at byte 9"});
}

// ---- Results as tokenizers computes them --------------------------------

Json plain_bpe(Json vocab, Json merges) {
  Json j = small_tokenizer();
  j["pre_tokenizer"] = nullptr;
  j["decoder"] = nullptr;
  j["post_processor"] = nullptr;
  j["added_tokens"] = Json::array();
  j["model"]["vocab"] = std::move(vocab);
  j["model"]["merges"] = std::move(merges);
  return j;
}

// Rust's char::to_lowercase: U+0130 becomes "i" + U+0307 (utf8proc's simple
// mapping gave "i" alone).
TEST(TokenizerHfResults, LowercaseDottedCapitalI) {
  Json j = plain_bpe({{"i", 0}, {"\xCC\x87", 1}, {"s", 2}, {"is", 3}}, Json::array());
  j["normalizer"] = {{"type", "Lowercase"}};
  auto tok = load_tokenizer(write_dir("tok-lower", {{"tokenizer.json", j.dump()}}));
  auto toks = tok->encode_with_offsets("\xC4\xB0s", {false, false});
  ASSERT_EQ(toks.size(), 3u);
  EXPECT_EQ(toks[0].id, 0);
  EXPECT_EQ(toks[1].id, 1);
  EXPECT_EQ(toks[2].id, 2);
  EXPECT_EQ(toks[1].begin, 0u);  // both pieces map to the 2 bytes of U+0130
  EXPECT_EQ(toks[1].end, 2u);
}

// A Split pattern that matches the empty string (tokenizers escapes a String
// pattern into a regex) splits between characters; the expected ids are
// tokenizers 0.22's.
TEST(TokenizerHfResults, SplitOnEmptyMatches) {
  struct Case {
    Json pattern;
    const char* behavior;
    std::vector<std::vector<int32_t>> ids;  // for "aa", "aab", "abaa"
  };
  const std::vector<Case> cases = {
      {{{"String", ""}}, "Isolated", {{0, 0}, {0, 0, 1}, {0, 1, 0, 0}}},
      {{{"String", ""}}, "Contiguous", {{0, 0}, {0, 0, 1}, {0, 1, 0, 0}}},
      {{{"Regex", "b*"}}, "Isolated", {{0, 0}, {0, 0, 1}, {0, 1, 0, 0}}},
      {{{"Regex", "b*"}}, "Removed", {{0, 0}, {0, 0}, {0, 0, 0}}},
      {{{"Regex", "b*"}}, "MergedWithPrevious", {{0, 0}, {0, 3}, {3, 0, 0}}},
      {{{"Regex", "b*"}}, "MergedWithNext", {{0, 0}, {0, 0, 1}, {0, 1, 0, 0}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.pattern.dump() + " " + c.behavior);
    Json j = plain_bpe({{"a", 0}, {"b", 1}, {"aa", 2}, {"ab", 3}}, {"a a", "a b"});
    j["pre_tokenizer"] = {
        {"type", "Split"}, {"pattern", c.pattern}, {"behavior", c.behavior}, {"invert", false}};
    auto tok = load_tokenizer(write_dir("tok-split-empty", {{"tokenizer.json", j.dump()}}));
    EXPECT_EQ(tok->encode("aa", {false, false}), c.ids[0]);
    EXPECT_EQ(tok->encode("aab", {false, false}), c.ids[1]);
    EXPECT_EQ(tok->encode("abaa", {false, false}), c.ids[2]);
  }
}

// An added token whose content repeats an earlier one keeps the first id and
// takes the later entry's options; the later id is no added token.
TEST(TokenizerHfResults, DuplicateAddedContentKeepsFirstId) {
  Json j = small_tokenizer();
  Json again = j["added_tokens"][0];
  again["id"] = 7;
  again["rstrip"] = true;
  j["added_tokens"].push_back(again);
  auto tok = load_tokenizer(write_dir("tok-added-dup", {{"tokenizer.json", j.dump()}}));
  EXPECT_EQ(tok->token_to_id("<s>"), std::optional<int32_t>(3));
  EXPECT_EQ(tok->encode("a<s>  b", {false, false}), (std::vector<int32_t>{0, 3, 1}));
  std::string s;
  EXPECT_FALSE(tok->id_to_token(7, &s));
}

}  // namespace
}  // namespace loratune::tokenizer
