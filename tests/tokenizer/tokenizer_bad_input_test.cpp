// Missing, truncated or malformed tokenizer files and unsupported components
// each give one loratune::Error that names the file and the problem.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <initializer_list>

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

}  // namespace
}  // namespace loratune::tokenizer
