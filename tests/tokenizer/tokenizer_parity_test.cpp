// Token ids and decodes of loratune's tokenizers equal transformers' (and
// the sentencepiece library's) for every line of the generated corpus, in
// every special-token mode. References: tests/python/ref_tokenize.py,
// written by the tokenizer_refs fixture (tests/python/tokenizer_fixture.py).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>

#include "common/test_env.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::tokenizer {
namespace {

using Json = nlohmann::json;

std::string dump_ids(const std::vector<int32_t>& ids) {
  return Json(ids).dump();
}

void check_parity(const std::string& name) {
  const std::string root = test::testdata_dir() + "/tokenizer";
  auto t0 = std::chrono::steady_clock::now();
  auto tok = load_tokenizer(root + "/models/" + name);
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Json ref = Json::parse(test::read_file(root + "/refs/" + name + ".json"));
  const auto lines = ref["lines"].get<std::vector<std::string>>();
  ASSERT_GT(lines.size(), 2000u);

  std::printf("[%s] %s, loaded in %.2fs\n", name.c_str(), tok->description().c_str(), load_s);
  for (const auto& [mode, expected] : ref["modes"].items()) {
    EncodeOptions opt;
    opt.add_special_tokens = mode.find("add1") != std::string::npos;
    opt.split_special_tokens = mode.find("split1") != std::string::npos;
    size_t same = 0, shown = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      auto want = expected[i].get<std::vector<int32_t>>();
      auto got = tok->encode(lines[i], opt);
      if (got == want) {
        ++same;
      } else if (shown++ < 5) {
        ADD_FAILURE() << name << " " << mode << " line " << i << " " << Json(lines[i]).dump()
                      << "\n  want " << dump_ids(want) << "\n  got  " << dump_ids(got);
      }
    }
    std::printf("[%s] encode %s: identical %zu/%zu\n", name.c_str(), mode.c_str(), same,
                lines.size());
    EXPECT_EQ(same, lines.size()) << name << " " << mode;
  }

  const auto& with_specials = ref["modes"]["add1_split0"];
  for (const char* key : {"decode", "decode_skip"}) {
    bool skip = std::string(key) == "decode_skip";
    size_t same = 0, shown = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      auto want = ref[key][i].get<std::string>();
      auto got = tok->decode(with_specials[i].get<std::vector<int32_t>>(), skip);
      if (got == want) {
        ++same;
      } else if (shown++ < 5) {
        ADD_FAILURE() << name << " " << key << " line " << i << "\n  want " << Json(want).dump()
                      << "\n  got  " << Json(got).dump();
      }
    }
    std::printf("[%s] %s: identical %zu/%zu\n", name.c_str(), key, same, lines.size());
    EXPECT_EQ(same, lines.size()) << name << " " << key;
  }

  const Json& meta = ref["meta"];
  EXPECT_EQ(tok->vocab_size(), meta["vocab_size"].get<int32_t>());
  EXPECT_EQ(tok->special_tokens().bos_id, meta["bos_id"].get<int32_t>());
  EXPECT_EQ(tok->special_tokens().eos_id, meta["eos_id"].get<int32_t>());
  EXPECT_EQ(tok->special_tokens().pad_id, meta["pad_id"].get<int32_t>());
  EXPECT_EQ(tok->special_tokens().unk_id, meta["unk_id"].get<int32_t>());
}

TEST(TokenizerParity, Llama3ByteLevelBpe) {
  check_parity("llama3");
}
TEST(TokenizerParity, Llama31ByteLevelBpeWithBos) {
  check_parity("llama3_1");
}
TEST(TokenizerParity, Qwen3ByteLevelBpeNfc) {
  check_parity("qwen3");
}
TEST(TokenizerParity, Llama2SentencePieceStyleBpe) {
  check_parity("llama2");
}
TEST(TokenizerParity, Llama2NonLegacyWithEos) {
  check_parity("llama2_nolegacy");
}
TEST(TokenizerParity, Gemma3SentencePieceStyleBpe) {
  check_parity("gemma3");
}
TEST(TokenizerParity, SentencePieceModelFile) {
  check_parity("sp_bpe");
}

}  // namespace
}  // namespace loratune::tokenizer
