// `loratune train` end to end on a tiny model with shuffling, packing and
// dropout on: the run directory, resume after a stop request, after an
// external SIGTERM or SIGINT and after kill -9 (bitwise identical losses and
// adapter on CPU), refusing a finished run, non-finite loss handling,
// `loratune eval`.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <sstream>
#include <thread>

#include "train_test_util.h"
#include "trainer/io/safetensors.h"
#include "trainer/lora/peft_io.h"

namespace fs = std::filesystem;
using namespace loratune;

namespace {

struct RunDir {
  std::string dir, config;
};

// A config for the tiny model + tokenizer of the ref_train fixture, training
// on its pre-tokenized data (4 to 20 tokens an example) with dropout,
// shuffling and packing (rows of up to 64 tokens) on.
RunDir make_run(const std::string& tag, int64_t steps, const std::string& extra = "") {
  RunDir r;
  const std::string root = test::make_temp_dir(tag);
  r.dir = root + "/run";
  r.config = root + "/cfg.yaml";
  const std::string data = test::ref_train_dir() + "/llama-rope3-tied/train.jsonl";
  test::write_file(r.config,
                   "model: {path: " + test::ref_train_dir() +
                       "/tokmodel, dtype: float32}\n"
                       "device: cpu\nseed: 7\n"
                       "lora: {r: 4, alpha: 8, dropout: 0.1, target_modules: all-linear}\n"
                       "data: {train: " +
                       data +
                       ", format: tokenized, max_seq_len: 64, shuffle: true, "
                       "packing: true, val_fraction: 0.1}\n"
                       "train:\n  max_steps: " +
                       std::to_string(steps) +
                       "\n  micro_batch_size: 2\n  gradient_accumulation_steps: 2\n"
                       "  optimizer: {lr: 1.0e-3, weight_decay: 0.01}\n"
                       "  scheduler: {name: cosine, warmup_steps: 2}\n"
                       "  save_every: 2\n  keep_checkpoints: 2\n  eval_every: 4\n" +
                       extra + "output: {dir: " + r.dir + "}\n");
  return r;
}

test::RunResult train(const RunDir& r, const std::string& args = "") {
  return test::run(test::quote(test::loratune_bin()) + " train --plain " + test::quote(r.config) +
                   " " + args + " 2>&1");
}

// The records of metrics.jsonl with this split, in file order.
std::vector<nlohmann::json> records(const RunDir& r, const std::string& split) {
  std::vector<nlohmann::json> out;
  std::string text = test::read_file(r.dir + "/metrics.jsonl");
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    auto j = nlohmann::json::parse(text.substr(pos, nl - pos));
    pos = nl + 1;
    if (j.at("split") == split) out.push_back(std::move(j));
  }
  return out;
}

// (step, loss) of every train record, and val losses, in file order.
std::vector<std::pair<int64_t, double>> losses(const RunDir& r,
                                               const std::string& split = "train") {
  std::vector<std::pair<int64_t, double>> out;
  for (const auto& j : records(r, split)) {
    out.emplace_back(j.at("step"), j.at("loss").get<double>());
  }
  return out;
}

void expect_same_adapter(const RunDir& a, const RunDir& b) {
  auto fa = io::SafetensorsFile::open(a.dir + "/adapter/adapter_model.safetensors");
  auto fb = io::SafetensorsFile::open(b.dir + "/adapter/adapter_model.safetensors");
  ASSERT_EQ(fa->tensors().size(), fb->tensors().size());
  for (const auto& info : fa->tensors()) {
    ASSERT_TRUE(fb->contains(info.name)) << info.name;
    EXPECT_TRUE(fa->tensor(info.name).equal(fb->tensor(info.name))) << info.name;
  }
}

TEST(TrainCli, RunDirectoryAndResumeAfterStopIsBitwiseIdentical) {
  RunDir full = make_run("train_full", 8);
  auto rf = train(full);
  ASSERT_EQ(rf.status, 0) << rf.out;
  for (const char* f : {"config.yaml", "metrics.jsonl", "adapter/adapter_model.safetensors",
                        "adapter/adapter_config.json", "checkpoints/step-6/state.json",
                        "checkpoints/step-6/optimizer.safetensors"}) {
    EXPECT_TRUE(fs::exists(full.dir + "/" + f)) << f;
  }
  EXPECT_FALSE(fs::exists(full.dir + "/checkpoints/step-2")) << "keep_checkpoints: 2";
  auto lf = losses(full);
  ASSERT_EQ(lf.size(), 8u);
  EXPECT_EQ(losses(full, "val").size(), 2u);  // step 4 and the end
  EXPECT_NE(lf.front().second, lf.back().second);
  // Packing packs: a step (2 micro-batches of 2 rows) holds more tokens than
  // 4 rows of one example each could.
  size_t longest = 0;
  for (const auto& s :
       test::read_tokenized(test::ref_train_dir() + "/llama-rope3-tied/train.jsonl"))
    longest = std::max(longest, s.input_ids.size());
  int64_t most = 0;
  for (const auto& j : records(full, "train")) most = std::max(most, j.at("tokens").get<int64_t>());
  EXPECT_GT(most, static_cast<int64_t>(4 * longest)) << "data.packing put one example per row";

  RunDir part = make_run("train_stop", 8);
  auto r1 = train(part, "--stop-after-step 3");
  ASSERT_EQ(r1.status, 143) << r1.out;
  EXPECT_TRUE(fs::exists(part.dir + "/checkpoints/step-3/state.json")) << r1.out;
  EXPECT_FALSE(fs::exists(part.dir + "/adapter"));
  auto r2 = train(part, "--resume");
  ASSERT_EQ(r2.status, 0) << r2.out;
  auto lp = losses(part);
  ASSERT_EQ(lp.size(), lf.size());
  for (size_t i = 0; i < lf.size(); ++i) {
    EXPECT_EQ(lp[i].first, lf[i].first);
    EXPECT_EQ(lp[i].second, lf[i].second) << "step " << lf[i].first;  // bitwise
  }
  EXPECT_EQ(losses(part, "val"), losses(full, "val"));
  expect_same_adapter(full, part);

  // A finished run is never overwritten, nor resumed.
  auto again = train(full);
  EXPECT_EQ(again.status, 1);
  EXPECT_NE(again.out.find("holds a finished run"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find(full.dir), std::string::npos) << again.out;
  auto resume_done = train(full, "--resume");
  EXPECT_EQ(resume_done.status, 1) << resume_done.out;
  auto over = train(full, "output.overwrite=true");
  EXPECT_EQ(over.status, 0) << over.out;
  EXPECT_EQ(losses(full), lf);  // replaced, same run again

  // eval on the validation split's files = the whole training file here.
  auto ev = test::run(test::quote(test::loratune_bin()) + " eval " + test::quote(full.config) +
                      " --json 2>&1");
  ASSERT_EQ(ev.status, 0) << ev.out;
  auto j = nlohmann::json::parse(ev.out.substr(ev.out.find('{')));
  EXPECT_GT(j.at("tokens").get<int64_t>(), 0);
  EXPECT_NEAR(j.at("perplexity").get<double>(), std::exp(j.at("loss").get<double>()), 1e-9);
}

// eval --compare-base prints, in one call, what a plain eval without and one
// with the adapter print: the same numbers, bitwise, in JSON and in text.
TEST(TrainCli, EvalCompareBaseEqualsPlainEvalsWithoutAndWithTheAdapter) {
  RunDir r = make_run("eval_compare", 4);
  auto tr = train(r);
  ASSERT_EQ(tr.status, 0) << tr.out;
  const std::string eval = test::quote(test::loratune_bin()) + " eval --model " +
                           test::quote(test::ref_train_dir() + "/tokmodel") + " --data " +
                           test::quote(test::ref_train_dir() + "/llama-rope3-tied/train.jsonl");
  const std::string with_adapter = eval + " --adapter " + test::quote(r.dir + "/adapter");
  auto plain_base = test::run(eval + " --json 2>/dev/null");
  auto plain_tuned = test::run(with_adapter + " --json 2>/dev/null");
  auto both = test::run(with_adapter + " --compare-base --json 2>/dev/null");
  ASSERT_EQ(plain_base.status, 0) << plain_base.out;
  ASSERT_EQ(plain_tuned.status, 0) << plain_tuned.out;
  ASSERT_EQ(both.status, 0) << both.out;
  const auto jb = nlohmann::json::parse(plain_base.out);
  const auto jt = nlohmann::json::parse(plain_tuned.out);
  const auto j = nlohmann::json::parse(both.out);
  EXPECT_EQ(j.at("base"), jb);
  EXPECT_EQ(j.at("adapter"), jt);
  EXPECT_EQ(j.size(), 2u) << both.out;
  // 4 steps at lr 1e-3 move the loss: the two rows are not one model twice.
  EXPECT_NE(jb.at("loss").get<double>(), jt.at("loss").get<double>());

  // Text: a header and one row per model whose columns are plain eval's
  // "loss L perplexity P tokens N" values.
  auto text_base = test::run(eval + " 2>/dev/null");
  auto text_tuned = test::run(with_adapter + " 2>/dev/null");
  auto table = test::run(with_adapter + " --compare-base 2>/dev/null");
  ASSERT_EQ(table.status, 0) << table.out;
  std::istringstream rows(table.out);
  std::string header, base_row, adapter_row;
  std::getline(rows, header);
  std::getline(rows, base_row);
  std::getline(rows, adapter_row);
  EXPECT_EQ(header.substr(0, 5), "model") << table.out;
  auto columns = [](const std::string& line) {
    std::istringstream in(line);
    std::vector<std::string> out;
    for (std::string w; in >> w;) out.push_back(w);
    return out;
  };
  auto as_row = [&](const std::string& name, const std::string& plain) {
    const auto w = columns(plain);  // loss L perplexity P tokens N
    return w.size() == 6 ? std::vector<std::string>{name, w[1], w[3], w[5]} : w;
  };
  EXPECT_EQ(columns(base_row), as_row("base", text_base.out)) << table.out;
  EXPECT_EQ(columns(adapter_row), as_row("adapter", text_tuned.out)) << table.out;

  // With a config the adapter is output.dir/adapter: its row is eval CONFIG's.
  auto cfg_plain = test::run(test::quote(test::loratune_bin()) + " eval " + test::quote(r.config) +
                             " --json 2>/dev/null");
  auto cfg_both = test::run(test::quote(test::loratune_bin()) + " eval " + test::quote(r.config) +
                            " --compare-base --json 2>/dev/null");
  ASSERT_EQ(cfg_both.status, 0) << cfg_both.out;
  EXPECT_EQ(nlohmann::json::parse(cfg_both.out).at("adapter"),
            nlohmann::json::parse(cfg_plain.out));

  // No adapter to compare with: one line, exit 1, before any model is read.
  auto none = test::run(eval + " --compare-base 2>&1");
  EXPECT_EQ(none.status, 1) << none.out;
  EXPECT_EQ(none.out,
            "loratune: error: eval: --compare-base needs an adapter (--adapter DIR, or a "
            "config)\n");
}

TEST(TrainCli, ResumeAfterKill9IsBitwiseIdentical) {
  const int64_t steps = 20;
  RunDir full = make_run("kill_full", steps);
  ASSERT_EQ(train(full).status, 0);
  RunDir part = make_run("kill_part", steps);
  // Start in the background, SIGKILL it as soon as a checkpoint exists.
  auto bg = test::run("(" + test::quote(test::loratune_bin()) + " train --plain " +
                      test::quote(part.config) + " > /dev/null 2>&1 & echo $!)");
  const pid_t pid = static_cast<pid_t>(std::stol(bg.out));
  bool killed = false;
  for (int i = 0; i < 6000 && !killed; ++i) {
    if (fs::exists(part.dir + "/checkpoints/step-2/state.json")) {
      ::kill(pid, SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  test::run("while kill -0 " + std::to_string(pid) + " 2>/dev/null; do sleep 0.05; done");
  ASSERT_TRUE(killed);
  ASSERT_FALSE(fs::exists(part.dir + "/adapter")) << "the run ended before the kill";
  auto r = train(part, "--resume");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(losses(part), losses(full));
  expect_same_adapter(full, part);
}

// Starts `loratune train --plain CONFIG` as a child of this process (output
// to `log`), with default signal handling, so waitpid gives its exit status.
pid_t start_train(const RunDir& r, const std::string& log) {
  std::vector<std::string> args = {test::loratune_bin(), "train", "--plain", r.config};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, stop;
  sigemptyset(&none);
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &stop);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  EXPECT_EQ(rc, 0) << "posix_spawn " << argv[0];
  return pid;
}

// An external SIGTERM (SIGINT) sent with kill() mid-run: the run stops after
// the current step with a checkpoint at that step, exits 143 (130) without
// adapter/, and --resume gives bitwise the step losses, validation losses and
// adapter of the uninterrupted run.
TEST(TrainCli, ResumeAfterSigtermOrSigintIsBitwiseIdentical) {
  const int64_t steps = 20;
  RunDir full = make_run("sig_full", steps);
  auto rf = train(full);
  ASSERT_EQ(rf.status, 0) << rf.out;
  const auto full_losses = losses(full);
  ASSERT_EQ(full_losses.size(), static_cast<size_t>(steps));
  for (const auto& [sig, code] : {std::pair{SIGTERM, 143}, std::pair{SIGINT, 130}}) {
    SCOPED_TRACE(sig == SIGTERM ? "SIGTERM" : "SIGINT");
    RunDir part = make_run(sig == SIGTERM ? "sig_term" : "sig_int", steps);
    const std::string log = part.dir + ".log";
    const pid_t pid = start_train(part, log);
    ASSERT_GT(pid, 0);
    bool sent = false, reaped = false;
    int status = 0;
    for (int i = 0; i < 12000 && !sent && !reaped; ++i) {  // up to 60 s
      if (fs::exists(part.dir + "/checkpoints/step-2/state.json")) {
        ASSERT_EQ(::kill(pid, sig), 0);
        sent = true;
      } else if (::waitpid(pid, &status, WNOHANG) == pid) {
        reaped = true;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
    if (!reaped) {
      ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    }
    const std::string out = test::read_file(log);
    ASSERT_TRUE(sent) << "the run ended before the signal:\n" << out;
    ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping:\n" << out;
    EXPECT_EQ(WEXITSTATUS(status), code) << out;
    EXPECT_FALSE(fs::exists(part.dir + "/adapter")) << out;
    // It stopped mid-run after step n (the steps metrics.jsonl holds), with a
    // checkpoint of step n.
    const auto seen = losses(part);
    const int64_t n = static_cast<int64_t>(seen.size());
    EXPECT_GE(n, 2);
    EXPECT_LT(n, steps) << out;
    const std::string ckpt = part.dir + "/checkpoints/step-" + std::to_string(n);
    ASSERT_TRUE(fs::exists(ckpt + "/state.json")) << out;
    EXPECT_EQ(nlohmann::json::parse(test::read_file(ckpt + "/state.json")).at("step"), n);
    EXPECT_EQ(seen, std::vector(full_losses.begin(), full_losses.begin() + n));

    auto r = train(part, "--resume");
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(losses(part), full_losses);
    EXPECT_EQ(losses(part, "val"), losses(full, "val"));
    expect_same_adapter(full, part);
  }
}

TEST(TrainCli, NonFiniteLossSkipsThenAbortsWithCheckpoint) {
  RunDir r = make_run("train_nan", 8, "  max_bad_steps: 2\n  max_grad_norm: 0\n");
  // lr 1e30 from step 0 (constant, no warmup): the first update blows the
  // adapter up, the next losses are not finite.
  auto res = train(r,
                   "train.optimizer.lr=1e30 train.scheduler.name=constant "
                   "train.scheduler.warmup_steps=0");
  EXPECT_EQ(res.status, 3) << res.out;  // ErrorKind::kData
  EXPECT_NE(res.out.find("training aborted"), std::string::npos) << res.out;
  EXPECT_NE(res.out.find("update skipped"), std::string::npos) << res.out;
  EXPECT_TRUE(fs::exists(r.dir + "/checkpoints/step-3/state.json")) << res.out;
  EXPECT_FALSE(fs::exists(r.dir + "/adapter"));
}

TEST(TrainCli, SequencesLongerThanTheModelsPositionsAreRefused) {
  RunDir r = make_run("train_seqlen", 2);
  auto res = train(r, "data.max_seq_len=100000");
  EXPECT_EQ(res.status, 1) << res.out;
  EXPECT_NE(res.out.find("data.max_seq_len=100000 exceeds the model's max_position_embeddings"),
            std::string::npos)
      << res.out;
  EXPECT_FALSE(fs::exists(r.dir + "/adapter"));
}

// output.merge: the run ends with merged/ whose model card carries the last
// logged train and validation losses of metrics.jsonl and the data's SHA-256.
TEST(TrainCli, MergeAtTheEndWritesAModelCardWithTheFinalLosses) {
  RunDir r = make_run("train_merge", 4);
  auto res = train(r, "output.merge=true");
  ASSERT_EQ(res.status, 0) << res.out;
  ASSERT_TRUE(fs::exists(r.dir + "/merged/config.json")) << res.out;
  const std::string card = test::read_file(r.dir + "/merged/README.md");
  auto value_after = [&](const std::string& key) {
    size_t at = card.find(key);
    EXPECT_NE(at, std::string::npos) << key << " in\n" << card;
    return at == std::string::npos ? 0.0 : std::stod(card.substr(at + key.size()));
  };
  const double train_loss = losses(r).back().second;
  const double val_loss = losses(r, "val").back().second;
  EXPECT_NEAR(value_after("- final training loss: "), train_loss, 1e-5 * train_loss);
  EXPECT_NEAR(value_after("- final validation loss: "), val_loss, 1e-5 * val_loss);
  EXPECT_NE(card.find("| train.jsonl | "), std::string::npos) << card;
}

// DoRA, PiSSA and OLoRA through `loratune train`: a run stopped and resumed
// ends bitwise where an unbroken one does, and the run's merged model gives
// the logits of the original base with the run's adapter applied unmerged
// (for PiSSA / OLoRA the saved rank-2r adapter, on the untouched base).
TEST(TrainCli, LoraVariantsResumeBitwiseAndMergeEqualsAdapterOnTheOriginalBase) {
  const std::string base = test::ref_train_dir() + "/tokmodel";
  auto logits = [&](const std::string& args, const std::string& out) {
    auto r = test::run(test::quote(test::loratune_bin()) + " logits " + args +
                       " --ids \"3 17 5 9 24 11 2 30\" --out " + test::quote(out) + " 2>&1");
    EXPECT_EQ(r.status, 0) << r.out;
    return io::SafetensorsFile::open(out)->tensor("logits").clone();
  };
  struct Variant {
    std::string tag, overrides, card;
    int64_t saved_r;
  };
  for (const Variant& v :
       {Variant{"dora", "lora.use_dora=true", "| DoRA | yes", 4},
        Variant{"pissa", "lora.init=pissa", "| DoRA | no", 8},
        Variant{"olora", "lora.init=olora lora.use_rslora=true", "| DoRA | no", 8}}) {
    SCOPED_TRACE(v.tag);
    RunDir full = make_run("variant_full_" + v.tag, 6);
    auto rf = train(full, v.overrides + " output.merge=true");
    ASSERT_EQ(rf.status, 0) << rf.out;
    RunDir part = make_run("variant_part_" + v.tag, 6);
    auto r1 = train(part, v.overrides + " --stop-after-step 3");
    ASSERT_EQ(r1.status, 143) << r1.out;
    auto r2 = train(part, v.overrides + " --resume");
    ASSERT_EQ(r2.status, 0) << r2.out;
    EXPECT_EQ(losses(part), losses(full));
    expect_same_adapter(full, part);

    const lora::LoraSpec saved = lora::read_adapter_config(full.dir + "/adapter");
    EXPECT_EQ(saved.r, v.saved_r);
    EXPECT_EQ(saved.init, lora::LoraInit::kDefault);
    EXPECT_NE(test::read_file(full.dir + "/merged/README.md").find(v.card), std::string::npos);
    const std::string tmp = test::make_temp_dir("variant_logits_" + v.tag);
    const at::Tensor merged = logits("--model " + test::quote(full.dir + "/merged"), tmp + "/m");
    const at::Tensor unmerged =
        logits("--model " + test::quote(base) + " --adapter " + test::quote(full.dir + "/adapter"),
               tmp + "/u");
    const at::Tensor plain = logits("--model " + test::quote(base), tmp + "/b");
    EXPECT_LE((merged - unmerged).abs().max().item<double>(), 1e-4);
    EXPECT_GT((unmerged - plain).abs().max().item<double>(), 1e-3) << "the adapter learned nothing";
  }
}

// `loratune eval CONFIG` of a QLoRA run evaluates the model the run trained
// (its NF4 base plus the adapter): the loss of the run's last validation.
TEST(TrainCli, EvalOfAQloraRunConfigGivesTheRunsValidationLoss) {
  RunDir r = make_run("train_qlora_eval", 4);
  const std::string data = test::ref_train_dir() + "/llama-rope3-tied/train.jsonl";
  const std::string val = "data.val_fraction=0 data.validation=[" + data + "]";
  auto res = train(r, "model.quantize=nf4 " + val);
  ASSERT_EQ(res.status, 0) << res.out;
  const double run_loss = losses(r, "val").back().second;
  auto eval_loss = [&](const std::string& overrides) {
    auto ev = test::run(test::quote(test::loratune_bin()) + " eval " + test::quote(r.config) + " " +
                        overrides + " --json 2>&1");
    EXPECT_EQ(ev.status, 0) << ev.out;
    return nlohmann::json::parse(ev.out.substr(ev.out.find('{'))).at("loss").get<double>();
  };
  EXPECT_NEAR(eval_loss("model.quantize=nf4 " + val), run_loss, 1e-5 * run_loss);
  // The same adapter on the float base is another model.
  EXPECT_GT(std::abs(eval_loss(val) - run_loss), 1e-4 * run_loss);
}

}  // namespace
