// `loratune import` on corrupt and unsupported GGUF files: each case breaks
// one thing in a valid tiny llama GGUF (tiny_gguf.h) and expects exactly one
// line "loratune: error: <file>: ..." naming the fault, the kind's exit code,
// no crash, and no --out directory left behind.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>

#include "common/test_env.h"
#include "gguf/tiny_gguf.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;
using loratune::test::GgufBytes;
using loratune::test::ModelSpec;

namespace {

struct Case {
  std::string name;
  std::function<std::string()> bytes;
  int exit_code;
  std::string message;  // must appear in the error line
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

std::string with(const std::function<void(ModelSpec&)>& edit) {
  ModelSpec m = loratune::test::tiny_llama();
  edit(m);
  return loratune::test::build(m);
}

std::string patched(const std::function<void(std::string&)>& edit) {
  std::string b = loratune::test::build(loratune::test::tiny_llama());
  edit(b);
  return b;
}

// Turns the tiny model's vocabulary into a SentencePiece one (tokenizer.ggml.model
// "llama", no merges) with these scores (none when empty).
void sentencepiece(ModelSpec& m, const std::vector<float>& scores) {
  m.set("tokenizer.ggml.model", loratune::test::kv_str("tokenizer.ggml.model", "llama"));
  m.erase("tokenizer.ggml.merges");
  if (!scores.empty()) {
    m.set("tokenizer.ggml.scores",
          GgufBytes().kv_f32_array("tokenizer.ggml.scores", scores).bytes());
  }
}

std::vector<Case> cases() {
  using loratune::test::kv_str;
  using loratune::test::kv_u32;
  return {
      {"empty_file", [] { return std::string(); }, 5, "file too small for a GGUF header (0 bytes)"},
      {"truncated_data", [] { return with([](ModelSpec& m) { m.cut = 1000; }); }, 5,
       "runs past the data section"},
      {"truncated_header",
       [] {
         return patched([](std::string& b) { b.resize(b.find("blk.0.ffn_down.weight") + 10); });
       },
       5, "tensor #10 name length 21 at byte 1304 runs past the end of the file (10 bytes left)"},
      {"bad_magic", [] { return patched([](std::string& b) { b[3] = 'X'; }); }, 5,
       "not a GGUF file (magic GGUX, expected GGUF)"},
      {"version_1", [] { return with([](ModelSpec& m) { m.version = 1; }); }, 6,
       "GGUF version 1 is not supported"},
      {"version_unknown", [] { return with([](ModelSpec& m) { m.version = 9; }); }, 5,
       "GGUF version 9 is unknown"},
      {"big_endian", [] { return with([](ModelSpec& m) { m.version = 0x03000000; }); }, 6,
       "big-endian"},
      {"absurd_tensor_count",
       [] { return with([](ModelSpec& m) { m.n_tensors = int64_t{1} << 60; }); }, 5,
       "tensor count 1152921504606846976 cannot fit"},
      {"absurd_kv_count", [] { return with([](ModelSpec& m) { m.n_kv = int64_t{1} << 40; }); }, 5,
       "metadata count 1099511627776 cannot fit"},
      {"offset_out_of_range",
       [] {
         return with(
             [](ModelSpec& m) { m.tensor("blk.0.ffn_up.weight")->offset = int64_t{1} << 40; });
       },
       5, "tensor 'blk.0.ffn_up.weight': data [1099511627776"},
      {"overlapping_offsets",
       [] {
         return with([](ModelSpec& m) { m.tensor("blk.0.attn_k.weight")->offset = 4096 + 128; });
       },
       5, "overlaps tensor"},
      {"misaligned_offset",
       [] { return with([](ModelSpec& m) { m.tensor("output_norm.weight")->offset = 516; }); }, 5,
       "tensor 'output_norm.weight': data offset 516 is not a multiple of the alignment 32"},
      {"unknown_tensor_type",
       [] { return with([](ModelSpec& m) { m.tensor("blk.0.attn_v.weight")->type = 99; }); }, 5,
       "tensor 'blk.0.attn_v.weight': unknown ggml tensor type 99"},
      {"string_length_past_eof",
       [] {
         return with([](ModelSpec& m) {
           m.set("general.name",
                 GgufBytes().str("general.name").u32(8).u64(uint64_t{1} << 40).bytes());
         });
       },
       5, "metadata key 'general.name' length 1099511627776"},
      {"duplicate_key",
       [] {
         return with(
             [](ModelSpec& m) { m.kvs.emplace_back("dup", kv_u32("llama.block_count", 1)); });
       },
       5, "duplicate metadata key 'llama.block_count'"},
      {"duplicate_tensor",
       [] {
         return with([](ModelSpec& m) {
           m.tensors.push_back(m.tensors[1]);
           m.tensors.back().offset = -1;
         });
       },
       5, "duplicate tensor name 'output_norm.weight'"},
      {"missing_required_key",
       [] { return with([](ModelSpec& m) { m.erase("llama.embedding_length"); }); }, 5,
       "required metadata key 'llama.embedding_length' is missing"},
      {"missing_tensor",
       [] {
         return with([](ModelSpec& m) {
           m.tensors.erase(m.tensors.begin() + 3);  // blk.0.ffn_norm.weight
         });
       },
       5, "lacks the tensor for model.layers.0.post_attention_layernorm.weight"},
      {"shape_disagrees_with_config",
       [] { return with([](ModelSpec& m) {
              m.tensor("blk.0.attn_k.weight")->ne = {32, 8};
            }); }, 5,
       "tensor 'blk.0.attn_k.weight' has shape [8, 32], the config says [16, 32]"},
      {"row_not_block_multiple",
       [] {
         return with([](ModelSpec& m) {
           auto* t = m.tensor("blk.0.attn_norm.weight");
           t->ne = {40};
           t->type = 8;  // Q8_0: blocks of 32
         });
       },
       5, "row length 40 is not a multiple of the Q8_0 block size 32"},
      {"too_many_dims",
       [] {
         return with([](ModelSpec& m) { m.tensor("output_norm.weight")->ne = {2, 2, 2, 2, 2}; });
       },
       5, "tensor 'output_norm.weight': n_dims 5 is not in 1..4"},
      {"zero_dim",
       [] { return with([](ModelSpec& m) {
              m.tensor("output_norm.weight")->ne = {32, 0};
            }); }, 5,
       "dimension 1 is 0 (must be > 0)"},
      {"dims_overflow",
       [] {
         return with([](ModelSpec& m) {
           m.tensor("output_norm.weight")->ne = {uint64_t{1} << 40, uint64_t{1} << 40};
         });
       },
       5, "the element count overflows"},
      {"alignment_not_power_of_two",
       [] {
         return with(
             [](ModelSpec& m) { m.set("general.alignment", kv_u32("general.alignment", 48)); });
       },
       5, "'general.alignment' is 48, expected a power of two"},
      {"unknown_value_type",
       [] {
         return with(
             [](ModelSpec& m) { m.set("x.y", GgufBytes().str("x.y").u32(13).u32(0).bytes()); });
       },
       5, "metadata key 'x.y': unknown value type 13"},
      {"absurd_array_count",
       [] {
         return with([](ModelSpec& m) {
           m.set("x.arr", GgufBytes().str("x.arr").u32(9).u32(6).u64(uint64_t{1} << 50).bytes());
         });
       },
       5, "array count 1125899906842624 of float32 cannot fit"},
      {"array_elements_limit",
       [] {
         return with([](ModelSpec& m) {
           const uint64_t n = (uint64_t{1} << 22) + 1;  // one past the limit, each a uint8
           std::string kv = GgufBytes().str("x.bytes").u32(9).u32(0).u64(n).bytes();
           kv.append(n, '\x01');
           m.set("x.bytes", kv);
         });
       },
       7,
       "metadata key 'x.bytes': array count 4194305 takes the metadata past the limit of 4194304"},
      {"block_count_beyond_tensors",
       [] {
         return with([](ModelSpec& m) {
           m.set("llama.block_count", kv_u32("llama.block_count", 1 << 30));
         });
       },
       5, "'llama.block_count' is 1073741824, but the file holds only 11 tensors"},
      {"key_of_wrong_type",
       [] {
         return with(
             [](ModelSpec& m) { m.set("llama.block_count", kv_str("llama.block_count", "one")); });
       },
       5, "metadata key 'llama.block_count' is string, expected an integer"},
      {"unknown_architecture",
       [] {
         return with([](ModelSpec& m) {
           m.set("general.architecture", kv_str("general.architecture", "gpt2"));
         });
       },
       6,
       "architecture 'gpt2' is not supported (supported: llama, qwen2, qwen3, gemma2, gemma3, "
       "phi3)"},
      {"gemma2_without_sliding_window",
       [] {
         ModelSpec m = loratune::test::tiny_gemma2();
         m.erase("gemma2.attention.sliding_window");
         return loratune::test::build(m);
       },
       5, "metadata key 'gemma2.attention.sliding_window' is missing"},
      {"gemma2_missing_sandwich_norm",
       [] {
         ModelSpec m = loratune::test::tiny_gemma2();
         m.tensors.pop_back();  // blk.0.post_ffw_norm.weight
         return loratune::test::build(m);
       },
       5, "gemma2 model lacks the tensor for model.layers.0.post_feedforward_layernorm.weight"},
      {"phi3_qkv_rows",
       [] {
         ModelSpec m = loratune::test::tiny_phi3();
         m.tensor("blk.0.attn_qkv.weight")->ne = {32, 50};
         return loratune::test::build(m);
       },
       5,
       "tensor 'blk.0.attn_qkv.weight' rows are not (head_count + 2 head_count_kv) 4 x an even "
       "head_dim"},
      {"phi3_rope_factors_unpaired",
       [] {
         ModelSpec m = loratune::test::tiny_phi3();
         m.tensors.push_back({"rope_factors_long.weight", {8}});
         return loratune::test::build(m);
       },
       5, "rope_factors_long.weight and rope_factors_short.weight come in pairs"},
      {"phi3_rope_factors_length",
       [] {
         ModelSpec m = loratune::test::tiny_phi3();
         m.tensors.push_back({"rope_factors_long.weight", {8}, 0, -1, -1, 2.0f});
         m.tensors.push_back({"rope_factors_short.weight", {6}, 0, -1, -1, 1.0f});
         return loratune::test::build(m);
       },
       5, "tensor 'rope_factors_short.weight' must hold 8 values"},
      {"phi3_rope_factor_not_positive",
       [] {
         ModelSpec m = loratune::test::tiny_phi3();
         m.tensors.push_back({"rope_factors_long.weight", {8}, 0, -1, -1, 2.0f});
         m.tensors.push_back({"rope_factors_short.weight", {8}});  // 0.02 sin(.): some < 0
         return loratune::test::build(m);
       },
       5, "tensor 'rope_factors_short.weight' value"},
      {"unsupported_quant_type",
       [] {
         return with([](ModelSpec& m) {
           m.tensor("blk.0.ffn_up.weight")->type = 20;  // IQ4_NL: known, not dequantizable
         });
       },
       6, "tensor 'blk.0.ffn_up.weight': ggml type IQ4_NL cannot be dequantized"},
      {"unsupported_tokenizer",
       [] {
         return with([](ModelSpec& m) {
           m.set("tokenizer.ggml.model", kv_str("tokenizer.ggml.model", "bert"));
         });
       },
       6, "tokenizer.ggml.model 'bert' is not supported by import (supported: gpt2, llama)"},
      {"spm_without_scores_or_merges",
       [] { return with([](ModelSpec& m) { sentencepiece(m, {}); }); }, 5,
       "a llama tokenizer without tokenizer.ggml.merges needs tokenizer.ggml.scores"},
      {"spm_scores_count",
       [] { return with([](ModelSpec& m) {
              sentencepiece(m, {0.f, -1.f, -2.f});
            }); }, 5,
       "tokenizer.ggml.scores has 3 entries for 4 tokens"},
      {"spm_score_nan",
       [] { return with([](ModelSpec& m) {
              sentencepiece(m, {0.f, -1.f, std::nanf(""), 0.f});
            }); },
       5, "tokenizer.ggml.scores[2] is NaN"},
      {"spm_token_not_utf8",
       [] {
         return with([](ModelSpec& m) {
           sentencepiece(m, {0.f, -1.f, -2.f, 0.f});
           m.set("tokenizer.ggml.tokens",
                 GgufBytes()
                     .kv_str_array("tokenizer.ggml.tokens", {"a", "\xc3(", "ab", "<s>"})
                     .bytes());
         });
       },
       5, "tokenizer.ggml.tokens[1] '\\xC3(' is not valid UTF-8"},
      {"token_id_outside_vocab",
       [] {
         return with([](ModelSpec& m) {
           m.set("tokenizer.ggml.eos_token_id", kv_u32("tokenizer.ggml.eos_token_id", 4));
         });
       },
       5, "'tokenizer.ggml.eos_token_id' is 4, outside the vocabulary of 4"},
      // Values config.json / tokenizer.json cannot hold (NaN would be written
      // as null) or no loader accepts: refused by import, not by a later load.
      {"epsilon_nan",
       [] {
         return with([](ModelSpec& m) {
           m.set("llama.attention.layer_norm_rms_epsilon",
                 loratune::test::kv_f32("llama.attention.layer_norm_rms_epsilon", std::nanf("")));
         });
       },
       5, "metadata key 'llama.attention.layer_norm_rms_epsilon' is nan"},
      {"rope_theta_negative",
       [] {
         return with([](ModelSpec& m) {
           m.set("llama.rope.freq_base", loratune::test::kv_f32("llama.rope.freq_base", -5.0f));
         });
       },
       5, "metadata key 'llama.rope.freq_base' is -5.000000, expected a finite number > 0"},
      {"rope_theta_inf",
       [] {
         return with([](ModelSpec& m) {
           m.set("llama.rope.freq_base", loratune::test::kv_f32("llama.rope.freq_base", INFINITY));
         });
       },
       5, "metadata key 'llama.rope.freq_base' is inf"},
      {"token_empty",
       [] {
         return with([](ModelSpec& m) {
           m.set("tokenizer.ggml.tokens",
                 GgufBytes().kv_str_array("tokenizer.ggml.tokens", {"a", "b", "", "<s>"}).bytes());
         });
       },
       5, "tokenizer.ggml.tokens[2] is empty"},
      {"token_with_nul",
       [] {
         return with([](ModelSpec& m) {
           m.set(
               "tokenizer.ggml.tokens",
               GgufBytes()
                   .kv_str_array("tokenizer.ggml.tokens", {"a", "b", std::string("a\0b", 3), "<s>"})
                   .bytes());
         });
       },
       5, "tokenizer.ggml.tokens[2] 'a\\x00b' holds a NUL byte"},
      {"merge_of_unknown_tokens",
       [] {
         return with([](ModelSpec& m) {
           m.set("tokenizer.ggml.merges",
                 GgufBytes().kv_str_array("tokenizer.ggml.merges", {"a b", "q z"}).bytes());
         });
       },
       5, "tokenizer.ggml.merges[1] 'q z': 'q' is not in tokenizer.ggml.tokens"},
      {"merge_result_not_a_token",
       [] {
         return with([](ModelSpec& m) {
           m.set(
               "tokenizer.ggml.tokens",
               GgufBytes().kv_str_array("tokenizer.ggml.tokens", {"a", "b", "ba", "<s>"}).bytes());
         });
       },
       5, "tokenizer.ggml.merges[0] 'a b': 'ab' is not in tokenizer.ggml.tokens"},
      {"duplicate_tokens",
       [] {
         return with([](ModelSpec& m) {
           m.set(
               "tokenizer.ggml.tokens",
               GgufBytes().kv_str_array("tokenizer.ggml.tokens", {"a", "a", "ab", "<s>"}).bytes());
         });
       },
       5, "tokenizer.ggml.merges[0] 'a b': 'b' is not in tokenizer.ggml.tokens"},
      // Metadata is bounded by what it costs in memory, not only by the file:
      // 5M one-byte keys once took 1.5 GB.
      {"metadata_key_count_limit",
       [] {
         return with([](ModelSpec& m) {
           std::string many;
           for (int k = 0; k < 65537; ++k) many += kv_u32("k" + std::to_string(k), 0);
           m.set("x.many", many);
           m.n_kv = static_cast<int64_t>(m.kvs.size()) - 1 + 65537;
         });
       },
       7, "exceeds the limit of 65536 keys"},
      {"metadata_memory_limit",
       [] {
         return with([](ModelSpec& m) {
           // 3M empty strings: under the element limit, ~300 MB as Values.
           const uint64_t n = uint64_t{3} << 20;
           std::string kv = GgufBytes().str("x.strs").u32(9).u32(8).u64(n).bytes();
           kv.append(n * 8, '\0');
           m.set("x.strs", kv);
         });
       },
       7,
       "metadata key 'x.strs': array of 3145728 elements takes the parsed metadata past the "
       "limit of 256 MiB"},
  };
}

class GgufCorrupt : public ::testing::TestWithParam<Case> {};

TEST_P(GgufCorrupt, RefusedWithOneLine) {
  const Case& c = GetParam();
  const std::string dir = loratune::test::make_temp_dir("gguf_corrupt");
  const std::string path = dir + "/" + c.name + ".gguf";
  loratune::test::write_file(path, c.bytes());
  const std::string out = dir + "/out";
  const auto r =
      loratune::test::run(loratune::test::quote(loratune::test::loratune_bin()) + " import " +
                          loratune::test::quote(path) + " --out " + loratune::test::quote(out));
  std::printf("%s | exit %d | %s", c.name.c_str(), r.status, r.out.c_str());
  EXPECT_EQ(r.status, c.exit_code) << r.out;
  EXPECT_EQ(r.out.rfind("loratune: error: " + path + ": ", 0), 0u) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find(c.message), std::string::npos) << "'" << c.message << "' not in: " << r.out;
  EXPECT_FALSE(fs::exists(out));
}

INSTANTIATE_TEST_SUITE_P(Table, GgufCorrupt, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

// The other architectures' tiny files import into directories loratune runs:
// Gemma's norms come back as w (stored 1 + w), phi3's rope factors as longrope.
TEST(GgufImport, TinyGemma2AndPhi3Import) {
  const std::string dir = loratune::test::make_temp_dir("gguf_valid_arch");
  const std::string bin = loratune::test::quote(loratune::test::loratune_bin());
  ModelSpec phi3 = loratune::test::tiny_phi3();
  phi3.tensors.push_back({"rope_factors_long.weight", {8}, 0, -1, -1, 2.0f});
  phi3.tensors.push_back({"rope_factors_short.weight", {8}, 0, -1, -1, 1.0f});
  phi3.set("phi3.rope.scaling.original_context_length",
           loratune::test::kv_u32("phi3.rope.scaling.original_context_length", 16));
  for (const auto& [name, spec] :
       {std::make_pair(std::string("gemma2"), loratune::test::tiny_gemma2()),
        std::make_pair(std::string("phi3"), phi3)}) {
    SCOPED_TRACE(name);
    const std::string path = dir + "/" + name + ".gguf", out = dir + "/" + name;
    loratune::test::write_file(path, loratune::test::build(spec));
    auto r = loratune::test::run(bin + " import " + path + " --out " + out);
    ASSERT_EQ(r.status, 0) << r.out;
    const std::string config = loratune::test::read_file(out + "/config.json");
    r = loratune::test::run(bin + " logits --model " + out + " --ids \"1 2 3\" --out " + out +
                            ".logits.safetensors");
    EXPECT_EQ(r.status, 0) << r.out;
    if (name == "gemma2") {
      EXPECT_NE(config.find("\"Gemma2ForCausalLM\""), std::string::npos) << config;
      EXPECT_NE(config.find("\"sliding_attention\""), std::string::npos) << config;
      const auto ckpt = loratune::io::Checkpoint::open(out);
      // The file's norms are 0.02 sin(k + i): minus one, they sit near -1.
      const float w =
          ckpt.tensor("model.layers.0.post_feedforward_layernorm.weight")[0].item<float>();
      EXPECT_LT(w, -0.9f);
    } else {
      EXPECT_NE(config.find("\"longrope\""), std::string::npos) << config;
      EXPECT_NE(config.find("\"original_max_position_embeddings\": 16"), std::string::npos)
          << config;
    }
  }
}

TEST(GgufImport, TinyValidFileImports) {
  const std::string dir = loratune::test::make_temp_dir("gguf_valid");
  const std::string path = dir + "/tiny.gguf";
  loratune::test::write_file(path, loratune::test::build(loratune::test::tiny_llama()));
  const std::string bin = loratune::test::quote(loratune::test::loratune_bin());
  auto r = loratune::test::run(bin + " import " + path + " --out " + dir + "/hf");
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                        "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_TRUE(fs::exists(dir + "/hf/" + f)) << f;
  }
  // A second import into the same directory needs --overwrite.
  r = loratune::test::run(bin + " import " + path + " --out " + dir + "/hf");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("already exists"), std::string::npos) << r.out;
  r = loratune::test::run(bin + " import " + path + " --out " + dir +
                          "/hf --overwrite --dtype bfloat16");
  EXPECT_EQ(r.status, 0) << r.out;
  // The imported directory is a model loratune runs.
  r = loratune::test::run(bin + " logits --model " + dir + "/hf --ids \"1 2 3\" --out " + dir +
                          "/l.safetensors");
  EXPECT_EQ(r.status, 0) << r.out;
}

}  // namespace
