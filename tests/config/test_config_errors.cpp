// Bad configs: each must fail with ONE line naming the file and line (or the
// override), the key path and, where one exists, the closest valid key/choice.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/test_env.h"
#include "trainer/config/config.h"
#include "trainer/io/error.h"

namespace loratune::config {
namespace {

// Lines 1-6 of every case; a case's own lines start at line 7.
const char* kHead =
    "model:\n"
    "  path: m\n"
    "data:\n"
    "  train: t.jsonl\n"
    "output:\n"
    "  dir: o\n";

struct BadConfig {
  const char* name;
  std::string yaml;                    // the whole file
  std::vector<std::string> overrides;  // applied after it
  std::vector<std::string> expect;     // substrings of the error; "@" stands for the file path
};

std::vector<BadConfig> bad_configs() {
  const std::string h = kHead;
  return {
      {"unknown_top_level_key",
       "modle:\n  path: m\n",
       {},
       {"@:1: unknown key 'modle' (did you mean 'model'?)"}},
      {"unknown_nested_key_alias",
       h + "lora:\n  rank: 8\n",
       {},
       {"@:8: unknown key 'lora.rank' (did you mean 'lora.r'?)"}},
      {"unknown_nested_key_typo",
       h + "lora:\n  r: 8\n  dropuot: 0.1\n",
       {},
       {"@:9: unknown key 'lora.dropuot' (did you mean 'lora.dropout'?)"}},
      {"key_in_wrong_section",
       h + "train:\n  lr: 1e-4\n",
       {},
       {"@:8: unknown key 'train.lr' (did you mean 'train.optimizer.lr'?)"}},
      {"key_from_axolotl",
       h + "learning_rate: 1e-4\n",
       {},
       {"@:7: unknown key 'learning_rate' (did you mean 'train.optimizer.lr'?)"}},
      {"wrong_type_number",
       h + "train:\n  optimizer:\n    lr: fast\n",
       {},
       {"@:9: train.optimizer.lr: expected a number, got 'fast'"}},
      {"wrong_type_integer",
       h + "lora:\n  r: 8.5\n",
       {},
       {"@:8: lora.r: expected an integer, got '8.5'"}},
      {"duplicate_section",
       h + "data:\n  packing: true\n",
       {},
       {"@:7: duplicate key 'data' (first set at line 3)"}},
      {"wrong_type_bool_in_section",
       "data:\n  train: t\n  packing: maybe\nmodel: {path: m}\noutput: {dir: o}\n",
       {},
       {"@:3: data.packing: expected true or false, got 'maybe'"}},
      {"wrong_type_list",
       h + "lora:\n  target_modules: {q: 1}\n",
       {},
       {"@:8: lora.target_modules: expected a list of module names", "got a map"}},
      {"single_module_name_is_not_a_list",
       h + "lora:\n  target_modules: q_proj\n",
       {},
       {"@:8: lora.target_modules:", "got 'q_proj'"}},
      {"section_not_a_map",
       h + "lora: 8\n",
       {},
       {"@:7: lora: expected a map with keys r, alpha", "got '8'"}},
      {"betas_wrong_length",
       h + "train:\n  optimizer:\n    betas: [0.9]\n",
       {},
       {"@:9: train.optimizer.betas: expected a list of two numbers"}},
      {"r_zero", h + "lora:\n  r: 0\n", {}, {"@:8: lora.r: must be in [1, 65536], got 0"}},
      {"r_huge",
       h + "lora:\n  r: 2147483648\n",
       {},
       {"@:8: lora.r: must be in [1, 65536], got 2147483648"}},
      {"r_beyond_int64",
       h + "lora:\n  r: 99999999999999999999\n",
       {},
       {"@:8: lora.r: expected an integer, got '99999999999999999999'"}},
      {"negative_lr",
       h + "train:\n  optimizer:\n    lr: -1e-4\n",
       {},
       {"@:9: train.optimizer.lr: must be a finite number > 0, got -0.0001"}},
      {"nan_lr",
       h + "train:\n  optimizer:\n    lr: .nan\n",
       {},
       {"@:9: train.optimizer.lr: must be a finite number > 0, got .nan"}},
      {"infinite_alpha",
       h + "lora:\n  alpha: .inf\n",
       {},
       {"@:8: lora.alpha: must be a finite number > 0, got .inf"}},
      {"nan_dropout",
       h + "lora:\n  dropout: .nan\n",
       {},
       {"@:8: lora.dropout: must be in [0.0, 1.0), got .nan"}},
      {"negative_weight_decay",
       h + "train:\n  optimizer:\n    weight_decay: -0.1\n",
       {},
       {"@:9: train.optimizer.weight_decay: must be a finite number >= 0, got -0.1"}},
      {"nan_beta",
       h + "train:\n  optimizer:\n    betas: [.nan, 0.999]\n",
       {},
       {"@:9: train.optimizer.betas: must be in [0.0, 1.0), got .nan"}},
      {"zero_eps",
       h + "train:\n  optimizer:\n    eps: 0\n",
       {},
       {"@:9: train.optimizer.eps: must be a finite number > 0, got 0.0"}},
      {"infinite_max_grad_norm",
       h + "train:\n  max_grad_norm: .inf\n",
       {},
       {"@:8: train.max_grad_norm: must be a finite number >= 0, got .inf"}},
      {"huge_accumulation",
       h + "train:\n  gradient_accumulation_steps: 1000000000\n",
       {},
       {"@:8: train.gradient_accumulation_steps: must be in [1, 1024], got 1000000000"}},
      {"global_batch_not_a_multiple_of_micro_batch",
       h + "train:\n  micro_batch_size: 4\n  global_batch: 10\n",
       {},
       {"@:9: train.global_batch (10) must be a multiple of train.micro_batch_size (4)"}},
      {"shard_base_without_checkpointing",
       h + "train:\n  shard_base: true\n",
       {},
       {"@:8: train.shard_base: needs train.gradient_checkpointing=true"}},
      {"dist_timeout_too_short",
       h + "train:\n  dist_timeout_s: 1\n",
       {},
       {"@:8: train.dist_timeout_s: must be in [10, 86400], got 1"}},
      {"grad_bucket_too_large",
       h + "train:\n  grad_bucket_mb: 5000\n",
       {},
       {"@:8: train.grad_bucket_mb: must be in [0.0, 4096.0], got 5.0e+03"}},
      {"huge_micro_batch",
       h + "train:\n  micro_batch_size: 100000\n",
       {},
       {"@:8: train.micro_batch_size: must be in [1, 65536], got 100000"}},
      {"huge_tokens_per_micro_batch",
       "data:\n  train: t\n  max_seq_len: 1048576\nmodel: {path: m}\noutput: {dir: o}\n",
       {"train.micro_batch_size=4096"},
       {"override 'train.micro_batch_size=4096': train.micro_batch_size (4096) x data.max_seq_len "
        "(1048576) must be <= 2147483647 tokens per micro-batch"}},
      {"huge_max_seq_len",
       "data:\n  train: t\n  max_seq_len: 100000000\nmodel: {path: m}\noutput: {dir: o}\n",
       {},
       {"@:3: data.max_seq_len: must be in [2, 16777216], got 100000000"}},
      {"huge_max_steps",
       h + "train:\n  max_steps: 10000000000\n",
       {},
       {"@:8: train.max_steps: must be in [0, 1000000000], got 10000000000"}},
      {"huge_epochs",
       h + "train:\n  epochs: 10000000\n",
       {},
       {"@:8: train.epochs: must be in [0, 1000000], got 10000000"}},
      {"huge_warmup_steps",
       h + "train:\n  scheduler:\n    warmup_steps: 10000000000\n",
       {},
       {"@:9: train.scheduler.warmup_steps: must be in [0, 1000000000], got 10000000000"}},
      {"log_every_zero",
       h + "train:\n  log_every: 0\n",
       {},
       {"@:8: train.log_every: must be in [1, 1000000000], got 0"}},
      {"save_every_negative",
       h + "train:\n  save_every: -1\n",
       {},
       {"@:8: train.save_every: must be in [0, 1000000000], got -1"}},
      {"eval_every_negative",
       h + "train:\n  eval_every: -1\n",
       {},
       {"@:8: train.eval_every: must be in [0, 1000000000], got -1"}},
      {"non_utf8_key_escaped",
       h + "lora:\n  alph\xff\x01: 8\n",
       {},
       {"@:8:7: invalid UTF-8 (byte "}},
      {"non_utf8_value_escaped",
       "model:\n  path: m\n  dtype: bf\xc3\ndata: {train: t}\noutput: {dir: o}\n",
       {},
       {"@:3:12: invalid UTF-8 (byte 28); a config is UTF-8 text"}},
      // yaml-cpp reads the bytes through but writes U+FFFD for them: the
      // resolved config.yaml would name another directory (found by fuzzing).
      {"non_utf8_path",
       "model:\n  path: m\xff\x05x\ndata: {train: t}\noutput: {dir: o}\n",
       {},
       {"@:2:10: invalid UTF-8 (byte 16)"}},
      {"dropout_too_big",
       h + "lora:\n  dropout: 1.5\n",
       {},
       {"@:8: lora.dropout: must be in [0.0, 1.0), got 1.5"}},
      {"beta_one",
       h + "train:\n  optimizer:\n    betas: [0.9, 1.0]\n",
       {},
       {"@:9: train.optimizer.betas: must be in [0.0, 1.0), got 1.0"}},
      {"warmup_steps_and_ratio",
       h + "train:\n  scheduler:\n    warmup_steps: 10\n    warmup_ratio: 0.1\n",
       {},
       {"@:10: ", "train.scheduler.warmup_steps (10)", "train.scheduler.warmup_ratio (0.1)",
        "both set"}},
      {"unknown_scheduler",
       h + "train:\n  scheduler:\n    name: cosin\n",
       {},
       {"@:9: train.scheduler.name: 'cosin' is not one of constant, linear, cosine (did you mean "
        "'cosine'?)"}},
      {"unknown_dtype",
       "model:\n  path: m\n  dtype: bf16\n",
       {},
       {"@:3: model.dtype: 'bf16' is not one of float32, bfloat16, float16 (did you mean "
        "'bfloat16'?)"}},
      {"unknown_gguf_type",
       h + "  gguf: {type: q4}\n",
       {},
       {"@:7: output.gguf.type: 'q4' is not one of none, f32, f16, bf16, q8_0 (did you mean "
        "'q8_0'?)"}},
      {"unknown_chat_template",
       "data:\n  train: t\n  chat_template: llama-3\nmodel: {path: m}\noutput: {dir: o}\n",
       {},
       {"@:3: data.chat_template: 'llama-3' is not one of auto, llama2, llama3, chatml, mistral, "
        "gemma, "
        "phi3 (did you mean 'llama3'?)"}},
      {"unknown_device",
       h + "device: gpu\n",
       {},
       {"@:7: device: 'gpu' is not one of auto, cpu, cuda, cuda:N", "(did you mean 'cuda'?)"}},
      {"missing_data_train",
       "model:\n  path: m\noutput:\n  dir: o\n",
       {},
       {"@: data.train: required: one file or a list of files"}},
      {"empty_data_train",
       "model:\n  path: m\ndata:\n  train: []\noutput:\n  dir: o\n",
       {},
       {"@:4: data.train: must not be empty"}},
      {"missing_model_path",
       "data:\n  train: t\noutput:\n  dir: o\n",
       {},
       {"@: model.path: required"}},
      {"missing_output_dir",
       "model:\n  path: m\ndata:\n  train: t\n",
       {},
       {"@: output.dir: required"}},
      {"unknown_top_level_key_typo",
       h + "data2: 1\n",
       {},
       {"@:7: unknown key 'data2' (did you mean 'data'?)"}},
      {"validation_files_and_fraction",
       "data:\n  train: t\n  validation: v\n  val_fraction: 0.1\nmodel: {path: m}\noutput: {dir: "
       "o}\n",
       {},
       {"@:4: data.validation and data.val_fraction are both set"}},
      {"eval_without_validation",
       h + "train:\n  eval_every: 10\n",
       {},
       {"@:8: train.eval_every: is 10 but there is no validation data"}},
      {"no_length",
       h + "train:\n  epochs: 0\n",
       {},
       {"@:8: train.epochs and train.max_steps are both 0"}},
      {"all_linear_in_list",
       h + "lora:\n  target_modules: [all-linear, q_proj]\n",
       {},
       {"@:8: lora.target_modules: all-linear already covers"}},
      {"dotted_key_in_file", h + "lora.r: 4\n", {}, {"@:7: key 'lora.r' contains '.'"}},
      {"duplicate_key",
       h + "lora:\n  r: 8\n  r: 16\n",
       {},
       {"@:9: duplicate key 'lora.r' (first set at line 8)"}},
      {"yaml_syntax_error",
       "model:\n  path: m\n  dtype: [float32,\n",
       {},
       {"@:", "YAML syntax error"}},
      {"yaml_bad_indent",
       "model:\n  path: m\n dtype: float32\n",
       {},
       {"@:3:", "YAML syntax error"}},
      {"not_a_map", "- a\n- b\n", {}, {"@:1: expected a map of config keys"}},
      {"unclosed_double_quote",
       "model: {path: m}\ndata: {train: t}\noutput:\n  dir: \"/runs/x\n",
       {},
       {"@: YAML syntax error: a quoted value is not closed before the end of the file"}},
      {"unclosed_single_quote",
       "model: {path: m}\ndata: {train: t}\noutput:\n  dir: '/runs/x\n",
       {},
       {"@: YAML syntax error: a quoted value is not closed"}},
      {"unknown_yaml_tag",
       "model: {path: m}\ndata: {train: t}\noutput: {dir: o}\nlora: {r: !foo 8}\n",
       {},
       {"@:4:", "lora.r: unknown YAML tag '!foo' (write the plain value)"}},
      {"nul_in_a_value",
       "model: {path: \"m\\0x\"}\ndata: {train: t}\noutput: {dir: o}\n",
       {},
       {"@:1:", "model.path: the value contains a NUL byte (\\x00): m\\x00x"}},
      {"two_documents", h + "---\nlora: {r: 4}\n", {}, {"@: expected one YAML document, found 2"}},
      {"override_without_equals", h, {"train.lr"}, {"override 'train.lr': expected key=value"}},
      {"override_empty_key", h, {"=3"}, {"override '=3': expected key=value"}},
      {"override_unknown_key",
       h,
       {"train.lr=1"},
       {"override 'train.lr=1': unknown key 'train.lr' (did you mean 'train.optimizer.lr'?)"}},
      {"override_unknown_nested_key",
       h,
       {"lora.rnak=4"},
       {"override 'lora.rnak=4': unknown key 'lora.rnak' (did you mean 'lora.r'?)"}},
      {"override_wrong_type",
       h,
       {"train.optimizer.lr=fast"},
       {"override 'train.optimizer.lr=fast': train.optimizer.lr: expected a number, got 'fast'"}},
      {"override_out_of_range",
       h,
       {"lora.r=0"},
       {"override 'lora.r=0': lora.r: must be in [1, 65536], got 0"}},
      {"override_huge_rank",
       h,
       {"lora.r=2147483648"},
       {"override 'lora.r=2147483648': lora.r: must be in [1, 65536], got 2147483648"}},
      {"override_typo_like_file_key",
       h,
       {"lora.alpah=8"},
       {"override 'lora.alpah=8': unknown key 'lora.alpah' (did you mean 'lora.alpha'?)"}},
      {"override_section_map_typo",
       h,
       {"lora={alpah: 8}"},
       {"override 'lora={alpah: 8}': unknown key 'lora.alpah' (did you mean 'lora.alpha'?)"}},
      {"override_non_utf8_escaped",
       h,
       {"lora.r\xff=4"},
       {"override 'lora.r\\xFF=4': invalid UTF-8 (byte 6); a config is UTF-8 text"}},
      {"override_bad_yaml",
       h,
       {"lora.target_modules=[q_proj,"},
       {"override 'lora.target_modules=[q_proj,': lora.target_modules: the value is not valid "
        "YAML"}},
      {"override_adds_second_warmup",
       h + "train:\n  scheduler:\n    warmup_steps: 10\n",
       {"train.scheduler.warmup_ratio=0.1"},
       {"override 'train.scheduler.warmup_ratio=0.1': ", "both set"}},
  };
}

// Runs `f`, expecting a loratune::Error of one line containing every string
// in `expect`.
template <typename F>
void expect_error(F f, const std::vector<std::string>& expect) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    for (const auto& s : expect)
      EXPECT_NE(msg.find(s), std::string::npos) << "'" << s << "' not in: " << msg;
    return;
  } catch (const std::exception& e) {
    FAIL() << "expected loratune::Error, got std::exception: " << e.what();
  }
  FAIL() << "no error; expected one containing '" << expect.front() << "'";
}

TEST(ConfigErrors, EachBadConfigFailsWithOneLineNamingFileLineKeyAndSuggestion) {
  const std::string dir = test::make_temp_dir("config-errors");
  for (const BadConfig& bad : bad_configs()) {
    SCOPED_TRACE(bad.name);
    const std::string path = dir + "/" + bad.name + ".yaml";
    test::write_file(path, bad.yaml);
    std::vector<std::string> expect;
    for (std::string s : bad.expect) {
      if (const size_t at = s.find('@'); at != std::string::npos) s.replace(at, 1, path);
      expect.push_back(s);
    }
    expect_error([&] { load_train_config(path, bad.overrides); }, expect);
  }
}

TEST(ConfigErrors, StringSourceIsNamedLikeAFile) {
  expect_error([] { config_from_yaml_string("lora:\n  rank: 8\n", {}, "configs/x.yaml"); },
               {"configs/x.yaml:2: unknown key 'lora.rank' (did you mean 'lora.r'?)"});
}

TEST(ConfigErrors, MissingFileIsNamedAndIsAFileSystemError) {
  const std::string path = test::make_temp_dir("config-missing") + "/nope.yaml";
  expect_error([&] { load_train_config(path, {}); }, {path + ": cannot open config file"});
  try {
    load_train_config(path, {});
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
  }
}

TEST(ConfigErrors, DirectoryIsNotAConfig) {
  const std::string dir = test::make_temp_dir("config-dir");
  expect_error([&] { load_train_config(dir, {}); }, {dir + ": is a directory"});
}

TEST(ConfigErrors, BadValuesAreConfigErrors) {
  try {
    config_from_yaml_string("lora:\n  r: 0\n", {}, "x.yaml");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
  }
}

TEST(ConfigErrors, ChatTemplateProblemIsSharedWithTheCommandLine) {
  EXPECT_EQ(chat_template_problem("auto"), "");
  EXPECT_EQ(chat_template_problem("chatml"), "");
  EXPECT_EQ(chat_template_problem("llama-3"),
            "'llama-3' is not one of auto, llama2, llama3, chatml, mistral, gemma, phi3 (did you "
            "mean 'llama3'?)");
}

TEST(ConfigErrors, EmptyFileNamesTheFirstMissingRequiredKey) {
  const std::string path = test::make_temp_dir("config-empty") + "/empty.yaml";
  test::write_file(path, "# nothing here\n");
  expect_error([&] { load_train_config(path, {}); }, {path + ": model.path: required"});
}

}  // namespace
}  // namespace loratune::config
