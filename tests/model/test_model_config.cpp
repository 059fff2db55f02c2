// config.json parsing: both transformers key styles, per-family defaults and
// rules, and errors that name the file, key and supported values.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "trainer/io/error.h"
#include "trainer/model/config.h"

namespace loratune::model {
namespace {

using nlohmann::json;

json base(const std::string& type) {
  return {{"model_type", type},       {"vocab_size", 1000},
          {"hidden_size", 64},        {"intermediate_size", 160},
          {"num_hidden_layers", 4},   {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"max_position_embeddings", 4096}};
}

std::string error_of(const json& j) {
  try {
    parse_config(j, "dir/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for " << j.dump();
  return "";
}

TEST(Config, LlamaTransformers4Keys) {
  json j = base("llama");
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  j["torch_dtype"] = "bfloat16";
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = json::array({128001, 128008});
  ModelConfig c = parse_config(j, "x");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008}));
  EXPECT_EQ(c.bos_token_id, 1);  // LlamaConfig default
  EXPECT_FALSE(c.q_bias || c.o_bias || c.mlp_bias || c.qk_norm);
  EXPECT_EQ(c.layer_window, std::vector<int64_t>(4, 0));
}

TEST(Config, LlamaTransformers5Keys) {
  json j = base("llama");
  j["rope_parameters"] = {{"rope_type", "llama3"},
                          {"rope_theta", 500000.0},
                          {"factor", 32.0},
                          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}};
  j["dtype"] = "float32";
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  j.erase("num_key_value_heads");
  ModelConfig c = parse_config(j, "x");
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);
  // Absent: falls back to max_position_embeddings, as transformers.
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_EQ(c.dtype, "float32");
  EXPECT_TRUE(c.q_bias && c.k_bias && c.v_bias && c.o_bias && c.mlp_bias);
  EXPECT_EQ(c.num_key_value_heads, 4);  // absent: = heads
}

TEST(Config, RopeDefaultsAndLinear) {
  ModelConfig c = parse_config(base("llama"), "x");
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  json j = base("llama");
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  j["rope_theta"] = 1e6;
  c = parse_config(j, "x");
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
}

TEST(Config, MistralSlidingWindowDefaults) {
  json j = base("mistral");
  j.erase("num_key_value_heads");
  j["num_attention_heads"] = 16;
  ModelConfig c = parse_config(j, "x");
  EXPECT_EQ(c.layer_window, std::vector<int64_t>(4, 4096));  // MistralConfig default
  EXPECT_EQ(c.num_key_value_heads, 8);                       // MistralConfig default
  j["sliding_window"] = nullptr;
  j["num_key_value_heads"] = 2;
  c = parse_config(j, "x");
  EXPECT_EQ(c.layer_window, std::vector<int64_t>(4, 0));
  j["sliding_window"] = 64;
  c = parse_config(j, "x");
  EXPECT_EQ(c.layer_window, std::vector<int64_t>(4, 64));
}

TEST(Config, Qwen2BiasesAndWindowRule) {
  json j = base("qwen2");
  ModelConfig c = parse_config(j, "x");
  EXPECT_TRUE(c.q_bias && c.k_bias && c.v_bias);
  EXPECT_FALSE(c.o_bias || c.mlp_bias || c.qk_norm);
  EXPECT_EQ(c.layer_window, std::vector<int64_t>(4, 0));  // use_sliding_window false
  j["sliding_window"] = 32;
  c = parse_config(j, "x");
  EXPECT_EQ(c.layer_window, std::vector<int64_t>(4, 0));  // still off
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 2;
  c = parse_config(j, "x");
  EXPECT_EQ(c.layer_window, (std::vector<int64_t>{0, 0, 32, 32}));
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention", "full_attention"};
  c = parse_config(j, "x");
  EXPECT_EQ(c.layer_window, (std::vector<int64_t>{32, 0, 32, 0}));
  j["layer_types"] = {"sliding_attention", "full"};
  EXPECT_NE(error_of(j).find("layer_types"), std::string::npos);
}

TEST(Config, Qwen3HeadDimAndQkNorm) {
  json j = base("qwen3");
  ModelConfig c = parse_config(j, "x");
  EXPECT_EQ(c.head_dim, 128);  // Qwen3Config default, not hidden / heads
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.q_bias || c.o_bias);
  EXPECT_EQ(c.q_dim(), 4 * 128);
  EXPECT_EQ(c.kv_dim(), 2 * 128);
  j["head_dim"] = 32;
  j["attention_bias"] = true;
  c = parse_config(j, "x");
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_TRUE(c.q_bias && c.k_bias && c.v_bias && c.o_bias);
}

// Phi-3: fused projections, longrope read from its older "su" name with the
// attention factor transformers derives, partial rotary; Gemma: the
// structural fields its family file resolves.
TEST(Config, Phi3LongropeAndGemmaFields) {
  json j = base("phi3");
  j["max_position_embeddings"] = 4096;
  j["original_max_position_embeddings"] = 256;
  j["partial_rotary_factor"] = 0.75;  // head_dim 16 -> 12 rotated dims
  j["rope_scaling"] = {
      {"type", "su"}, {"short_factor", {1, 1, 1, 1, 1, 1}}, {"long_factor", {1, 2, 3, 4, 5, 6}}};
  ModelConfig c = parse_config(j, "dir/config.json");
  EXPECT_TRUE(c.fused_qkv && c.fused_gate_up);
  EXPECT_EQ(c.rope.type, "longrope");
  EXPECT_EQ(c.rotary_dim(), 12);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 256);
  EXPECT_NEAR(c.rope.attention_factor, std::sqrt(1 + std::log(16.0) / std::log(256.0)), 1e-12);
  j["rope_scaling"]["long_factor"] = {1, 2, 3};
  EXPECT_NE(error_of(j).find("long_factor\": has 3 entries; rotated head dims / 2 = 6"),
            std::string::npos)
      << error_of(j);

  json g = base("gemma2");
  g["num_hidden_layers"] = 4;
  c = parse_config(g, "dir/config.json");
  EXPECT_TRUE(c.norm_unit_offset && c.sandwich_norms);
  EXPECT_EQ(c.hidden_act, "gelu_pytorch_tanh");
  EXPECT_DOUBLE_EQ(c.embed_scale, 8.0);        // sqrt(64)
  EXPECT_DOUBLE_EQ(c.attn_scale, 1.0 / 16.0);  // query_pre_attn_scalar 256
  EXPECT_DOUBLE_EQ(c.attn_softcap, 50.0);
  EXPECT_DOUBLE_EQ(c.final_softcap, 30.0);
  EXPECT_EQ(c.layer_window, (std::vector<int64_t>{4096, 0, 4096, 0}));

  json g3 = base("gemma3_text");
  g3["num_hidden_layers"] = 6;
  c = parse_config(g3, "dir/config.json");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_DOUBLE_EQ(c.final_softcap, 0.0);
  EXPECT_EQ(c.layer_sliding, (std::vector<bool>{true, true, true, true, true, false}));
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  ASSERT_TRUE(c.rope_local.has_value());
  EXPECT_DOUBLE_EQ(c.rope_local->theta, 1e4);

  // The multimodal Gemma 3: its language model is text_config, absent keys
  // from Gemma3TextConfig (tests/lora/test_gemma3_multimodal.cpp has more).
  json mm = {{"model_type", "gemma3"}, {"text_config", json::object()}};
  c = parse_config(mm, "dir/config.json");
  EXPECT_TRUE(c.multimodal);
  EXPECT_EQ(c.model_type, "gemma3_text");
  EXPECT_EQ(c.num_hidden_layers, 26);
  EXPECT_EQ(c.vocab_size, 262208);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(parse_config(g3, "dir/config.json").multimodal);
  mm["text_config"] = "gemma3_text";
  EXPECT_NE(error_of(mm).find("key \"text_config\""), std::string::npos) << error_of(mm);
}

TEST(ConfigErrors, UnknownModelTypeNamesTheSupportedOnes) {
  const std::string msg = error_of(base("lama"));
  EXPECT_NE(msg.find("dir/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"lama\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("gemma2, gemma3_text, llama, mistral, phi3, qwen2, qwen3"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("did you mean \"llama\""), std::string::npos) << msg;
  EXPECT_NE(error_of(base("falcon")).find("supported: gemma2"), std::string::npos);
}

TEST(ConfigErrors, UnsupportedSettingsNameKeyAndValue) {
  json j = base("llama");
  j["hidden_act"] = "gelu";
  std::string msg = error_of(j);
  EXPECT_NE(msg.find("\"hidden_act\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("gelu"), std::string::npos) << msg;
  EXPECT_NE(msg.find("silu"), std::string::npos) << msg;

  j = base("llama");
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  msg = error_of(j);
  EXPECT_NE(msg.find("rope_scaling"), std::string::npos) << msg;
  EXPECT_NE(msg.find("yarn"), std::string::npos) << msg;
  EXPECT_NE(msg.find("default, linear, llama3"), std::string::npos) << msg;

  j = base("llama");
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  msg = error_of(j);
  EXPECT_NE(msg.find("rope_parameters.low_freq_factor"), std::string::npos) << msg;

  j = base("llama");
  j["partial_rotary_factor"] = 0.5;
  EXPECT_NE(error_of(j).find("partial_rotary_factor"), std::string::npos);
}

TEST(ConfigErrors, WrongTypesAndShapesAreNamed) {
  json j = base("qwen2");
  j["hidden_size"] = "64";
  std::string msg = error_of(j);
  EXPECT_NE(msg.find("\"hidden_size\": must be an integer"), std::string::npos) << msg;

  j = base("mistral");
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(j).find("does not divide"), std::string::npos);

  j = base("llama");
  j.erase("model_type");
  EXPECT_NE(error_of(j).find("model_type"), std::string::npos);

  EXPECT_THROW(load_config("/nonexistent/model"), Error);
}

}  // namespace
}  // namespace loratune::model
