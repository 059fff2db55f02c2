// trainer/cli/cmd_train.cpp — `loratune train CONFIG [key=value ...] [--resume]`.
//
// Exit codes: 0 when training finished; 130 (SIGINT) or 143 (SIGTERM) when a
// signal stopped it after writing a checkpoint (continue with --resume);
// otherwise the code of the error's kind (trainer/io/error.h), e.g. 3 (data)
// for an abort after train.max_bad_steps non-finite steps (a checkpoint is
// written first). A signal after training stops the exports (output.merge,
// output.gguf) before the next one, 130/143 too: the merge at its next
// tensor, a GGUF file once written; --resume then writes the missing ones. A
// second SIGINT/SIGTERM kills at once.
#include <torch/cuda.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "trainer/cli/commands.h"
#include "trainer/cli/paths.h"
#include "trainer/config/config.h"
#include "trainer/dist/dist.h"
#include "trainer/export/merge.h"
#include "trainer/gguf/export.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/error.h"
#include "trainer/io/lock.h"
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
  bool allow_config_change = false;
  int64_t stop_after_step = 0;
  std::string crash_at;  // test hook "RANK:STEP" (RunOptions::crash_rank/crash_step)
};

// The inputs output.dir must stay clear of (paths.h). The config file is
// not one: it is read once at start, and `train RUN/config.yaml --resume`
// is a normal way to continue a run.
std::vector<NamedPath> inputs_of(const config::TrainConfig& cfg) {
  std::vector<NamedPath> in = {{"model.path", cfg.model.path},
                               {"lora.init_from", cfg.lora.init_from}};
  for (size_t i = 0; i < cfg.data.train.size(); ++i) {
    in.emplace_back("data.train[" + std::to_string(i) + "]", cfg.data.train[i]);
  }
  for (size_t i = 0; i < cfg.data.validation.size(); ++i) {
    in.emplace_back("data.validation[" + std::to_string(i) + "]", cfg.data.validation[i]);
  }
  return in;
}

gguf::OutType gguf_type_of(config::GgufType t) {
  return gguf::parse_out_type(config::to_string(t));
}

// output.gguf: a model or tokenizer the GGUF export cannot carry is refused
// before training starts, not after the run. `model_dir` is what the run
// trains on (a .gguf model.path's import).
void check_gguf_output(const config::TrainConfig& cfg, const std::string& model_dir) {
  const config::GgufOutputConfig& g = cfg.output.gguf;
  if (g.type == config::GgufType::kNone && !g.adapter) return;
  const bool model = g.type != config::GgufType::kNone;
  const std::string key =
      model ? "output.gguf.type=" + config::to_string(g.type) : "output.gguf.adapter=true";
  try {
    gguf::check_exportable(model_dir, model ? gguf_type_of(g.type) : gguf::OutType::kF32, !model);
    if (model) (void)gguf::stop_strings(model_dir);  // the Modelfile's
  } catch (const Error& e) {
    throw Error(key + ": this model cannot be written as GGUF after training (set " +
                    (model ? "output.gguf.type=none" : "output.gguf.adapter=false") +
                    " to train without it): ",
                e);
  }
}

// output.gguf after a finished run: what `export-gguf --model model.path
// --adapter DIR/adapter --type T` (+ --modelfile) and `... --adapter-only`
// write, into DIR/model.<type>.gguf + DIR/Modelfile and DIR/adapter.gguf.
// `todo` says which (names as train::missing_exports gives them); `stop()`
// is asked before each, and a nonzero answer ends the exports there (an
// export already started runs to its end: the GGUF writer is not
// interruptible, and its file appears complete or not at all).
void write_gguf_outputs(const config::TrainConfig& cfg, const std::vector<std::string>& todo,
                        const std::function<void()>& stop) {
  const config::GgufOutputConfig& g = cfg.output.gguf;
  const std::string adapter = cfg.output.dir + "/adapter";
  auto wanted = [&](const std::string& name) {
    return std::find(todo.begin(), todo.end(), name) != todo.end();
  };
  if (g.type != config::GgufType::kNone && wanted("model." + config::to_string(g.type) + ".gguf")) {
    stop();
    gguf::ExportOptions eo;
    eo.model_dir = cfg.model.path;
    eo.adapter_dir = adapter;
    eo.out_path = cfg.output.dir + "/model." + config::to_string(g.type) + ".gguf";
    eo.type = gguf_type_of(g.type);
    eo.overwrite = true;
    gguf::resolve_gguf_model(eo);
    const std::vector<std::string> stops = gguf::stop_strings(eo.model_dir);
    const gguf::ExportSummary s = gguf::export_gguf(eo);
    for (const auto& note : s.notes) std::fprintf(stderr, "loratune: note: %s\n", note.c_str());
    std::fprintf(stderr, "loratune: GGUF written to %s (%s %s, %zu weights merged)\n",
                 eo.out_path.c_str(), s.arch.c_str(), gguf::out_type_name(eo.type), s.adapted);
    const std::string mf = gguf::write_modelfile(eo.out_path, "", stops);
    std::fprintf(stderr, "loratune: Ollama Modelfile written to %s\n", mf.c_str());
  }
  if (g.adapter && wanted("adapter.gguf")) {
    stop();
    gguf::ExportOptions ao;
    ao.model_dir = cfg.model.path;
    ao.adapter_dir = adapter;
    ao.out_path = cfg.output.dir + "/adapter.gguf";
    ao.type = gguf::OutType::kF32;
    ao.adapter_only = true;
    ao.overwrite = true;
    gguf::resolve_gguf_model(ao);
    const gguf::ExportSummary s = gguf::export_gguf(ao);
    std::fprintf(stderr, "loratune: LoRA adapter GGUF written to %s (%zu adapted projections)\n",
                 ao.out_path.c_str(), s.adapted);
  }
}

// Restores the default SIGINT / SIGTERM action when the run and its
// exports are over, however they end.
struct SignalHandlers {
  SignalHandlers() {
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
  }
  ~SignalHandlers() {
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
  }
  SignalHandlers(const SignalHandlers&) = delete;
  SignalHandlers& operator=(const SignalHandlers&) = delete;
};

void train_and_merge(const TrainOptions& o, const config::TrainConfig& cfg, dist::Group* group) {
  train::RunOptions ro;
  ro.group = group;
  if (!o.crash_at.empty()) {
    const size_t colon = o.crash_at.find(':');
    ro.crash_rank = std::stoi(o.crash_at.substr(0, colon));
    ro.crash_step = std::stoll(o.crash_at.substr(colon + 1));
  }
  ro.resume = o.resume;
  ro.stop_signal = &g_stop_signal;
  ro.stop_after_step = o.stop_after_step;
  ro.plain_progress = o.plain;
  ro.allow_config_change = o.allow_config_change;
  // A .gguf model.path is read through its float32 import (imported once).
  ro.model_dir = gguf::resolve_model_path(cfg.model.path);
  check_gguf_output(cfg, ro.model_dir);
  // Installed for the run and its exports: a signal during the exports ends
  // them cleanly too (exit 130/143; --resume writes what is missing).
  SignalHandlers handlers;
  train::RunResult r = train::run_training(cfg, ro);
  if (r.stopped_by_signal != 0) throw CLI::RuntimeError(128 + r.stopped_by_signal);
  if (group != nullptr && !group->is_main()) return;  // rank 0 writes the exports
  // A run that finished has every export to write; a resumed finished run
  // only those its directory lacks.
  std::vector<std::string> todo = train::missing_exports(cfg);
  if (!r.exports_only) {
    todo.clear();
    if (cfg.output.merge) todo.push_back("merged");
    if (cfg.output.gguf.type != config::GgufType::kNone) {
      todo.push_back("model." + config::to_string(cfg.output.gguf.type) + ".gguf");
    }
    if (cfg.output.gguf.adapter) todo.push_back("adapter.gguf");
  }
  // A signal (or --stop-after-step at the last step, the test hook's
  // "SIGTERM after step N") stops before the next export: what is written
  // stays, the rest is named for --resume.
  auto stop = [&] {
    int sig = g_stop_signal.load();
    if (sig == 0 && o.stop_after_step > 0 && !r.exports_only && r.steps_done >= o.stop_after_step) {
      sig = SIGTERM;
    }
    if (sig == 0) return;
    const std::vector<std::string> missing = train::missing_exports(cfg);
    std::string names;
    for (const std::string& m : missing) names += (names.empty() ? "" : ", ") + m;
    if (missing.empty()) {
      std::fprintf(stderr, "loratune: stopped by signal %d after the exports; all are in %s\n", sig,
                   cfg.output.dir.c_str());
    } else {
      std::fprintf(stderr,
                   "loratune: stopped by signal %d during the exports; the adapter is in "
                   "%s/adapter; not written yet: %s (write them with --resume)\n",
                   sig, cfg.output.dir.c_str(), names.c_str());
    }
    throw CLI::RuntimeError(128 + sig);
  };
  if (std::find(todo.begin(), todo.end(), "merged") != todo.end()) {
    stop();
    exporter::MergeOptions mo;
    mo.model_dir = ro.model_dir;
    mo.adapter_dir = cfg.output.dir + "/adapter";
    mo.out_dir = cfg.output.dir + "/merged";
    if (cfg.output.merge_dtype) {
      mo.dtype = model::parse_dtype(config::to_string(*cfg.output.merge_dtype));
    }
    mo.overwrite = true;
    if (cfg.model.quantize == config::Quantize::kNf4) {  // QLoRA: the dequantized base it trained
      mo.base_quantize = {model::Quantization::kNf4, cfg.model.double_quant};
      mo.quantized_dtype = model::parse_dtype(config::to_string(cfg.model.dtype));
    }
    mo.facts.data_files = cfg.data.train;
    mo.facts.steps = r.steps_done;
    const train::FinalLosses fl = train::read_final_losses(cfg.output.dir + "/metrics.jsonl");
    mo.facts.final_train_loss = fl.train;
    mo.facts.final_val_loss = fl.val;
    mo.stop_signal = &g_stop_signal;
    try {
      exporter::merge_adapter(mo);
    } catch (const exporter::Interrupted&) {
      stop();  // the merge's temp directory is gone; name what is missing
      throw;
    }
    std::fprintf(stderr, "loratune: merged model written to %s\n", mo.out_dir.c_str());
  }
  write_gguf_outputs(cfg, todo, stop);
  if (!todo.empty()) stop();  // a signal during the last export: it is written, but say so
}

void run_train(const TrainOptions& o) {
  namespace fs = std::filesystem;
  config::TrainConfig cfg = config::load_train_config(o.config, o.overrides);
  refuse_output_over_inputs("output.dir", cfg.output.dir, inputs_of(cfg));
  // Under torchrun: join the group; rank 0 alone owns output.dir (its lock,
  // its clean-up), the others only train.
  std::unique_ptr<dist::Group> group;
  if (const std::optional<dist::LaunchEnv> env = dist::launch_env(); env && env->world_size > 1) {
    // NCCL (when built) for a run on GPUs, Gloo on the CPU. With sharded base
    // weights, backward issues all-gathers as well as the gradient
    // all-reduces: those get a process group of their own.
    const bool cuda = cfg.device != "cpu" && torch::cuda::is_available();
    group = std::make_unique<dist::Group>(*env, std::chrono::seconds(cfg.train.dist_timeout_s),
                                          cuda, cfg.train.shard_base);
    if (!group->is_main()) {
      train_and_merge(o, cfg, group.get());
      return;
    }
  }
  // One writer per run directory, for the whole run and its merge. A run that
  // fails before writing anything leaves no directory it created behind.
  fs::path dir = fs::absolute(cfg.output.dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // "runs/x/"
  fs::path first_created;                               // the outermost directory this call creates
  for (fs::path p = dir; !p.empty() && !fs::exists(p); p = p.parent_path()) {
    first_created = p;
    if (p == p.parent_path()) break;
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    throw Error("output.dir '" + cfg.output.dir + "': cannot create it: " + ec.message(),
                ErrorKind::kIo);
  }
  std::optional<io::DirLock> lock;
  lock.emplace((dir / ".loratune.lock").string(), "output.dir '" + cfg.output.dir + "'");
  try {
    train_and_merge(o, cfg, group.get());
  } catch (...) {
    lock.reset();
    if (!first_created.empty()) {
      for (fs::path p = dir; fs::is_directory(p, ec) && fs::is_empty(p, ec); p = p.parent_path()) {
        fs::remove(p, ec);
        if (p == first_created) break;
      }
    }
    throw;
  }
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  CLI::App* sub = app.add_subcommand(
      "train",
      "Train a LoRA adapter as a YAML config says (see configs/). Writes OUTPUT_DIR/config.yaml, "
      "metrics.jsonl, checkpoints/step-N/ and adapter/ (PEFT format); with output.merge merged/, "
      "with output.gguf model.<type>.gguf + Modelfile (Ollama) and adapter.gguf. SIGINT/SIGTERM "
      "write a checkpoint and exit 130/143; continue with --resume. Data parallel: `torchrun "
      "--nproc-per-node N --no-python loratune train CONFIG` (rank 0 writes; train.global_batch, "
      "train.shard_base).");
  sub->add_option("config", o->config, "YAML config file")->required();
  sub->add_option("overrides", o->overrides, "key=value overrides, e.g. train.optimizer.lr=1e-4");
  sub->add_flag("--resume", o->resume,
                "continue from the newest checkpoint in output.dir (bitwise identical on CPU)");
  sub->add_flag("--allow-config-change", o->allow_config_change,
                "with --resume: accept a config that changes training (lr, data, seed, ...) "
                "against the run's config.yaml; the changes are recorded there as comments");
  sub->add_flag("--plain", o->plain, "plain log lines instead of a progress bar");
  // Test hook: behave as if SIGTERM arrived after step N.
  sub->add_option("--stop-after-step", o->stop_after_step)->group("");
  // Test hook for torchrun restarts: rank RANK kills itself after step STEP
  // (first attempt only), as a crashed node would.
  sub->add_option("--test-crash-at", o->crash_at)->group("");
  sub->callback([o] { run_train(*o); });
}

}  // namespace loratune::cli
