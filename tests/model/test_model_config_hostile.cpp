// Hostile config.json files through the real CLI (inspect, logits, generate):
// sizes are checked against caps and against the checkpoint's safetensors
// headers before anything is allocated. Every run is under `ulimit -v` of
// 4 GB (a config claiming 1e6 layers once took 24 GB), and must end with the
// right exit code and exactly one stderr line naming config.json, the key,
// the value and what the checkpoint holds.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "common/test_env.h"
#include "model/model_test_util.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;

namespace loratune::test {
namespace {

// The tiny qwen2 (vocab 1000, hidden 64, intermediate 160, 3 layers, 4 heads,
// 2 kv heads, head_dim 16) copied with config.json edited by `edit`.
std::string hostile_model(const std::function<void(nlohmann::json&)>& edit) {
  const std::string dir = copy_model("qwen2", "hostile");
  nlohmann::json cfg = nlohmann::json::parse(read_file(dir + "/config.json"));
  edit(cfg);
  write_file(dir + "/config.json", cfg.dump(2));
  return dir;
}

// Rewrites DIR/model.safetensors with `edit` applied to its tensors.
void edit_weights(
    const std::string& dir,
    const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& edit) {
  const std::string path = dir + "/model.safetensors";
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  {
    auto f = io::SafetensorsFile::open(path);
    for (const auto& info : f->tensors())
      tensors.emplace_back(info.name, f->tensor(info.name).clone());
  }
  edit(tensors);
  io::save_file(tensors, path);
}

struct Outcome {
  int status = -1;
  std::string out, err;
};

// Runs `loratune ARGS` under a 4 GB address-space limit, stdout and stderr apart.
Outcome run_limited(const std::string& args) {
  const std::string tmp = make_temp_dir("hostile-run");
  const std::string cmd = "ulimit -v 4000000; exec " + quote(loratune_bin()) + " " + args;
  // A subshell, so that run()'s own 2>&1 does not merge the two again.
  RunResult r = run("(bash -c " + quote(cmd) + " >" + quote(tmp + "/out") + " 2>" +
                    quote(tmp + "/err") + ")");
  return {r.status, read_file(tmp + "/out"), read_file(tmp + "/err")};
}

size_t lines(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

struct Case {
  std::string name;
  std::function<void(nlohmann::json&)> edit;
  int status;                        // logits / generate exit code
  bool inspect_describes;            // inspect exits 0 and warns (else fails like logits)
  std::vector<std::string> needles;  // in the error line (and inspect's warning)
};

std::vector<Case> cases() {
  auto set = [](const char* key, nlohmann::json v) {
    return [key, v](nlohmann::json& c) { c[key] = v; };
  };
  return {
      {"layers 1e6",
       set("num_hidden_layers", 1000000),
       5,
       false,
       {"config.json", "num_hidden_layers", "1000000", "at most 4096"}},
      {"hidden 1e12",
       set("hidden_size", 1000000000000LL),
       5,
       false,
       {"config.json", "hidden_size", "1000000000000"}},
      {"vocab 1e12",
       set("vocab_size", 1000000000000LL),
       5,
       false,
       {"config.json", "vocab_size", "1000000000000"}},
      {"intermediate 1e9",
       set("intermediate_size", 1000000000),
       5,
       false,
       {"config.json", "intermediate_size", "1000000000"}},
      {"max positions 1e15",
       set("max_position_embeddings", 1000000000000000LL),
       5,
       false,
       {"max_position_embeddings", "1000000000000000"}},
      {"heads do not divide hidden",
       set("num_attention_heads", 6),
       5,
       false,
       {"config.json", "head_dim", "hidden_size 64 is not a multiple"}},
      {"kv heads do not divide heads",
       set("num_key_value_heads", 3),
       5,
       false,
       {"num_key_value_heads", "3 does not divide num_attention_heads 4"}},
      {"negative hidden",
       set("hidden_size", -64),
       5,
       false,
       {"hidden_size", "must be positive, got -64"}},
      {"zero layers",
       set("num_hidden_layers", 0),
       5,
       false,
       {"num_hidden_layers", "must be positive, got 0"}},
      {"string vocab",
       set("vocab_size", "1000"),
       5,
       false,
       {"vocab_size", "must be an integer, got \"1000\""}},
      {"missing model_type",
       [](nlohmann::json& c) { c.erase("model_type"); },
       5,
       false,
       {"config.json", "model_type", "required"}},
      {"unsupported activation",
       set("hidden_act", "gelu"),
       6,
       false,
       {"hidden_act", "\"gelu\" is not supported"}},
      // Parsable, but the checkpoint says otherwise: inspect still describes.
      {"missing hidden_size (family default 4096)",
       [](nlohmann::json& c) { c.erase("hidden_size"); },
       5,
       true,
       {"config.json",
        "hidden_size is 4096 but the checkpoint's model.embed_tokens.weight is "
        "[1000, 64]"}},
      {"layers 4 of 3",
       set("num_hidden_layers", 4),
       5,
       true,
       {"config.json",
        "num_hidden_layers is 4 but the checkpoint has 3 layers (model.layers.0 .. "
        "model.layers.2)"}},
      {"head_dim inconsistent with tensors",
       set("head_dim", 8),
       5,
       true,
       {"num_attention_heads * head_dim (4 * 8) is 32 but the checkpoint's "
        "model.layers.0.self_attn.q_proj.weight is [64, 64]"}},
      {"intermediate 1000 (tensors 160)",
       set("intermediate_size", 1000),
       5,
       true,
       {"intermediate_size is 1000 but the checkpoint's model.layers.0.mlp.gate_proj.weight is "
        "[160, 64]"}},
      {"vocab 2000 (tensors 1000)",
       set("vocab_size", 2000),
       5,
       true,
       {"vocab_size is 2000 but the checkpoint's model.embed_tokens.weight is [1000, 64]"}},
  };
}

void expect_one_error_line(const Outcome& o, int status, const std::vector<std::string>& needles,
                           const std::string& what) {
  EXPECT_EQ(o.status, status) << what << "\nstderr: " << o.err << "\nstdout: " << o.out;
  EXPECT_EQ(lines(o.err), 1u) << what << "\nstderr: " << o.err;
  EXPECT_EQ(o.err.rfind("loratune: error: ", 0), 0u) << what << "\nstderr: " << o.err;
  EXPECT_EQ(o.err.find("internal error"), std::string::npos) << what << "\n" << o.err;
  for (const auto& n : needles) {
    EXPECT_NE(o.err.find(n), std::string::npos) << what << ": no \"" << n << "\" in " << o.err;
  }
}

TEST(HostileConfig, EveryCommandRefusesWithOneLineAndLittleMemory) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const std::string dir = hostile_model(c.edit);
    const std::string out = make_temp_dir("hostile-logits") + "/l.safetensors";
    expect_one_error_line(
        run_limited("logits --model " + quote(dir) + " --ids '1 2 3' --out " + quote(out)),
        c.status, c.needles, "logits");
    EXPECT_FALSE(fs::exists(out));
    expect_one_error_line(
        run_limited("generate --model " + quote(dir) + " --ids '1 2 3' --max-new-tokens 2"),
        c.status, c.needles, "generate");
    Outcome in = run_limited("inspect " + quote(dir));
    if (c.inspect_describes) {
      EXPECT_EQ(in.status, 0) << in.err;
      EXPECT_TRUE(in.err.empty()) << in.err;
      EXPECT_NE(in.out.find("warning:     config.json disagrees with the checkpoint"),
                std::string::npos)
          << in.out;
      for (const auto& n : c.needles) {
        if (n != "config.json") {
          EXPECT_NE(in.out.find(n), std::string::npos) << n << "\n" << in.out;
        }
      }
      Outcome js = run_limited("inspect --json " + quote(dir));
      ASSERT_EQ(js.status, 0) << js.err;
      auto j = nlohmann::json::parse(js.out);
      ASSERT_TRUE(j["config_checkpoint_problems"].is_array());
      EXPECT_FALSE(j["config_checkpoint_problems"].empty());
    } else {
      expect_one_error_line(in, c.status, c.needles, "inspect");
    }
  }
}

// The checkpoint lies instead of the config: a layer missing, a tensor of a
// layer missing, an extra layer, an extra tensor inside a layer.
TEST(HostileConfig, CheckpointThatDisagreesWithConfig) {
  struct WeightCase {
    std::string name;
    std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)> edit;
    std::string needle;
  };
  auto drop_if = [](std::function<bool(const std::string&)> pred) {
    return [pred](std::vector<std::pair<std::string, at::Tensor>>& t) {
      std::vector<std::pair<std::string, at::Tensor>> keep;
      for (auto& e : t) {
        if (!pred(e.first)) keep.push_back(e);
      }
      t = keep;
    };
  };
  auto add = [](std::string name) {
    return [name](std::vector<std::pair<std::string, at::Tensor>>& t) {
      t.emplace_back(name, t.front().second.clone());
    };
  };
  const std::vector<WeightCase> cases = {
      {"layer 2 missing",
       drop_if([](const std::string& n) { return n.rfind("model.layers.2.", 0) == 0; }),
       "num_hidden_layers is 3 but the checkpoint has 2 layers (model.layers.0 .. "
       "model.layers.1)"},
      {"layer 1 missing (a gap)",
       drop_if([](const std::string& n) { return n.rfind("model.layers.1.", 0) == 0; }),
       "num_hidden_layers is 3 but the checkpoint has 2 layers (model.layers.0, 2)"},
      {"one tensor missing",
       drop_if([](const std::string& n) { return n == "model.layers.1.mlp.up_proj.weight"; }),
       "the checkpoint lacks 1 tensor the config implies: model.layers.1.mlp.up_proj.weight"},
      {"extra layer", add("model.layers.3.mlp.up_proj.weight"),
       "num_hidden_layers is 3 but the checkpoint has 4 layers (model.layers.0 .. "
       "model.layers.3)"},
      {"extra tensor in a layer", add("model.layers.0.self_attn.extra.weight"),
       "the checkpoint has 1 tensor the config does not describe: "
       "model.layers.0.self_attn.extra.weight"},
      {"integer weight",
       [](std::vector<std::pair<std::string, at::Tensor>>& t) {
         for (auto& e : t) {
           if (e.first == "model.norm.weight") e.second = e.second.to(at::kInt);
         }
       },
       "weights must be floating point: model.norm.weight (I32)"},
  };
  for (const WeightCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = copy_model("qwen2", "hostile-weights");
    edit_weights(dir, c.edit);
    const std::string out = make_temp_dir("hostile-logits") + "/l.safetensors";
    expect_one_error_line(
        run_limited("logits --model " + quote(dir) + " --ids '1 2 3' --out " + quote(out)), 5,
        {dir + "/config.json: ", c.needle}, "logits");
    expect_one_error_line(
        run_limited("generate --model " + quote(dir) + " --ids '1 2 3' --max-new-tokens 2"), 5,
        {c.needle}, "generate");
    Outcome in = run_limited("inspect " + quote(dir));
    EXPECT_EQ(in.status, 0) << in.err;
    EXPECT_NE(in.out.find(c.needle), std::string::npos) << in.out;
  }
}

// The tiny models themselves pass (no warning, exit 0) under the same limit.
TEST(HostileConfig, GoodModelsHaveNoWarnings) {
  for (const auto& v : tiny_variants()) {
    Outcome in = run_limited("inspect --json " + quote(tiny_model_dir(v)));
    ASSERT_EQ(in.status, 0) << v << ": " << in.err;
    auto j = nlohmann::json::parse(in.out);
    EXPECT_TRUE(j["config_checkpoint_problems"].empty()) << v << ": " << j.dump();
  }
}

}  // namespace
}  // namespace loratune::test
