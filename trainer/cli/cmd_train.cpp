// trainer/cli/cmd_train.cpp — `loratune train CONFIG [key=value ...] [--resume]`.
//
// Exit codes: 0 when training finished; 130 (SIGINT) or 143 (SIGTERM) when a
// signal stopped it after writing a checkpoint (continue with --resume);
// 1 on errors, including an abort after train.max_bad_steps non-finite steps
// (a checkpoint is written first). A second SIGINT/SIGTERM kills at once.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "trainer/cli/commands.h"
#include "trainer/config/config.h"
#include "trainer/export/merge.h"
#include "trainer/io/error.h"
#include "trainer/model/loader.h"
#include "trainer/train/train.h"

namespace loratune::cli {
namespace {

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
  std::signal(sig, SIG_DFL);  // a second signal ends the process
}

struct TrainOptions {
  std::string config;
  std::vector<std::string> overrides;
  bool resume = false;
  bool plain = false;
  int64_t stop_after_step = 0;
};

void run_train(const TrainOptions& o) {
  config::TrainConfig cfg = config::load_config(o.config, o.overrides);
  train::RunOptions ro;
  ro.resume = o.resume;
  ro.stop_signal = &g_stop_signal;
  ro.stop_after_step = o.stop_after_step;
  ro.plain_progress = o.plain;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  train::RunResult r = train::run_training(cfg, ro);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (r.stopped_by_signal != 0) throw CLI::RuntimeError(128 + r.stopped_by_signal);
  if (cfg.output.merge) {
    exporter::MergeOptions mo;
    mo.model_dir = cfg.model.path;
    mo.adapter_dir = cfg.output.dir + "/adapter";
    mo.out_dir = cfg.output.dir + "/merged";
    if (cfg.output.merge_dtype) {
      mo.dtype = model::parse_dtype(config::to_string(*cfg.output.merge_dtype));
    }
    mo.overwrite = true;
    mo.facts.data_files = cfg.data.train;
    mo.facts.steps = r.steps_done;
    const train::FinalLosses fl = train::read_final_losses(cfg.output.dir + "/metrics.jsonl");
    mo.facts.final_train_loss = fl.train;
    mo.facts.final_val_loss = fl.val;
    exporter::merge_adapter(mo);
    std::fprintf(stderr, "loratune: merged model written to %s\n", mo.out_dir.c_str());
  }
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  CLI::App* sub = app.add_subcommand(
      "train",
      "Train a LoRA adapter as a YAML config says (see configs/). Writes OUTPUT_DIR/config.yaml, "
      "metrics.jsonl, checkpoints/step-N/ and adapter/ (PEFT format). SIGINT/SIGTERM write a "
      "checkpoint and exit 130/143; continue with --resume.");
  sub->add_option("config", o->config, "YAML config file")->required();
  sub->add_option("overrides", o->overrides, "key=value overrides, e.g. train.optimizer.lr=1e-4");
  sub->add_flag("--resume", o->resume,
                "continue from the newest checkpoint in output.dir (bitwise identical on CPU)");
  sub->add_flag("--plain", o->plain, "plain log lines instead of a progress bar");
  // Test hook: behave as if SIGTERM arrived after step N.
  sub->add_option("--stop-after-step", o->stop_after_step)->group("");
  sub->callback([o] { run_train(*o); });
}

}  // namespace loratune::cli
