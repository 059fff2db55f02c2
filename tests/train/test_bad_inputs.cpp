// Bad configs, overrides and data files through the real CLI (`loratune
// train CONFIG [key=value ...]`): each exits with the status of its error
// kind (1 config, 3 data, 4 file system) and prints exactly one line that
// names the file (with the line, or the key, where one applies) or the
// override, and the closest valid choice or the valid range where one exists;
// nothing that was under output.dir before is touched, and a failed run
// leaves no adapter/ (the output dir is absent or empty).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <map>

#include "train_test_util.h"

namespace fs = std::filesystem;
using namespace loratune;

namespace {

// The base config: a valid 2-step run of the ref_train fixture's tiny model on
// its pre-tokenized data. Line numbers matter: expected errors name them.
const char* kBaseConfig =
    "model:\n"                              // 1
    "  path: {model}\n"                     // 2
    "  dtype: float32\n"                    // 3
    "device: cpu\n"                         // 4
    "seed: 7\n"                             // 5
    "lora:\n"                               // 6
    "  r: 4\n"                              // 7
    "  alpha: 8\n"                          // 8
    "  target_modules: [q_proj, v_proj]\n"  // 9
    "data:\n"                               // 10
    "  train: {data}\n"                     // 11
    "  format: auto\n"                      // 12
    "  max_seq_len: 64\n"                   // 13
    "train:\n"                              // 14
    "  max_steps: 2\n"                      // 15
    "  micro_batch_size: 2\n"               // 16
    "  optimizer: {lr: 1.0e-3}\n"           // 17
    "output:\n"                             // 18
    "  dir: {out}\n";                       // 19

// What is in output.dir before the failing command.
enum class Before { kNothing, kFinishedRun, kStoppedRun };

struct BadInput {
  const char* name;
  // Whole lines of kBaseConfig replaced (the replacement may add lines).
  std::vector<std::pair<std::string, std::string>> edits;
  // Lines of the data file; empty = the fixture's valid training data.
  std::vector<std::string> data;
  Before before;
  // Substrings of the one error line. {cfg}, {data}, {out}, {model}, {tmp}
  // stand for the paths of this case.
  std::vector<std::string> expect;
  // The exit status: 1 config, 3 data, 4 file system (trainer/io/error.h).
  int status = 1;
  // key=value overrides after the config path.
  std::string overrides;
};

const char* kTok = R"({"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8]})";

std::vector<BadInput> bad_inputs() {
  using B = Before;
  return {
      // ---- config file: checked before anything else is read ----
      {"unknown_key_typo",
       {{"  alpha: 8", "  alpah: 8"}},
       {},
       B::kNothing,
       {"{cfg}:8: unknown key 'lora.alpah' (did you mean 'lora.alpha'?)"}},
      {"wrong_type",
       {{"  max_steps: 2", "  max_steps: two"}},
       {},
       B::kNothing,
       {"{cfg}:15: train.max_steps: expected an integer, got 'two'"}},
      {"lora_r_zero",
       {{"  r: 4", "  r: 0"}},
       {},
       B::kNothing,
       {"{cfg}:7: lora.r: must be in [1, 65536], got 0"}},
      {"negative_lr",
       {{"  optimizer: {lr: 1.0e-3}", "  optimizer: {lr: -1.0e-3}"}},
       {},
       B::kNothing,
       {"{cfg}:17: train.optimizer.lr: must be a finite number > 0, got -0.001"}},
      {"micro_batch_size_zero",
       {{"  micro_batch_size: 2", "  micro_batch_size: 0"}},
       {},
       B::kNothing,
       {"{cfg}:16: train.micro_batch_size: must be in [1, 65536], got 0"}},
      // ---- absurd numbers: bounded before anything is allocated ----
      {"lora_r_huge_override",
       {},
       {},
       B::kNothing,
       {"override 'lora.r=2147483648': lora.r: must be in [1, 65536], got 2147483648"},
       1,
       "lora.r=2147483648"},
      {"gradient_accumulation_huge",
       {{"  micro_batch_size: 2",
         "  micro_batch_size: 2\n  gradient_accumulation_steps: 100000000"}},
       {},
       B::kNothing,
       {"{cfg}:17: train.gradient_accumulation_steps: must be in [1, 1024], got 100000000"}},
      {"micro_batch_size_huge",
       {{"  micro_batch_size: 2", "  micro_batch_size: 1000000"}},
       {},
       B::kNothing,
       {"{cfg}:16: train.micro_batch_size: must be in [1, 65536], got 1000000"}},
      {"micro_batch_tokens_huge",
       {{"  micro_batch_size: 2", "  micro_batch_size: 65536"},
        {"  max_seq_len: 64", "  max_seq_len: 65536"}},
       {},
       B::kNothing,
       {"{cfg}:16: train.micro_batch_size (65536) x data.max_seq_len (65536) must be <= "
        "2147483647 tokens per micro-batch"}},
      {"max_steps_huge",
       {{"  max_steps: 2", "  max_steps: 10000000000"}},
       {},
       B::kNothing,
       {"{cfg}:15: train.max_steps: must be in [0, 1000000000], got 10000000000"}},
      {"max_seq_len_huge",
       {{"  max_seq_len: 64", "  max_seq_len: 100000000"}},
       {},
       B::kNothing,
       {"{cfg}:13: data.max_seq_len: must be in [2, 16777216], got 100000000"}},
      {"warmup_steps_huge_override",
       {},
       {},
       B::kNothing,
       {"override 'train.scheduler.warmup_steps=9999999999': train.scheduler.warmup_steps: must "
        "be in [0, 1000000000], got 9999999999"},
       1,
       "train.scheduler.warmup_steps=9999999999"},
      {"log_every_zero_override",
       {},
       {},
       B::kNothing,
       {"override 'train.log_every=0': train.log_every: must be in [1, 1000000000], got 0"},
       1,
       "train.log_every=0"},
      {"save_every_negative_override",
       {},
       {},
       B::kNothing,
       {"override 'train.save_every=-5': train.save_every: must be in [0, 1000000000], got -5"},
       1,
       "train.save_every=-5"},
      {"eval_every_huge_override",
       {},
       {},
       B::kNothing,
       {"override 'train.eval_every=10000000000': train.eval_every: must be in [0, 1000000000], "
        "got 10000000000"},
       1,
       "train.eval_every=10000000000"},
      {"lr_nan",
       {{"  optimizer: {lr: 1.0e-3}", "  optimizer: {lr: .nan}"}},
       {},
       B::kNothing,
       {"{cfg}:17: train.optimizer.lr: must be a finite number > 0, got .nan"}},
      {"weight_decay_inf_override",
       {},
       {},
       B::kNothing,
       {"override 'train.optimizer.weight_decay=.inf': train.optimizer.weight_decay: must be a "
        "finite number >= 0, got .inf"},
       1,
       "train.optimizer.weight_decay=.inf"},
      {"beta2_above_one_override",
       {},
       {},
       B::kNothing,
       {"override 'train.optimizer.betas=[0.9,1.5]': train.optimizer.betas: must be in [0.0, "
        "1.0), got 1.5"},
       1,
       "'train.optimizer.betas=[0.9,1.5]'"},
      {"eps_negative_override",
       {},
       {},
       B::kNothing,
       {"override 'train.optimizer.eps=-1e-8': train.optimizer.eps: must be a finite number > 0, "
        "got -1.0e-08"},
       1,
       "train.optimizer.eps=-1e-8"},
      {"max_grad_norm_nan_override",
       {},
       {},
       B::kNothing,
       {"override 'train.max_grad_norm=.nan': train.max_grad_norm: must be a finite number >= 0, "
        "got .nan"},
       1,
       "train.max_grad_norm=.nan"},
      {"dropout_one_override",
       {},
       {},
       B::kNothing,
       {"override 'lora.dropout=1': lora.dropout: must be in [0.0, 1.0), got 1.0"},
       1,
       "lora.dropout=1"},
      {"alpha_negative_infinity_override",
       {},
       {},
       B::kNothing,
       {"override 'lora.alpha=-.inf': lora.alpha: must be a finite number > 0, got -.inf"},
       1,
       "lora.alpha=-.inf"},
      {"override_unknown_key_typo",
       {},
       {},
       B::kNothing,
       {"override 'lora.alpah=8': unknown key 'lora.alpah' (did you mean 'lora.alpha'?)"},
       1,
       "lora.alpah=8"},
      {"non_utf8_key_is_refused_at_its_column",
       {{"  alpha: 8", "  alph\xFF: 8"}},
       {},
       B::kNothing,
       {"{cfg}:8:7: invalid UTF-8 (byte "}},
      {"val_fraction_above_one",
       {{"  max_seq_len: 64", "  max_seq_len: 64\n  val_fraction: 1.5"}},
       {},
       B::kNothing,
       {"{cfg}:14: data.val_fraction: must be in [0.0, 1.0), got 1.5"}},
      {"unknown_chat_template",
       {{"  format: auto", "  format: auto\n  chat_template: llama-3"}},
       {},
       B::kNothing,
       {"{cfg}:13: data.chat_template: 'llama-3' is not one of auto, llama2, llama3",
        "(did you mean 'llama3'?)"}},
      {"unknown_data_format",
       {{"  format: auto", "  format: tokenised"}},
       {},
       B::kNothing,
       {"{cfg}:12: data.format: 'tokenised' is not one of", "(did you mean 'tokenized'?)"}},
      {"unknown_dtype",
       {{"  dtype: float32", "  dtype: bf16"}},
       {},
       B::kNothing,
       {"{cfg}:3: model.dtype: 'bf16' is not one of float32, bfloat16, float16",
        "(did you mean 'bfloat16'?)"}},
      {"unknown_device",
       {{"device: cpu", "device: gpu"}},
       {},
       B::kNothing,
       {"{cfg}:4: device: 'gpu' is not one of auto, cpu, cuda, cuda:N", "(did you mean 'cuda'?)"}},
      // ---- run setup: the run directory, the model, the adapter ----
      {"output_dir_holds_finished_run",
       {},
       {},
       B::kFinishedRun,
       {"output.dir '{out}' holds a finished run ({out}/adapter exists)",
        "set output.overwrite=true"}},
      {"output_dir_holds_stopped_run",
       {},
       {},
       B::kStoppedRun,
       {"output.dir '{out}' holds an unfinished run; pass --resume"}},
      {"missing_model_dir",
       {{"  path: {model}", "  path: {tmp}/no-model"}},
       {},
       B::kNothing,
       {"{tmp}/no-model: no such file (a model's config.json)"},
       4},
      {"max_seq_len_above_model",
       {{"  max_seq_len: 64", "  max_seq_len: 4096"}},
       {},
       B::kNothing,
       {"data.max_seq_len=4096 exceeds the model's max_position_embeddings (1024, "
        "{model}/config.json)"}},
      {"unknown_target_module",
       {{"  target_modules: [q_proj, v_proj]", "  target_modules: [q_proj, v_prj]"}},
       {},
       B::kNothing,
       {"lora.target_modules: 'v_prj' matches no projection of this model",
        "(did you mean 'v_proj'?)"}},
      // ---- data files ----
      {"missing_data_file",
       {{"  train: {data}", "  train: {tmp}/nope.jsonl"}},
       {},
       B::kNothing,
       {"data file: {tmp}/nope.jsonl: "},
       4},
      {"empty_dataset", {}, {"", "  "}, B::kNothing, {"no training examples in {data}"}, 3},
      {"mixed_formats",
       {},
       {kTok, R"({"text": "hello"})"},
       B::kNothing,
       {"{data}:2: record is text but line 1 of this file is tokenized"},
       3},
      {"broken_json_line",
       {},
       {kTok, kTok, R"({"input_ids": [5, 6)"},
       B::kNothing,
       {"{data}:3: invalid JSON"},
       3},
      {"labels_longer_than_input_ids",
       {},
       {kTok, R"({"input_ids": [5, 6], "labels": [5, 6, 7]})"},
       B::kNothing,
       {"{data}:2: 'labels' has 3 entries but 'input_ids' has 2"},
       3},
      {"token_id_outside_vocabulary",
       {},
       {kTok, R"({"input_ids": [5, 18446744073709551615]})"},
       B::kNothing,
       {"{data}:2: 'input_ids'[1] = 18446744073709551615 is outside the vocabulary [0, "},
       3},
      {"control_bytes_in_a_record_are_escaped",
       {{"  format: auto", "  format: chat"},
        {"  max_seq_len: 64", "  max_seq_len: 64\n  chat_template: chatml"}},
       {R"({"messages": [{"role": "us\u0001er", "content": "x"}]})"},
       B::kNothing,
       {"{data}:1: messages[0]: unknown role 'us\\x01er' (did you mean 'user'?)"},
       3},
  };
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

// Every regular file under `dir` with its bytes (empty when dir is absent).
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out[e.path().string()] = test::read_file(e.path().string());
  }
  return out;
}

// Paths of `a` missing from `b` or with other bytes there, and paths only in `b`.
std::vector<std::string> changed_files(const std::map<std::string, std::string>& a,
                                       const std::map<std::string, std::string>& b) {
  std::vector<std::string> out;
  for (const auto& [path, bytes] : a) {
    auto it = b.find(path);
    if (it == b.end() || it->second != bytes) out.push_back(path);
  }
  for (const auto& [path, bytes] : b) {
    if (!a.count(path)) out.push_back(path);
  }
  return out;
}

test::RunResult train(const std::string& config, const std::string& args = "") {
  return test::run(test::quote(test::loratune_bin()) + " train --plain " + test::quote(config) +
                   " " + args + " 2>&1");
}

TEST(BadInputs, EachFailsWithOneLineNamingFileKeyAndClosestChoiceAndKeepsOutputDir) {
  const std::string root = test::make_temp_dir("bad_inputs");
  const auto all = bad_inputs();
  ASSERT_GE(all.size(), 40u);
  for (const BadInput& c : all) {
    SCOPED_TRACE(c.name);
    const auto t0 = std::chrono::steady_clock::now();
    const std::string tmp = root + "/" + c.name;
    fs::create_directories(tmp);
    const std::string cfg = tmp + "/cfg.yaml", out = tmp + "/run";
    std::string data = test::ref_train_dir() + "/llama-rope3-tied/train.jsonl";
    if (!c.data.empty()) {
      data = tmp + "/data.jsonl";
      std::string text;
      for (const auto& l : c.data) text += l + "\n";
      test::write_file(data, text);
    }
    auto fill = [&](std::string s) {
      s = replace_all(s, "{model}", test::ref_train_dir() + "/tokmodel");
      s = replace_all(s, "{data}", data);
      s = replace_all(s, "{out}", out);
      s = replace_all(s, "{cfg}", cfg);
      return replace_all(s, "{tmp}", tmp);
    };
    std::string yaml = kBaseConfig;
    for (const auto& [from, to] : c.edits) {
      const size_t at = yaml.find(from + "\n");
      ASSERT_NE(at, std::string::npos) << "no line '" << from << "' in the base config";
      yaml.replace(at, from.size(), to);
    }
    test::write_file(cfg, fill(yaml));

    if (c.before == Before::kFinishedRun) {
      auto r = train(cfg);
      ASSERT_EQ(r.status, 0) << r.out;
      ASSERT_TRUE(fs::exists(out + "/adapter/adapter_model.safetensors"));
    } else if (c.before == Before::kStoppedRun) {
      auto r = train(cfg, "--stop-after-step 1");
      ASSERT_EQ(r.status, 143) << r.out;
      ASSERT_TRUE(fs::exists(out + "/checkpoints/step-1/state.json"));
    }
    const auto files_before = snapshot(out);

    const test::RunResult r = train(cfg, c.overrides);
    EXPECT_EQ(r.status, c.status) << r.out;
    // Exactly one line: "loratune: error: <message>\n".
    EXPECT_EQ(r.out.rfind("loratune: error: ", 0), 0u) << r.out;
    EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "not one line:\n" << r.out;
    for (const auto& e : c.expect) {
      const std::string want = fill(e);
      EXPECT_NE(r.out.find(want), std::string::npos) << "'" << want << "' not in: " << r.out;
    }

    if (c.before == Before::kNothing) {
      EXPECT_TRUE(!fs::exists(out) || fs::is_empty(out)) << out << " was written to";
    } else {
      EXPECT_FALSE(files_before.empty());
      EXPECT_EQ(changed_files(files_before, snapshot(out)), std::vector<std::string>{});
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%-32s %.2f s\n", c.name, s);
  }
}

}  // namespace
