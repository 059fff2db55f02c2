// `loratune tokenize` prints what the library computes: ids, tokens and
// offsets for --text and --file (JSON strings and {"text": ...} lines), in
// each special-token mode; a malformed input line is one clear error.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sstream>

#include "common/test_env.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::tokenizer {
namespace {

using Json = nlohmann::json;

const std::vector<std::string> kInputs = {"Hello world", "<|begin_of_text|>a<|eot_id|> b",
                                          "  élève\n\t12345 🤖", ""};

std::vector<Json> output_lines(const std::string& out) {
  std::vector<Json> rows;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(Json::parse(line));
  return rows;
}

void expect_matches_library(const Tokenizer& tok, const std::vector<Json>& rows,
                            const EncodeOptions& opt) {
  ASSERT_EQ(rows.size(), kInputs.size());
  for (size_t i = 0; i < kInputs.size(); ++i) {
    auto toks = tok.encode_with_offsets(kInputs[i], opt);
    ASSERT_EQ(rows[i]["ids"].size(), toks.size()) << kInputs[i];
    for (size_t k = 0; k < toks.size(); ++k) {
      std::string name;
      ASSERT_TRUE(tok.id_to_token(toks[k].id, &name));
      EXPECT_EQ(rows[i]["ids"][k].get<int32_t>(), toks[k].id);
      EXPECT_EQ(rows[i]["tokens"][k].get<std::string>(), name);
      EXPECT_EQ(rows[i]["offsets"][k], Json({toks[k].begin, toks[k].end}));
    }
  }
}

TEST(TokenizerCli, JsonOutputEqualsLibrary) {
  const std::string model = test::testdata_dir() + "/tokenizer/models/llama3_1";
  auto tok = load_tokenizer(model);
  std::string dir = test::make_temp_dir("tok-cli");
  std::string file = dir + "/in.jsonl";
  std::string content;
  for (size_t i = 0; i < kInputs.size(); ++i)
    content += (i % 2 ? Json{{"text", kInputs[i]}, {"id", i}} : Json(kInputs[i])).dump() + "\n\n";
  test::write_file(file, content);
  const std::string base = test::quote(test::loratune_bin()) + " tokenize --json --model " +
                           test::quote(model) + " --file " + test::quote(file);
  struct Mode {
    const char* flags;
    EncodeOptions opt;
  };
  for (const Mode& m : {Mode{"", {true, false}}, Mode{" --no-special", {false, false}},
                        Mode{" --split-special-tokens", {true, true}},
                        Mode{" --no-special --split-special-tokens", {false, true}}}) {
    auto r = test::run(base + m.flags);
    ASSERT_EQ(r.status, 0) << r.out;
    expect_matches_library(*tok, output_lines(r.out), m.opt);
  }
  auto one = test::run(test::quote(test::loratune_bin()) + " tokenize --json --model " +
                       test::quote(model) + " --text " + test::quote(kInputs[1]));
  ASSERT_EQ(one.status, 0) << one.out;
  auto rows = output_lines(one.out);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0]["ids"].get<std::vector<int32_t>>(), tok->encode(kInputs[1]));
}

TEST(TokenizerCli, MalformedInputLineIsOneClearError) {
  const std::string model = test::testdata_dir() + "/tokenizer/models/llama3";
  std::string dir = test::make_temp_dir("tok-cli-bad");
  std::string file = dir + "/in.jsonl";
  test::write_file(file, "\"ok\"\n{\"txt\": 1}\n");
  auto r = test::run(test::quote(test::loratune_bin()) + " tokenize --model " + test::quote(model) +
                     " --file " + test::quote(file));
  EXPECT_EQ(r.status, 3) << r.out;  // kData: an input record
  EXPECT_NE(r.out.find(file + ":2: expected a JSON string"), std::string::npos) << r.out;
  auto missing = test::run(test::quote(test::loratune_bin()) + " tokenize --model " +
                           test::quote(dir) + " --text x");
  EXPECT_EQ(missing.status, 4) << missing.out;  // kIo: a missing file
  EXPECT_NE(missing.out.find("no tokenizer.json or tokenizer.model"), std::string::npos)
      << missing.out;
}

}  // namespace
}  // namespace loratune::tokenizer
