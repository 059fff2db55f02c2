// Hostile use of the commands that write: LoRA dropout is off at inference
// (generate, eval, logits and in-training validation give the same numbers
// for dropout 0 and 0.9), no command writes over its own inputs, one writer
// per run directory and per merge output, non-finite weights are never
// written, tokens outside the vocabulary, unwritable output dirs, failed runs
// leave no directory behind, and --resume refuses a config that changes
// training. Every refusal is one line with the exit code of its kind.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <thread>

#include "train_test_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/sha256.h"

namespace fs = std::filesystem;
using namespace loratune;

namespace {

std::string bin() {
  return test::quote(test::loratune_bin());
}

// The tiny model + tokenizer of the ref_train fixture and its data.
std::string model_dir() {
  return test::ref_train_dir() + "/tokmodel";
}
std::string train_data() {
  return test::ref_train_dir() + "/llama-rope3-tied/train.jsonl";
}

struct RunDir {
  std::string root, dir, config;
};

// A config of `steps` steps with val_fraction 0.25 and validation at every
// step; `lora` and `extra` lines are spliced in.
RunDir make_run(const std::string& tag, int64_t steps, const std::string& lora = "dropout: 0.0",
                const std::string& extra = "") {
  RunDir r;
  r.root = test::make_temp_dir(tag);
  r.dir = r.root + "/run";
  r.config = r.root + "/cfg.yaml";
  test::write_file(r.config, "model: {path: " + model_dir() +
                                 ", dtype: float32}\ndevice: cpu\nseed: 3\n"
                                 "lora: {r: 4, alpha: 8, target_modules: all-linear, " +
                                 lora + "}\ndata: {train: " + train_data() +
                                 ", format: tokenized, max_seq_len: 64, val_fraction: 0.25}\n"
                                 "train:\n  max_steps: " +
                                 std::to_string(steps) +
                                 "\n  micro_batch_size: 2\n  eval_every: 1\n  save_every: 1\n"
                                 "  keep_checkpoints: 1\n  optimizer: {lr: 5.0e-3}\n" +
                                 extra + "output: {dir: " + r.dir + "}\n");
  return r;
}

test::RunResult run_train(const RunDir& r, const std::string& args = "") {
  return test::run(bin() + " train --plain " + test::quote(r.config) + " " + args + " 2>&1");
}

// The lines of `out` that start with "loratune: error" or "loratune: internal".
std::vector<std::string> error_lines(const std::string& out) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos < out.size()) {
    size_t nl = out.find('\n', pos);
    if (nl == std::string::npos) nl = out.size();
    const std::string line = out.substr(pos, nl - pos);
    if (line.rfind("loratune: error", 0) == 0 || line.rfind("loratune: internal", 0) == 0) {
      lines.push_back(line);
    }
    pos = nl + 1;
  }
  return lines;
}

// Exactly one error line, containing every one of `parts`.
void expect_one_error(const test::RunResult& r, int status, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.status, status) << r.out;
  auto lines = error_lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  EXPECT_EQ(lines[0].rfind("loratune: error: ", 0), 0u) << lines[0];
  for (const auto& p : parts) EXPECT_NE(lines[0].find(p), std::string::npos) << p << "\n" << r.out;
}

// SHA-256 of every regular file below `dir`, by relative path.
std::map<std::string, std::string> tree_digest(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out[fs::relative(e.path(), dir).string()] = io::sha256_file_hex(e.path().string());
    }
  }
  return out;
}

std::vector<double> val_losses(const std::string& metrics) {
  std::vector<double> out;
  std::string text = test::read_file(metrics);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    auto j = nlohmann::json::parse(text.substr(pos, nl - pos));
    pos = nl + 1;
    if (j.at("split") == "val") out.push_back(j.at("loss").get<double>());
  }
  return out;
}

// An adapter trained 3 steps (non-zero B) with lora_dropout `dropout`, in
// its own directory: the shared starting point of the dropout tests.
std::string trained_adapter(const std::string& tag, const std::string& dropout) {
  static std::map<std::string, std::string> made;
  if (made.count(dropout)) {
    const std::string dst = test::make_temp_dir(tag) + "/adapter";
    fs::copy(made[dropout], dst);
    return dst;
  }
  RunDir r = make_run("adapter_" + dropout, 3, "dropout: " + dropout);
  auto res = run_train(r);
  EXPECT_EQ(res.status, 0) << res.out;
  made[dropout] = r.dir + "/adapter";
  return trained_adapter(tag, dropout);
}

// The same adapter with adapter_config.json saying lora_dropout `d`.
std::string with_dropout(const std::string& adapter, double d, const std::string& tag) {
  const std::string dst = test::make_temp_dir(tag) + "/adapter";
  fs::copy(adapter, dst);
  auto cfg = nlohmann::json::parse(test::read_file(dst + "/adapter_config.json"));
  cfg["lora_dropout"] = d;
  test::write_file(dst + "/adapter_config.json", cfg.dump(2));
  return dst;
}

}  // namespace

// ---- LoRA dropout at inference ----------------------------------------------------

TEST(Dropout, LogitsGenerateAndEvalIgnoreDropoutAndRepeatBitwise) {
  const std::string a9 = with_dropout(trained_adapter("d9", "0.0"), 0.9, "d9b");
  const std::string a0 = with_dropout(a9, 0.0, "d0");
  const std::string tmp = test::make_temp_dir("dropout_out");
  // logits: dropout 0.9 twice, and dropout 0: the same bytes.
  for (const auto& [name, adapter] : {std::pair{"l9a", a9}, {"l9b", a9}, {"l0", a0}}) {
    auto r = test::run(bin() + " logits --model " + test::quote(model_dir()) + " --adapter " +
                       test::quote(adapter) + " --ids '1 5 9 13 17 21' --out " + tmp + "/" + name +
                       ".safetensors 2>&1");
    ASSERT_EQ(r.status, 0) << r.out;
  }
  auto l9a = io::SafetensorsFile::open(tmp + "/l9a.safetensors")->tensor("logits");
  auto l9b = io::SafetensorsFile::open(tmp + "/l9b.safetensors")->tensor("logits");
  auto l0 = io::SafetensorsFile::open(tmp + "/l0.safetensors")->tensor("logits");
  EXPECT_TRUE(l9a.equal(l9b));
  EXPECT_TRUE(l9a.equal(l0)) << "dropout 0.9 changed the logits at inference";
  // generate (sampling off) and eval.
  auto gen = [&](const std::string& adapter) {
    auto r =
        test::run(bin() + " generate --model " + test::quote(model_dir()) + " --adapter " +
                  test::quote(adapter) + " --ids '1 22' --max-new-tokens 12 --json 2>/dev/null");
    EXPECT_EQ(r.status, 0) << r.out;
    return r.out;
  };
  const std::string g9 = gen(a9);
  EXPECT_EQ(g9, gen(a9));
  EXPECT_EQ(g9, gen(a0));
  auto ev = [&](const std::string& adapter) {
    auto r = test::run(bin() + " eval --model " + test::quote(model_dir()) + " --adapter " +
                       test::quote(adapter) + " --data " + test::quote(train_data()) +
                       " --json 2>/dev/null");
    EXPECT_EQ(r.status, 0) << r.out;
    return r.out;
  };
  const std::string e9 = ev(a9);
  EXPECT_EQ(e9, ev(a9));
  EXPECT_EQ(e9, ev(a0));
}

// With the same weights (lr so small that no update changes a float32
// weight), validation losses in metrics.jsonl do not depend on dropout.
TEST(Dropout, ValidationLossesDoNotDependOnDropout) {
  const std::string init = trained_adapter("val_init", "0.0");
  std::vector<std::vector<double>> vals;
  for (const char* d : {"0.0", "0.9"}) {
    RunDir r =
        make_run(std::string("val_") + d, 3, std::string("dropout: ") + d + ", init_from: " + init);
    auto res = run_train(r, "train.optimizer.lr=1e-30");
    ASSERT_EQ(res.status, 0) << res.out;
    vals.push_back(val_losses(r.dir + "/metrics.jsonl"));
  }
  ASSERT_EQ(vals[0].size(), 3u);
  EXPECT_EQ(vals[0], vals[1]);
}

// ---- outputs never over inputs -------------------------------------------------------

TEST(OutputPaths, MergeAndLogitsRefuseToWriteOverTheirInputs) {
  // A private copy of the model: a bug here must not destroy the fixture.
  const std::string root = test::make_temp_dir("outpaths");
  const std::string model = root + "/models/m";
  fs::create_directories(root + "/models");
  fs::copy(model_dir(), model, fs::copy_options::recursive);
  const std::string adapter = root + "/adapter";
  fs::copy(trained_adapter("outpaths_a", "0.0"), adapter, fs::copy_options::recursive);
  const auto model_before = tree_digest(model);
  const auto adapter_before = tree_digest(adapter);
  struct Case {
    std::string args, expect;
  };
  const std::string m = test::quote(model), a = test::quote(adapter);
  const std::vector<Case> cases = {
      {"merge --model " + m + " --adapter " + a + " --out " + m + " --overwrite",
       "' is the --model"},
      {"merge --model " + m + " --adapter " + a + " --out " + root + "/models --overwrite",
       "' contains the --model"},
      {"merge --model " + m + " --adapter " + a + " --out " + root + " --overwrite",
       "' contains the --model"},
      {"merge --model " + m + " --adapter " + a + " --out " + a + "/merged --overwrite",
       "' lies inside the --adapter"},
      {"merge --model " + m + " --adapter " + a + " --out " + m + "/../m/ --overwrite",
       "' is the --model"},
      {"logits --model " + m + " --ids '1 2' --out " + m + "/model.safetensors",
       "' lies inside the --model"},
      {"logits --model " + m + " --adapter " + a + " --ids '1 2' --out " + a +
           "/adapter_model.safetensors",
       "' lies inside the --adapter"},
  };
  for (const auto& c : cases) {
    auto r = test::run(bin() + " " + c.args + " 2>&1");
    expect_one_error(r, 1, {"--out '", c.expect, "never writes over its inputs"});
  }
  EXPECT_EQ(tree_digest(model), model_before);
  EXPECT_EQ(tree_digest(adapter), adapter_before);
  // A symlink to the model is the model.
  fs::create_directory_symlink(model, root + "/link");
  auto r = test::run(bin() + " logits --model " + m + " --ids '1 2' --out " + root +
                     "/link/model.safetensors 2>&1");
  expect_one_error(r, 1, {"lies inside the --model"});
  EXPECT_EQ(tree_digest(model), model_before);
}

TEST(OutputPaths, TrainRefusesAnOutputDirOverItsModelOrData) {
  RunDir r = make_run("train_over_model", 1);
  auto res = run_train(r, "output.dir=" + model_dir() + " output.overwrite=true");
  expect_one_error(res, 1, {"output.dir '", "' is the model.path"});
  const std::string data_parent = fs::path(train_data()).parent_path().string();
  res = run_train(r, "output.dir=" + data_parent + " output.overwrite=true");
  expect_one_error(res, 1, {"' contains the data.train[0]"});
}

TEST(OutputPaths, NothingIsReplacedUnaskedOrUnlikeWhatTheCommandWrites) {
  const std::string root = test::make_temp_dir("replace");
  const std::string m = test::quote(model_dir());
  const std::string kept = root + "/kept.safetensors", fifo = root + "/fifo";
  test::write_file(kept, "precious");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  // An existing file needs --overwrite.
  auto r = test::run(bin() + " logits --model " + m + " --ids '1 2' --out " + kept + " 2>&1");
  expect_one_error(r, 1, {"--out: '" + kept + "' already exists (pass --overwrite"});
  EXPECT_EQ(test::read_file(kept), "precious");
  // What is not a regular file is never replaced, not even with --overwrite
  // (as root, `--out /dev/null` would otherwise replace the system's).
  r = test::run(bin() + " logits --model " + m + " --ids '1 2' --out " + fifo +
                " --overwrite 2>&1");
  expect_one_error(r, 4, {fifo + ": is a FIFO, not a regular file; refusing to replace it"});
  EXPECT_TRUE(fs::is_fifo(fifo));
  // A directory output over a file, a file output over a directory.
  const std::string adapter = trained_adapter("replace_a", "0.0");
  r = test::run(bin() + " merge --model " + m + " --adapter " + test::quote(adapter) + " --out " +
                kept + " --overwrite 2>&1");
  expect_one_error(r, 4, {kept + ": is a file, not a directory; refusing to replace it"});
  EXPECT_EQ(test::read_file(kept), "precious");
  r = test::run(bin() + " export-gguf --model " + m + " --out " + root + " --overwrite 2>&1");
  expect_one_error(r, 4, {root + ": is a directory, not a regular file"});
  EXPECT_TRUE(fs::is_fifo(fifo));
  // With --overwrite a regular file is replaced.
  r = test::run(bin() + " logits --model " + m + " --ids '1 2' --out " + kept +
                " --overwrite 2>&1");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(io::SafetensorsFile::open(kept)->tensor("logits").defined());
}

TEST(OutputPaths, ARunThatCannotStartLeavesTheRunItWouldReplace) {
  // output.overwrite replaces an earlier run only once the new one is set up:
  // bad data (or a bad model) leaves the earlier adapter, metrics and config.
  RunDir r = make_run("replace_run", 1);
  ASSERT_EQ(run_train(r).status, 0);
  const auto before = tree_digest(r.dir);
  ASSERT_TRUE(before.count("adapter/adapter_model.safetensors"));
  const std::string bad = r.root + "/bad.jsonl";
  test::write_file(bad, "garbage\n");
  auto res = run_train(r, "output.overwrite=true data.train=" + bad);
  EXPECT_EQ(res.status, 3) << res.out;
  EXPECT_EQ(error_lines(res.out).size(), 1u) << res.out;
  EXPECT_EQ(tree_digest(r.dir), before);
  // A run that starts replaces it.
  res = run_train(r, "output.overwrite=true train.max_steps=2");
  ASSERT_EQ(res.status, 0) << res.out;
  EXPECT_NE(tree_digest(r.dir), before);
}

// ---- one writer per output ------------------------------------------------------------

TEST(Lock, ASecondTrainOnALiveRunDirIsRefusedNamingThePid) {
  RunDir r = make_run("lock_train", 400);
  auto bg = test::run("(" + bin() + " train --plain " + test::quote(r.config) + " > " + r.root +
                      "/first.log 2>&1 & echo $!)");
  const pid_t pid = static_cast<pid_t>(std::stol(bg.out));
  bool started = false;
  for (int i = 0; i < 6000 && !started; ++i) {
    started = fs::exists(r.dir + "/checkpoints/step-1/state.json");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(started) << test::read_file(r.root + "/first.log");
  const std::string pid_text = "(pid " + std::to_string(pid) + ")";
  auto again = run_train(r, "output.overwrite=true");
  expect_one_error(again, 4,
                   {"output.dir '" + r.dir + "' is in use by another loratune process", pid_text});
  auto resume = run_train(r, "--resume");
  expect_one_error(resume, 4, {"in use by another loratune process", pid_text});
  EXPECT_TRUE(fs::exists(r.dir + "/metrics.jsonl"));
  ::kill(pid, SIGTERM);
  test::run("while kill -0 " + std::to_string(pid) + " 2>/dev/null; do sleep 0.05; done");
  // The lock went with its holder: resuming now works (and stops at once).
  auto after = run_train(r, "--resume --stop-after-step 1");
  EXPECT_NE(after.status, 4) << after.out;
  EXPECT_FALSE(fs::exists(r.dir + "/.loratune.lock")) << "the lock file outlived its run";
}

TEST(Lock, MergeIntoAnOutputAnotherMergeHoldsIsRefused) {
  const std::string adapter = trained_adapter("lock_merge", "0.0");
  const std::string out = test::make_temp_dir("lock_merge_out") + "/merged";
  // flock(1) holds OUT.lock as a running merge would (-o: only flock itself
  // holds it, so killing flock releases it).
  auto bg = test::run("(flock -o " + out + ".lock sleep 30 > /dev/null 2>&1 & echo $!)");
  const std::string holder = bg.out.substr(0, bg.out.find('\n'));
  for (int i = 0; i < 200 && !fs::exists(out + ".lock"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto r = test::run(bin() + " merge --model " + test::quote(model_dir()) + " --adapter " +
                     test::quote(adapter) + " --out " + out + " 2>&1");
  expect_one_error(r, 4, {"--out '" + out + "' is in use by another loratune process"});
  EXPECT_FALSE(fs::exists(out));
  test::run("kill " + holder + "; sleep 0.2");
  r = test::run(bin() + " merge --model " + test::quote(model_dir()) + " --adapter " +
                test::quote(adapter) + " --out " + out + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(fs::exists(out + "/config.json"));
}

// ---- non-finite weights ---------------------------------------------------------------

TEST(NonFinite, AnInfiniteLrWritesNoAdapter) {
  RunDir r = make_run("nan_lr", 2);
  auto res = run_train(r, "train.optimizer.lr=1e308");
  expect_one_error(res, 3, {"training diverged: the LoRA weights are not finite"});
  EXPECT_FALSE(fs::exists(r.dir + "/adapter"));
  EXPECT_FALSE(fs::exists(r.dir + "/checkpoints/step-2"));
}

// A run that diverges after a good checkpoint keeps that checkpoint, even
// with keep_checkpoints 1, and names it.
TEST(NonFinite, TheLastFiniteCheckpointIsNeverPruned) {
  RunDir r = make_run("nan_keep", 4);
  auto first = run_train(r, "--stop-after-step 2");
  ASSERT_EQ(first.status, 143) << first.out;
  ASSERT_TRUE(fs::exists(r.dir + "/checkpoints/step-2/state.json"));
  auto res = run_train(r, "--resume --allow-config-change train.optimizer.lr=1e308");
  expect_one_error(
      res, 3,
      {"training diverged", "the last finite checkpoint is " + r.dir + "/checkpoints/step-2"});
  EXPECT_TRUE(fs::exists(r.dir + "/checkpoints/step-2/state.json"));
  EXPECT_FALSE(fs::exists(r.dir + "/checkpoints/step-3"));
  EXPECT_FALSE(fs::exists(r.dir + "/adapter"));
  auto f =
      io::SafetensorsFile::open(r.dir + "/checkpoints/step-2/adapter/adapter_model.safetensors");
  for (const auto& info : f->tensors()) {
    EXPECT_TRUE(at::isfinite(f->tensor(info.name)).all().item<bool>()) << info.name;
  }
}

// ---- resume with another config -------------------------------------------------------

TEST(Resume, AConfigThatChangesTrainingIsRefusedUnlessAllowed) {
  RunDir r = make_run("resume_change", 4);
  ASSERT_EQ(run_train(r, "--stop-after-step 2").status, 143);
  auto res = run_train(r, "--resume train.optimizer.lr=1e-2 seed=9");
  expect_one_error(res, 1,
                   {"--resume: this config changes training against " + r.dir + "/config.yaml",
                    "seed 3 -> 9", "train.optimizer.lr 0.005 -> 0.01", "--allow-config-change"});
  // The adapter's shape cannot change, allowed or not: one line naming the key.
  res = run_train(r, "--resume --allow-config-change lora.r=8");
  expect_one_error(
      res, 1,
      {"--resume: lora.r cannot change on resume (4 in " + r.dir + "/config.yaml, 8 now)",
       "resume with lora.r=4"});
  res = run_train(r, "--resume --allow-config-change lora.use_dora=true");
  expect_one_error(res, 1, {"--resume: lora.use_dora cannot change on resume"});
  // Logging and checkpoint cadence may change freely.
  auto neutral =
      run_train(r, "--resume train.log_every=2 train.keep_checkpoints=3 --stop-after-step 3");
  ASSERT_EQ(neutral.status, 143) << neutral.out;
  auto allowed = run_train(r, "--resume --allow-config-change train.optimizer.lr=1e-2");
  ASSERT_EQ(allowed.status, 0) << allowed.out;
  const std::string cfg = test::read_file(r.dir + "/config.yaml");
  EXPECT_NE(cfg.find("# resumed at step 3 with changes:\n#   train.optimizer.lr: 0.005 -> 0.01"),
            std::string::npos)
      << cfg;
}

// A checkpoint is input like any other: every field of its state.json is
// range-checked (a step of -1 would train with a negative learning rate, 99
// would skip the run's steps), its adapter is checked as adapters are, and
// its metrics.jsonl holds only metrics records. Each refusal is one line,
// exit 5, naming the file and the key; the intact checkpoint then resumes.
TEST(Resume, ADamagedCheckpointIsRefusedNamingTheFileAndKey) {
  RunDir r = make_run("resume_damaged", 4);
  ASSERT_EQ(run_train(r, "--stop-after-step 2").status, 143);
  const std::string ckpt = r.dir + "/checkpoints/step-2";
  const std::string state_path = ckpt + "/state.json";
  const std::string state_text = test::read_file(state_path);
  struct Case {
    std::string key;  // JSON pointer into state.json
    nlohmann::json value;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"/step", -1, "key 'step' is -1, outside [1, 4]"},
      {"/step", 0, "key 'step' is 0, outside [1, 4]"},
      {"/step", 99, "key 'step' is 99, outside [1, 4]"},
      {"/step", "2", "key 'step' must be an integer (got \"2\")"},
      {"/step", 2.5, "key 'step' must be an integer (got 2.5)"},
      {"/total_steps", "x", "key 'total_steps' must be an integer"},
      {"/world_size", 0, "key 'world_size' is 0, outside [1, "},
      {"/sequences_per_step", 0, "key 'sequences_per_step' is 0, outside [1, "},
      {"/tokens_seen", -5, "key 'tokens_seen' is -5"},
      {"/elapsed_s", "soon", "key 'elapsed_s' must be a finite number >= 0"},
      {"/data_position/epoch", 1000000, "key 'data_position.epoch' is 1000000"},
      {"/data_position/index", -1, "key 'data_position.index' is -1"},
      {"/data_position/index", 100000, "key 'data_position.index' is 100000"},
      {"/data_position/epoch", 1, "key 'data_position' is {epoch 1, index 4}, but 2 steps"},
      {"/data_position", nullptr, "key 'data_position' must be an object"},
  };
  for (const Case& c : cases) {
    nlohmann::json js = nlohmann::json::parse(state_text);
    js[nlohmann::json::json_pointer(c.key)] = c.value;
    test::write_file(state_path, js.dump());
    expect_one_error(run_train(r, "--resume"), 5, {state_path + ": " + c.expect});
  }
  test::write_file(state_path, state_text);

  // adapter_config.json that does not describe its tensors (r 8 over rank 4).
  const std::string adapter_config = ckpt + "/adapter/adapter_config.json";
  const std::string config_text = test::read_file(adapter_config);
  nlohmann::json ac = nlohmann::json::parse(config_text);
  ac["r"] = 8;
  test::write_file(adapter_config, ac.dump());
  expect_one_error(run_train(r, "--resume"), 5, {adapter_config + " gives", "r = 8", "rank 4"});
  test::write_file(adapter_config, config_text);

  // A line that is no metrics record is refused, not copied into the run.
  const std::string metrics = ckpt + "/metrics.jsonl";
  const std::string metrics_text = test::read_file(metrics);
  test::write_file(metrics, metrics_text + "garbage\n");
  expect_one_error(run_train(r, "--resume"), 5,
                   {metrics + ":", ": not a metrics record", "garbage"});
  test::write_file(metrics, metrics_text + "{\"step\": 3, \"split\": \"train\"}\n");
  expect_one_error(run_train(r, "--resume"), 5, {metrics + ":", "in [1, 2]"});
  test::write_file(metrics, metrics_text);

  auto ok = run_train(r, "--resume");
  ASSERT_EQ(ok.status, 0) << ok.out;
  EXPECT_EQ(test::read_file(r.dir + "/metrics.jsonl").find("garbage"), std::string::npos);
}

// A lower max_steps than the checkpoint's run is refused as before (exit 1),
// not trained as 0 steps.
TEST(Resume, AMaxStepsBelowTheCheckpointsStepIsRefused) {
  RunDir r = make_run("resume_fewer", 4);
  ASSERT_EQ(run_train(r, "--stop-after-step 3").status, 143);
  expect_one_error(run_train(r, "--resume train.max_steps=2"), 1,
                   {"checkpoint of a run of 4 steps, but this config gives 2"});
  EXPECT_FALSE(fs::exists(r.dir + "/adapter"));
}

// Without the run's config.yaml the resume guard cannot check the config: refused.
TEST(Resume, AMissingRunConfigIsRefused) {
  RunDir r = make_run("resume_noconfig", 4);
  ASSERT_EQ(run_train(r, "--stop-after-step 2").status, 143);
  fs::remove(r.dir + "/config.yaml");
  expect_one_error(run_train(r, "--resume seed=9 train.optimizer.lr=1e-2"), 5,
                   {"--resume: " + r.dir + "/config.yaml is missing"});
  EXPECT_FALSE(fs::exists(r.dir + "/config.yaml"));
  EXPECT_FALSE(fs::exists(r.dir + "/adapter"));
}

// checkpoints/step-N names the writer never gives (not a number, out of
// int64 range, a leading zero) are not checkpoints: ignored.
TEST(Resume, StepDirectoriesThatAreNoCheckpointNamesAreIgnored) {
  RunDir r = make_run("resume_names", 4);
  ASSERT_EQ(run_train(r, "--stop-after-step 2").status, 143);
  for (const char* name : {"step-99999999999999999999", "step-x", "step-007", "step--1"}) {
    const std::string d = r.dir + "/checkpoints/" + name;
    fs::create_directories(d);
    test::write_file(d + "/state.json", "{}");
  }
  auto res = run_train(r, "--resume");
  ASSERT_EQ(res.status, 0) << res.out;
  EXPECT_NE(res.out.find("resumed from " + r.dir + "/checkpoints/step-2"), std::string::npos)
      << res.out;
}

// A stop after training (here the test hook's SIGTERM after the last step)
// ends the exports cleanly: exit 143, one line naming what is missing, no
// temp files; --resume then writes the missing exports (only with the run's
// config) and afterwards has nothing to resume.
TEST(Resume, AStopDuringTheExportsExits143AndResumeWritesThem) {
  RunDir r = make_run("resume_exports", 2);
  const std::string outputs = "output.merge=true output.gguf.adapter=true ";
  auto stopped = run_train(r, outputs + "--stop-after-step 2");
  EXPECT_EQ(stopped.status, 143) << stopped.out;
  EXPECT_NE(stopped.out.find("loratune: stopped by signal 15 during the exports; the adapter is "
                             "in " +
                             r.dir + "/adapter; not written yet: merged, adapter.gguf"),
            std::string::npos)
      << stopped.out;
  EXPECT_TRUE(error_lines(stopped.out).empty()) << stopped.out;
  EXPECT_TRUE(fs::exists(r.dir + "/adapter/adapter_model.safetensors"));
  EXPECT_FALSE(fs::exists(r.dir + "/merged"));
  for (const auto& e : fs::directory_iterator(r.dir)) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
  const auto adapter = tree_digest(r.dir + "/adapter");
  expect_one_error(run_train(r, outputs + "--resume seed=9"), 1,
                   {"holds a finished run", "(seed 3 -> 9)"});
  auto resumed = run_train(r, outputs + "--resume");
  ASSERT_EQ(resumed.status, 0) << resumed.out;
  EXPECT_NE(resumed.out.find("holds the finished run (2 steps); writing the exports it lacks"),
            std::string::npos)
      << resumed.out;
  EXPECT_TRUE(fs::exists(r.dir + "/merged/model.safetensors"));
  EXPECT_TRUE(fs::exists(r.dir + "/adapter.gguf"));
  EXPECT_EQ(tree_digest(r.dir + "/adapter"), adapter) << "the trained adapter is kept";
  expect_one_error(run_train(r, outputs + "--resume"), 1, {"nothing to resume"});
}

// ---- data, file system -------------------------------------------------------------------

TEST(BadRuns, TokenIdsOutsideTheVocabularyAreOneLine) {
  RunDir r = make_run("vocab", 1);
  const std::string data = r.root + "/big_ids.jsonl";
  test::write_file(data, "{\"input_ids\": [1, 2, 3, 4]}\n{\"input_ids\": [1, 999999, 3, 4]}\n");
  auto res = run_train(r, "data.train=" + data + " data.val_fraction=0 train.eval_every=0");
  expect_one_error(
      res, 3, {"big_ids.jsonl:2: 'input_ids'[1] = 999999 is outside the vocabulary [0, 1000)"});
  EXPECT_FALSE(fs::exists(r.dir)) << "an early failure left " << r.dir;
}

TEST(BadRuns, AnUnwritableOutputDirIsOneLine) {
  RunDir r = make_run("rodir", 1);
  // /proc refuses new directories even to root.
  auto res = run_train(r, "output.dir=/proc/loratune-test-run");
  expect_one_error(res, 4, {"output.dir '/proc/loratune-test-run': cannot create it"});
}

TEST(BadRuns, AnEarlyFailureLeavesNoDirectoryItCreated) {
  RunDir r = make_run("early", 1);
  const std::string out = r.root + "/new/deeper/run";
  const std::string data = r.root + "/broken.jsonl";
  test::write_file(data, "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2\n");
  auto res = run_train(r, "output.dir=" + out + " data.train=" + data);
  EXPECT_EQ(res.status, 3) << res.out;
  EXPECT_EQ(error_lines(res.out).size(), 1u) << res.out;
  EXPECT_FALSE(fs::exists(r.root + "/new")) << res.out;
}
