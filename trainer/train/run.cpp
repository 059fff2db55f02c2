// run_training: the run directory policy (open_run_dir), then a TrainingRun
// in three phases.
//
// Setup (the constructor), in order: seed; load the model; inject LoRA (then
// lora.init_from); prepare the data; build the Trainer; on resume restore the
// newest checkpoint; resolve config.yaml. loop(): write config.yaml, then the
// steps, logging through StepLogger (metrics.cpp), checkpoints, evaluations,
// stops. finish(): the final evaluation, the summary line and the adapter.
//
// A distributed run (RunOptions::group) runs the same phases on every rank:
// rank 0 opens the run directory and shares the checkpoint to resume from;
// each rank counts the step's micro-batches and collates only its share
// (Trainer all-reduces the gradients); rank 0 alone writes. Setup ends with
// every rank learning whether any failed, so one bad rank gives one clear
// error.
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <malloc.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include "trainer/dist/dist.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/lora/peft_io.h"
#include "trainer/model/loader.h"
#include "trainer/tokenizer/tokenizer.h"
#include "trainer/train/device.h"
#include "trainer/train/train.h"

namespace fs = std::filesystem;

namespace loratune::train {

namespace {

// The device of this process: `device` from the config, where a
// distributed run's ranks on one node take one GPU each (cuda:LOCAL_RANK).
std::string resolve_device(const std::string& d, const dist::Group* group) {
  const int local = group != nullptr ? group->env().local_rank : 0;
  if (d == "auto") {
    return torch::cuda::is_available() ? "cuda:" + std::to_string(local) : "cpu";
  }
  if (group == nullptr || d == "cpu") return d;
  if (d == "cuda") return "cuda:" + std::to_string(local);
  if (group->env().local_world_size > 1) {
    throw Error("device=" + d + " under torchrun with " +
                std::to_string(group->env().local_world_size) +
                " ranks on this node would put them all on one GPU; set device=auto or cuda "
                "(rank i of a node takes cuda:LOCAL_RANK)");
  }
  return d;
}

// Micro-batches each rank accumulates per optimizer step: the config's
// gradient_accumulation_steps, or what train.global_batch gives on `world`
// ranks.
int64_t accumulation_per_rank(const config::TrainLoopConfig& t, int world) {
  if (!t.global_batch) return t.gradient_accumulation_steps;
  const int64_t per = t.micro_batch_size * world;
  const int64_t gb = *t.global_batch;
  if (gb % per != 0) {
    const int64_t below = gb / per * per;
    throw Error("train.global_batch=" + std::to_string(gb) +
                " is not a multiple of train.micro_batch_size (" +
                std::to_string(t.micro_batch_size) + ") x " + std::to_string(world) +
                " ranks = " + std::to_string(per) + "; the nearest valid values are " +
                (below > 0 ? std::to_string(below) + " and " : std::string()) +
                std::to_string(below + per));
  }
  const int64_t accum = gb / per;
  if (t.gradient_accumulation_steps != 1 && t.gradient_accumulation_steps != accum) {
    throw Error("train.global_batch=" + std::to_string(gb) + " gives " + std::to_string(accum) +
                " micro-batches per rank on " + std::to_string(world) +
                " rank(s), but train.gradient_accumulation_steps=" +
                std::to_string(t.gradient_accumulation_steps) +
                "; set only one of them (global_batch keeps the step the same on any number "
                "of ranks)");
  }
  if (accum > 1024) {
    throw Error("train.global_batch=" + std::to_string(gb) + " needs " + std::to_string(accum) +
                " micro-batches per rank (at most 1024); raise train.micro_batch_size");
  }
  return accum;
}

at::ScalarType to_scalar_type(config::DType d) {
  switch (d) {
    case config::DType::kFloat32:
      return at::kFloat;
    case config::DType::kBFloat16:
      return at::kBFloat16;
    case config::DType::kFloat16:
      return at::kHalf;
  }
  return at::kFloat;
}

// 16 -> "16", 0.5 -> "0.5" (the shortest form of a config number).
std::string format_number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// ", with DoRA, init pissa, LoRA+ ratio 16" (what differs from plain LoRA), or "".
std::string adapter_variants(const config::TrainConfig& cfg) {
  std::vector<std::string> parts;
  if (cfg.lora.use_rslora) parts.push_back("rsLoRA");
  if (cfg.lora.use_dora) parts.push_back("DoRA");
  if (cfg.lora.init != config::LoraInit::kDefault) {
    parts.push_back("init " + config::to_string(cfg.lora.init));
  }
  if (cfg.train.optimizer.loraplus_lr_ratio) {
    parts.push_back("LoRA+ ratio " + format_number(*cfg.train.optimizer.loraplus_lr_ratio));
  }
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? ", with " : ", ") + p;
  return out;
}

lora::LoraSpec spec_of(const config::TrainConfig& cfg) {
  lora::LoraSpec s;
  s.r = cfg.lora.r;
  s.alpha = cfg.lora.alpha;
  s.dropout = cfg.lora.dropout;
  s.use_rslora = cfg.lora.use_rslora;
  s.use_dora = cfg.lora.use_dora;
  switch (cfg.lora.init) {
    case config::LoraInit::kDefault:
      s.init = lora::LoraInit::kDefault;
      break;
    case config::LoraInit::kGaussian:
      s.init = lora::LoraInit::kGaussian;
      break;
    case config::LoraInit::kPissa:
      s.init = lora::LoraInit::kPissa;
      break;
    case config::LoraInit::kOlora:
      s.init = lora::LoraInit::kOlora;
      break;
  }
  s.target_modules = cfg.lora.target_modules;
  s.base_model_name_or_path = cfg.model.path;
  return s;
}

constexpr const char* kRunLockName = ".loratune.lock";

// Everything a run writes (output.merge, output.gguf included).
void remove_run_files(const fs::path& out) {
  for (const char* name :
       {"adapter", "checkpoints", "metrics.jsonl", "config.yaml", "merged", "model.f32.gguf",
        "model.f16.gguf", "model.bf16.gguf", "model.q8_0.gguf", "adapter.gguf", "Modelfile"}) {
    fs::remove_all(out / name);
  }
}

}  // namespace

std::vector<std::string> missing_exports(const config::TrainConfig& cfg) {
  const fs::path out(cfg.output.dir);
  std::vector<std::string> missing;
  if (cfg.output.merge && !fs::exists(out / "merged")) missing.push_back("merged");
  if (cfg.output.gguf.type != config::GgufType::kNone) {
    const std::string gguf = "model." + config::to_string(cfg.output.gguf.type) + ".gguf";
    if (!fs::exists(out / gguf) || !fs::exists(out / "Modelfile")) missing.push_back(gguf);
  }
  if (cfg.output.gguf.adapter && !fs::exists(out / "adapter.gguf")) {
    missing.push_back("adapter.gguf");
  }
  return missing;
}

namespace {

// Refuses to clobber runs. Returns true when output.overwrite is to replace
// an earlier run's files: the caller removes them (remove_run_files) only
// once the new run's setup (model, data) succeeded, so a run that cannot
// start leaves the earlier one as it was.
bool prepare_run_dir(const config::TrainConfig& cfg, bool resume) {
  const fs::path out(cfg.output.dir);
  const bool finished = fs::exists(out / "adapter");
  if (resume) {
    if (finished) {
      throw Error("output.dir '" + out.string() + "' holds a finished run (" +
                  (out / "adapter").string() + " exists); nothing to resume");
    }
    return false;
  }
  // Empty but for the lock file `loratune train` holds (io/lock.h).
  bool empty = true;
  std::error_code ec;
  if (fs::is_directory(out, ec)) {
    for (const auto& e : fs::directory_iterator(out)) {
      if (e.path().filename() != kRunLockName) empty = false;
    }
  }
  if (empty) {
    fs::create_directories(out);
    return false;
  }
  if (!cfg.output.overwrite) {
    if (finished) {
      throw Error("output.dir '" + out.string() + "' holds a finished run (" +
                  (out / "adapter").string() + " exists); set output.overwrite=true to replace it");
    }
    if (fs::exists(out / "checkpoints") || fs::exists(out / "metrics.jsonl")) {
      throw Error("output.dir '" + out.string() +
                  "' holds an unfinished run; pass --resume to continue it or set "
                  "output.overwrite=true to start again");
    }
    throw Error("output.dir '" + out.string() +
                "' is not empty; choose another directory or set output.overwrite=true");
  }
  return true;
}

// Every input id in [0, vocab) and every label -100 or in [0, vocab): a
// tokenizer or pre-tokenized file that does not match the model would
// otherwise index past the embedding.
void check_token_ids(const std::vector<data::Example>& examples, int64_t vocab,
                     const std::string& split, const std::string& model_dir) {
  for (size_t i = 0; i < examples.size(); ++i) {
    const data::Example& ex = examples[i];
    auto bad = [&](const char* what, int64_t id) {
      throw Error("data: " + split + " example " + std::to_string(i + 1) + " has " + what + " " +
                      std::to_string(id) + " outside the model's vocabulary [0, " +
                      std::to_string(vocab) + ") (" + model_dir +
                      "/config.json vocab_size); the tokenizer or the pre-tokenized data does "
                      "not belong to this model",
                  ErrorKind::kData);
    };
    for (int32_t id : ex.input_ids) {
      if (id < 0 || id >= vocab) bad("input id", id);
    }
    for (int32_t id : ex.labels) {
      if (id != -100 && (id < 0 || id >= vocab)) bad("label", id);
    }
  }
}

// The error for LoRA weights that became NaN/inf by step `step`.
Error diverged(int64_t step, const std::string& run_dir) {
  const std::string last = latest_checkpoint(run_dir);
  return Error("training diverged: the LoRA weights are not finite (NaN or inf) after step " +
                   std::to_string(step) + "; nothing non-finite was written" +
                   (last.empty() ? std::string() : "; the last finite checkpoint is " + last) +
                   " (lower train.optimizer.lr or set train.max_grad_norm)",
               ErrorKind::kData);
}

// The config.yaml of this run. On resume, a config that changes training
// against the run's own config.yaml is refused unless allowed; allowed
// changes are recorded as comments after the earlier history.
//
// train.gradient_accumulation_steps may change with the number of ranks when
// the sequences per step stay the same (`same_global_batch`): that resumes
// the same training on another world size, noted as a comment.
std::string resolved_config_text(const config::TrainConfig& cfg, const std::string& run_dir,
                                 const std::string& resume_from, int64_t step,
                                 const RunOptions& opts, bool same_global_batch,
                                 const std::string& world_note) {
  const std::string now = config::to_yaml(cfg);
  const std::string path = run_dir + "/config.yaml";
  if (resume_from.empty() || !fs::exists(path)) return now;
  const std::string before = io::read_file(path);
  std::string history;  // the "# resumed ..." lines already there
  for (size_t pos = 0; pos < before.size();) {
    size_t nl = before.find('\n', pos);
    if (nl == std::string::npos) nl = before.size();
    const std::string line = before.substr(pos, nl - pos);
    if (line.rfind("# resumed", 0) == 0 || line.rfind("#   ", 0) == 0) history += line + "\n";
    pos = nl + 1;
  }
  std::vector<ConfigChange> changes = config_changes(before, now);
  std::string world_change;
  if (same_global_batch) {
    for (auto it = changes.begin(); it != changes.end(); ++it) {
      if (it->key != "train.gradient_accumulation_steps") continue;
      world_change = "# resumed at step " + std::to_string(step) + " " + world_note +
                     ": train.gradient_accumulation_steps " + it->before + " -> " + it->after +
                     " keeps the sequences per step\n";
      changes.erase(it);
      break;
    }
  }
  if (changes.empty()) return now + history + world_change;
  std::string list;
  for (const ConfigChange& c : changes) {
    list += (list.empty() ? "" : ", ") + c.key + " " + c.before + " -> " + c.after;
  }
  if (!opts.allow_config_change) {
    throw Error("--resume: this config changes training against " + path + ": " +
                printable(list, 600) +
                "; resume with the run's config, or pass --allow-config-change to continue "
                "with the new values");
  }
  std::string note = "# resumed at step " + std::to_string(step) + " with changes:\n";
  for (const ConfigChange& c : changes) {
    note += "#   " + c.key + ": " + c.before + " -> " + c.after + "\n";
  }
  return now + history + world_change + note;
}

// Validation micro-batches in file order.
std::vector<MicroBatch> eval_batches(const std::vector<data::Example>& examples,
                                     const config::TrainConfig& cfg, int32_t pad_id,
                                     const c10::Device& device) {
  std::vector<MicroBatch> out;
  if (examples.empty()) return out;
  auto seqs = data::make_sequences(examples, cfg.data.max_seq_len, cfg.data.packing);
  const size_t bs = static_cast<size_t>(cfg.train.micro_batch_size);
  for (size_t i = 0; i < seqs.size(); i += bs) {
    std::vector<const data::Sequence*> rows;
    for (size_t j = i; j < std::min(seqs.size(), i + bs); ++j) rows.push_back(&seqs[j]);
    out.push_back(to_micro_batch(data::collate(rows, pad_id), device, cfg.data.packing));
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// "loratune: 20 steps, 81920 tokens in 12.3 s (6660 tokens/s)", on CUDA with
// "; peak GPU memory 17.2 GiB allocated, 18.0 GiB reserved".
std::string run_summary(int64_t steps, int64_t tokens, double seconds, const c10::Device& device) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "loratune: %lld steps, %lld tokens in %.1f s (%.0f tokens/s)",
                static_cast<long long>(steps), static_cast<long long>(tokens), seconds,
                static_cast<double>(tokens) / std::max(1e-9, seconds));
  std::string line = buf;
  if (const std::optional<MemoryStats> mem = memory_stats(device)) {
    std::snprintf(buf, sizeof buf, "; peak GPU memory %.2f GiB allocated, %.2f GiB reserved",
                  static_cast<double>(mem->peak_allocated) / kGiB,
                  static_cast<double>(mem->peak_reserved) / kGiB);
    line += buf;
  }
  return line;
}

// What open_run_dir decided: the checkpoint a resume continues from ("" for
// a fresh run) and whether an earlier run's files are to be replaced once the
// new run is set up.
struct RunDirPlan {
  std::string resume_from;
  bool replace_earlier = false;
  bool exports_only = false;  // --resume of a finished run whose requested exports are missing
};

// The run's own config.yaml, which --resume checks this config against. A
// run directory without it cannot be checked, so it is refused rather than
// resumed with whatever config is given.
std::string run_config_text(const config::TrainConfig& cfg) {
  const std::string path = cfg.output.dir + "/config.yaml";
  if (!fs::exists(path)) {
    throw Error("--resume: " + path +
                    " is missing: the run's config cannot be checked against this one (every "
                    "run writes it before its first checkpoint); restore it, or start again with "
                    "output.overwrite=true",
                ErrorKind::kCorrupt);
  }
  return io::read_file(path);
}

// The run directory policy: refuses to clobber other runs (prepare_run_dir)
// and names the checkpoint a resume continues from. A torchrun restart
// (`elastic_restart`: the group's earlier attempt failed) continues from the
// newest checkpoint the failed attempt wrote, or starts again in the
// directory that attempt opened when it wrote none.
RunDirPlan open_run_dir(const config::TrainConfig& cfg, bool resume, bool elastic_restart) {
  if (elastic_restart && !resume) {
    if (!latest_checkpoint(cfg.output.dir).empty()) {
      resume = true;
    } else {
      remove_run_files(cfg.output.dir);
    }
  }
  RunDirPlan plan;
  if (resume && fs::exists(fs::path(cfg.output.dir) / "adapter")) {
    // Training finished; what remains is the exports a stop during them
    // (or a config that now asks for more) left out. They are written from
    // the run's adapter, so the config must be the run's own.
    const std::vector<std::string> missing = missing_exports(cfg);
    if (missing.empty()) (void)prepare_run_dir(cfg, resume);  // "nothing to resume"
    const std::string before = run_config_text(cfg);
    std::vector<ConfigChange> changes = config_changes(before, config::to_yaml(cfg));
    if (!changes.empty()) {
      const ConfigChange& c = changes.front();
      throw Error("--resume: output.dir '" + cfg.output.dir +
                  "' holds a finished run; its missing exports are written from its adapter, "
                  "but this config changes training against " +
                  cfg.output.dir + "/config.yaml (" +
                  printable(c.key + " " + c.before + " -> " + c.after, 300) +
                  "); resume with the run's config");
    }
    plan.exports_only = true;
    return plan;
  }
  plan.replace_earlier = prepare_run_dir(cfg, resume);
  if (!resume) return plan;
  plan.resume_from = latest_checkpoint(cfg.output.dir);
  if (plan.resume_from.empty()) {
    throw Error("--resume: no complete checkpoint under '" + cfg.output.dir + "/checkpoints'");
  }
  // Keys that give the adapter its shape: the checkpoint's adapter has the
  // run's values, so no --allow-config-change can change them.
  const std::string run_config = cfg.output.dir + "/config.yaml";
  for (const ConfigChange& c : config_changes(run_config_text(cfg), config::to_yaml(cfg))) {
    if (c.key == "lora.r" || c.key == "lora.target_modules" || c.key == "lora.use_dora") {
      throw Error("--resume: " + c.key + " cannot change on resume (" + printable(c.before, 200) +
                  " in " + run_config + ", " + printable(c.after, 200) +
                  " now): the checkpoint's adapter has the run's shape; resume with " + c.key +
                  "=" + printable(c.before, 200) + " or start a new run");
    }
  }
  return plan;
}

// One training run in three phases: the constructor sets everything up
// (model, adapters, data, Trainer, restored state) without writing, loop()
// writes config.yaml and runs the steps until the end or a stop, finish()
// evaluates and writes the adapter.
class TrainingRun {
 public:
  TrainingRun(const config::TrainConfig& cfg, const RunOptions& opts, std::string resume_from);
  // Runs the remaining steps. A stop (signal, stop_after_step) writes a
  // checkpoint and returns with stopped_by_signal set.
  RunResult loop();
  // After loop() ran every step: final evaluation, summary, adapter.
  void finish(RunResult& result);

 private:
  double elapsed() const { return elapsed0_ + seconds_since(t0_); }
  void checkpoint(RunResult& result);
  void run_eval(int64_t step);
  // The stop this rank asks for before or after step `step`: the signal
  // number, SIGTERM for opts.stop_after_step, or 0.
  int local_stop(int64_t step) const;
  // On resume: state_.data_position is one the run reaches after
  // state_.step steps (exactly that one when the config is the run's own).
  void check_data_position(const config::TrainConfig& cfg, int64_t batches_per_step);

  const config::TrainConfig& cfg_;
  const RunOptions& opts_;
  dist::Group* const group_;  // null for a single process
  const int world_, rank_;
  const bool main_;    // rank 0: the one that writes
  int64_t accum_ = 1;  // micro-batches per rank per step
  const std::string run_dir_;
  const std::string resume_from_;
  const std::string model_dir_;  // model.path on disk (a .gguf's import when resolved)
  model::CausalLM model_{nullptr};
  lora::LoraSpec spec_;
  std::vector<std::string> adapted_;
  std::unique_ptr<ShardedBase> shard_;  // train.shard_base (before model_ in destruction)
  std::unique_ptr<data::DataLoader> loader_;
  std::vector<MicroBatch> val_;
  size_t train_examples_ = 0;
  int64_t total_ = 0;
  std::unique_ptr<Trainer> trainer_;
  TrainState state_;
  std::unique_ptr<MetricsLog> metrics_;  // from loop() on
  std::unique_ptr<Progress> progress_;
  std::chrono::steady_clock::time_point t0_;
  double elapsed0_ = 0;
  int64_t first_step_ = 0, tokens0_ = 0;
  int64_t crash_step_ = 0;   // RunOptions::crash_step, when it applies to this rank
  std::string config_text_;  // config.yaml, written when the loop starts
};

TrainingRun::TrainingRun(const config::TrainConfig& cfg, const RunOptions& opts,
                         std::string resume_from)
    : cfg_(cfg),
      opts_(opts),
      group_(opts.group),
      world_(opts.group != nullptr ? opts.group->world_size() : 1),
      rank_(opts.group != nullptr ? opts.group->rank() : 0),
      main_(rank_ == 0),
      run_dir_(cfg.output.dir),
      resume_from_(std::move(resume_from)),
      model_dir_(opts.model_dir.empty() ? cfg.model.path : opts.model_dir) {
  // Checked before any weight is read: a sequence longer than the model's
  // positions would train positions it never learned.
  const int64_t max_pos = model::load_config(model_dir_).max_position_embeddings;
  if (cfg.data.max_seq_len > max_pos) {
    throw Error("data.max_seq_len=" + std::to_string(cfg.data.max_seq_len) +
                " exceeds the model's max_position_embeddings (" + std::to_string(max_pos) + ", " +
                model_dir_ + "/config.json)");
  }
  accum_ = accumulation_per_rank(cfg.train, world_);
  at::manual_seed(static_cast<uint64_t>(cfg.seed));
  model::LoadOptions load{to_scalar_type(cfg.model.dtype), resolve_device(cfg.device, group_)};
  if (cfg.model.quantize == config::Quantize::kNf4) {
    load.quantize = {model::Quantization::kNf4, cfg.model.double_quant};  // QLoRA
  }
  // Sharded: a GPU rank receives only its share of the layers (ShardedBase).
  load.layer_projections_on_host = cfg.train.shard_base && group_ != nullptr;
  model_ = model::load_model(model_dir_, load);
  const c10::Device device = model_->device();
  spec_ = spec_of(cfg);
  adapted_ = lora::inject_lora(*model_, spec_);
  if (!cfg.lora.init_from.empty()) lora::load_adapter_weights(cfg.lora.init_from, *model_);
  if (cfg.train.shard_base && group_ != nullptr) {
    // Process-wide malloc setting for the sharded run (once: one TrainingRun
    // per process): Gloo's all-gather stages each layer in a temporary buffer
    // on its own threads; glibc keeps such freed blocks in per-thread arenas
    // (its mmap threshold grows with them), which would hold several layers
    // resident and undo the sharding. A fixed threshold gives blocks of 1 MiB
    // and more back to the system when freed. Set after the model is loaded:
    // set before, the loader's freed blocks under 1 MiB stay in the heap
    // (measured: about 15 MiB more peak RSS per rank).
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    // After the adapters' initialisation (PiSSA/OLoRA rewrite base weights).
    shard_ = std::make_unique<ShardedBase>(*model_, *group_);
  }

  // No tokenizer files: pre-tokenized data only (pad id from config.json).
  auto tok = data::load_tokenizer_if_present(model_dir_);
  data::PreparedData prepared =
      data::prepare_data(cfg.data, static_cast<uint64_t>(cfg.seed), tok.get(), model_dir_);
  const int32_t pad_id = data::pad_id_for_model(tok.get(), model_dir_);
  check_token_ids(prepared.train, model_->config().vocab_size, "data.train", model_dir_);
  check_token_ids(prepared.validation, model_->config().vocab_size, "validation", model_dir_);
  loader_ = std::make_unique<data::DataLoader>(
      data::make_sequences(prepared.train, cfg.data.max_seq_len, cfg.data.packing),
      cfg.train.micro_batch_size, pad_id, static_cast<uint64_t>(cfg.seed), cfg.data.shuffle);
  val_ = eval_batches(prepared.validation, cfg, pad_id, device);
  train_examples_ = prepared.train.size();

  // Every rank goes through all of a step's micro-batches (accum_ per rank).
  const int64_t batches_per_step = accum_ * world_;
  total_ = cfg.train.max_steps > 0
               ? cfg.train.max_steps
               : std::max<int64_t>(
                     1, (cfg.train.epochs * loader_->batches_per_epoch() + batches_per_step - 1) /
                            batches_per_step);
  trainer_ = std::make_unique<Trainer>(*model_, cfg.train, total_, group_);
  // Dropout masks keyed to (seed, step, micro-batch): the same on 1 or N ranks.
  trainer_->seed_dropout(static_cast<uint64_t>(cfg.seed));

  const int64_t sequences_per_step = batches_per_step * cfg.train.micro_batch_size;
  state_.total_steps = total_;
  bool same_global_batch = false;
  std::string world_note;
  if (!resume_from_.empty()) {
    state_ = load_checkpoint(resume_from_, *model_, trainer_->optimizer());
    if (state_.sequences_per_step != 0 && state_.sequences_per_step != sequences_per_step) {
      throw Error(resume_from_ + ": checkpoint of a run that read " +
                  std::to_string(state_.sequences_per_step) + " sequences per step on " +
                  std::to_string(state_.world_size) + " rank(s), but this run reads " +
                  std::to_string(sequences_per_step) + " (micro_batch_size x accumulation x " +
                  std::to_string(world_) +
                  " ranks); keep the global batch, e.g. set "
                  "train.global_batch=" +
                  std::to_string(state_.sequences_per_step));
    }
    same_global_batch = state_.sequences_per_step == sequences_per_step;
    world_note = "on " + std::to_string(world_) + " rank(s) (trained on " +
                 std::to_string(state_.world_size) + ")";
    if (state_.total_steps != total_) {
      throw Error(resume_from_ + ": checkpoint of a run of " + std::to_string(state_.total_steps) +
                  " steps, but this config gives " + std::to_string(total_));
    }
    check_data_position(cfg, batches_per_step);
    loader_->seek(state_.data_position);
    trainer_->set_step_count(state_.step);
  }
  state_.world_size = world_;
  state_.sequences_per_step = sequences_per_step;
  config_text_ = resolved_config_text(cfg, run_dir_, resume_from_, state_.step, opts,
                                      same_global_batch, world_note);
  if (opts.crash_step > 0 && opts.crash_rank == rank_ &&
      (group_ == nullptr || group_->env().restart_count == 0)) {
    crash_step_ = opts.crash_step;
  }
}

void TrainingRun::check_data_position(const config::TrainConfig& cfg, int64_t batches_per_step) {
  const std::string state_path = resume_from_ + "/state.json";
  const data::LoaderPosition p = state_.data_position;
  const int64_t n = loader_->sequences_per_epoch();
  // Every epoch takes at least one batch, every step reads batches_per_step
  // (the checkpoint's sequences per step when it recorded them).
  const int64_t per_step = std::max(batches_per_step, state_.sequences_per_step);
  const bool epoch_ok = p.epoch <= state_.step * per_step;
  if (!epoch_ok || p.index > n) {
    throw Error(state_path + ": key 'data_position." + (epoch_ok ? "index" : "epoch") + "' is " +
                    std::to_string(epoch_ok ? p.index : p.epoch) + ", which " +
                    std::to_string(state_.step) + " steps of this run cannot reach (" +
                    std::to_string(n) + " sequences per epoch); the checkpoint is damaged",
                ErrorKind::kCorrupt);
  }
  // With the run's own config the loader is the same: the position must be
  // the one state_.step steps from the start lead to.
  const std::string run_config = run_dir_ + "/config.yaml";
  if (!fs::exists(run_config) ||
      !config_changes(io::read_file(run_config), config::to_yaml(cfg)).empty() ||
      state_.sequences_per_step != batches_per_step * cfg.train.micro_batch_size) {
    return;
  }
  loader_->seek({0, 0});
  loader_->skip(state_.step * batches_per_step);
  const data::LoaderPosition want = loader_->position();
  if (!(want == p)) {
    throw Error(state_path + ": key 'data_position' is {epoch " + std::to_string(p.epoch) +
                    ", index " + std::to_string(p.index) + "}, but " + std::to_string(state_.step) +
                    " steps of this run end at {epoch " + std::to_string(want.epoch) + ", index " +
                    std::to_string(want.index) + "}; the checkpoint is damaged",
                ErrorKind::kCorrupt);
  }
}

int TrainingRun::local_stop(int64_t step) const {
  int stop = opts_.stop_signal != nullptr ? opts_.stop_signal->load() : 0;
  if (stop == 0 && opts_.stop_after_step > 0 && step >= opts_.stop_after_step) stop = SIGTERM;
  return stop;
}

void TrainingRun::checkpoint(RunResult& result) {
  state_.step = trainer_->step_count();
  state_.data_position = loader_->position();
  state_.elapsed_s = elapsed();
  if (!main_) {  // rank 0 writes it; the state is the same on every rank
    result.checkpoint = run_dir_ + "/checkpoints/step-" + std::to_string(state_.step);
    return;
  }
  result.checkpoint = save_checkpoint(run_dir_, *model_, spec_, trainer_->optimizer(), state_,
                                      cfg_.train.keep_checkpoints);
}

void TrainingRun::run_eval(int64_t step) {
  EvalResult e;
  if (group_ == nullptr || shard_) {
    // Sharded weights: every rank runs every batch (each forward pass is a
    // collective), so each gets the whole result itself.
    e = evaluate(*model_, val_);
  } else {
    // Rank r evaluates batches r, r + world, ...; the sums are added up.
    std::vector<MicroBatch> mine;
    for (size_t i = static_cast<size_t>(rank_); i < val_.size(); i += world_) {
      mine.push_back(val_[i]);
    }
    const EvalResult part = mine.empty() ? EvalResult{} : evaluate(*model_, mine);
    at::Tensor sums = at::zeros({2}, at::kDouble);  // [loss sum, target tokens]
    sums.data_ptr<double>()[0] =
        part.target_tokens > 0 ? part.loss * static_cast<double>(part.target_tokens) : 0.0;
    sums.data_ptr<double>()[1] = static_cast<double>(part.target_tokens);
    at::Tensor on_device = sums.to(model_->device());  // NCCL reduces GPU tensors only
    group_->all_reduce_sum(on_device);
    sums = on_device.cpu();
    const double* total = sums.data_ptr<double>();
    e.target_tokens = static_cast<int64_t>(total[1]);
    e.loss = total[0] / std::max(1.0, total[1]);
    e.perplexity = std::exp(e.loss);
  }
  nlohmann::ordered_json j;
  j["step"] = step;
  j["split"] = "val";
  j["loss"] = e.loss;
  j["perplexity"] = e.perplexity;
  metrics_->write(j);
  progress_->message("step " + std::to_string(step) + " validation loss " + std::to_string(e.loss) +
                     " perplexity " + std::to_string(e.perplexity));
}

RunResult TrainingRun::loop() {
  // The run directory changes only now, once every rank's setup succeeded.
  if (main_) {
    if (!resume_from_.empty()) {
      // metrics.jsonl continues from what the checkpoint had seen.
      const fs::path m = fs::path(resume_from_) / "metrics.jsonl";
      io::write_file_atomic(run_dir_ + "/metrics.jsonl", fs::exists(m) ? io::read_file(m) : "");
    }
    io::write_file_atomic(run_dir_ + "/config.yaml", config_text_);
  }
  const c10::Device device = model_->device();
  metrics_ = std::make_unique<MetricsLog>(main_ ? run_dir_ + "/metrics.jsonl" : "");
  progress_ = std::make_unique<Progress>(total_, opts_.plain_progress, /*silent=*/!main_);
  Progress& progress = *progress_;
  const std::string where =
      group_ == nullptr
          ? device.str()
          : std::to_string(world_) + " ranks (" + group_->backend() + ", " + device.str() +
                " on rank 0; " + std::to_string(accum_) + " micro-batches of " +
                std::to_string(cfg_.train.micro_batch_size) + " per rank per step; " +
                std::to_string(trainer_->grad_buckets()) + " gradient all-reduce(s) per step)";
  progress.message("loratune: training " + std::to_string(total_) + " steps on " + where + " (" +
                   std::to_string(train_examples_) + " examples, " + std::to_string(val_.size()) +
                   " validation batches)" +
                   (resume_from_.empty() ? "" : ", resumed from " + resume_from_));
  progress.message("loratune: LoRA r=" + std::to_string(spec_.r) +
                   " alpha=" + format_number(spec_.alpha) + " on " +
                   std::to_string(adapted_.size()) + " projections" + adapter_variants(cfg_));
  DeviceTimer timer(device);
  reset_peak_memory(device);
  t0_ = std::chrono::steady_clock::now();
  elapsed0_ = state_.elapsed_s;
  StepLogger logger(*metrics_, progress, timer, device, cfg_.train.max_bad_steps, elapsed0_);
  first_step_ = trainer_->step_count();
  tokens0_ = state_.tokens_seen;

  RunResult result;
  while (trainer_->step_count() < total_) {
    logger.open_window();
    // The step's micro-batches in loader order; rank r takes the r-th run of
    // accum_ of them, so the step is the same on any number of ranks. Every
    // rank counts the whole step from the loader but collates only its own.
    const data::BatchCounts counts = loader_->peek_counts(accum_ * world_);
    const StepTotals totals{counts.target_tokens, counts.tokens};
    loader_->skip(accum_ * rank_);
    std::vector<MicroBatch> micro;
    for (int64_t a = 0; a < accum_; ++a) {
      micro.push_back(to_micro_batch(loader_->next(), device, cfg_.data.packing));
      micro.back().index = rank_ * accum_ + a;
    }
    loader_->skip(accum_ * (world_ - 1 - rank_));
    const int64_t next = trainer_->step_count() + 1;
    StepResult r = group_ == nullptr ? trainer_->step(micro, totals)
                                     : trainer_->step(micro, totals, local_stop(next) != 0);
    const int64_t step = trainer_->step_count();
    state_.tokens_seen += r.tokens;
    int stop = local_stop(step);
    if (group_ != nullptr) {
      // Every rank stops after the same step: the first whose all-reduced
      // stop requests are not zero (the flag read here is the only per-step
      // device-to-host copy of a distributed run).
      const bool agreed = r.stop_requests.item<float>() > 0;
      stop = agreed ? (stop != 0 ? stop : SIGTERM) : 0;
    }
    logger.add(step, std::move(r));
    if (crash_step_ > 0 && step == crash_step_) std::raise(SIGKILL);  // RunOptions::crash_step

    const bool save_now = cfg_.train.save_every > 0 && step % cfg_.train.save_every == 0;
    if (step % cfg_.train.log_every == 0 || step == total_ || save_now || stop != 0) {
      const bool ok = logger.flush(elapsed());
      if (!adapter_is_finite(*model_)) {
        progress.finish();
        throw diverged(step, run_dir_);
      }
      if (!ok) {
        checkpoint(result);
        progress.finish();
        throw Error("training aborted: " + std::to_string(logger.bad_run()) +
                        " consecutive steps with a non-finite loss or gradient "
                        "(train.max_bad_steps=" +
                        std::to_string(cfg_.train.max_bad_steps) + "); checkpoint written to " +
                        result.checkpoint,
                    ErrorKind::kData);
      }
    }
    if (!val_.empty() && cfg_.train.eval_every > 0 && step % cfg_.train.eval_every == 0 &&
        step != total_) {
      run_eval(step);
    }
    if (save_now && step != total_) checkpoint(result);
    if (stop != 0 && step != total_) {
      if (!save_now) checkpoint(result);
      progress.message("loratune: stopped by signal " + std::to_string(stop) + " after step " +
                       std::to_string(step) + "; checkpoint " + result.checkpoint +
                       " (continue with --resume)");
      progress.finish();
      result.steps_done = step;
      result.stopped_by_signal = stop;
      return result;
    }
  }
  result.steps_done = trainer_->step_count();
  return result;
}

void TrainingRun::finish(RunResult& result) {
  if (!adapter_is_finite(*model_)) {
    progress_->finish();
    throw diverged(trainer_->step_count(), run_dir_);
  }
  if (!val_.empty()) run_eval(trainer_->step_count());
  progress_->finish();
  progress_->message(run_summary(trainer_->step_count() - first_step_,
                                 state_.tokens_seen - tokens0_, seconds_since(t0_),
                                 model_->device()));
  if (group_ != nullptr) {  // every rank reports its own memory
    const double mib = 1 << 20;
    char kept[160] = "";
    if (shard_) {
      std::snprintf(kept, sizeof kept,
                    "kept %.1f of the decoder layers' %.1f MiB base weights (train.shard_base); ",
                    static_cast<double>(shard_->held_bytes()) / mib,
                    static_cast<double>(shard_->full_bytes()) / mib);
    }
    std::fprintf(stderr,
                 "loratune: rank %d %speak RSS %.1f MiB; last step: %lld of %lld gradient "
                 "all-reduces started during backward\n",
                 rank_, kept, static_cast<double>(host_memory().peak_rss) / mib,
                 static_cast<long long>(trainer_->grad_buckets_overlapped()),
                 static_cast<long long>(trainer_->grad_buckets()));
  }
  if (main_) {
    lora::save_adapter(run_dir_ + "/adapter", *model_, spec_, /*overwrite=*/false);
    progress_->message("loratune: adapter written to " + run_dir_ + "/adapter");
  }
  result.steps_done = trainer_->step_count();
}

// The result of a --resume that has only exports left: the finished run's
// steps, from its metrics.jsonl.
RunResult exports_only_result(const config::TrainConfig& cfg) {
  RunResult r;
  r.exports_only = true;
  r.steps_done = read_final_losses(cfg.output.dir + "/metrics.jsonl").last_step;
  std::fprintf(stderr,
               "loratune: %s/adapter holds the finished run (%lld steps); writing the "
               "exports it lacks\n",
               cfg.output.dir.c_str(), static_cast<long long>(r.steps_done));
  return r;
}

}  // namespace

RunResult run_training(const config::TrainConfig& cfg, const RunOptions& opts) {
  if (cfg.train.mixed_precision != config::MixedPrecision::kNone) {
    // Refused rather than ignored: no autocast path exists yet.
    throw Error("train.mixed_precision=" + config::to_string(cfg.train.mixed_precision) +
                " is not supported yet; use model.dtype=bfloat16 (bf16 base weights, float32 "
                "LoRA weights) with train.mixed_precision=none");
  }
  dist::Group* group = opts.group;
  if (group == nullptr) {
    const RunDirPlan plan = open_run_dir(cfg, opts.resume, /*elastic_restart=*/false);
    if (plan.exports_only) return exports_only_result(cfg);
    TrainingRun run(cfg, opts, plan.resume_from);
    if (plan.replace_earlier) remove_run_files(cfg.output.dir);
    RunResult result = run.loop();
    if (result.stopped_by_signal == 0) run.finish(result);
    return result;
  }
  // Distributed: rank 0 opens the run directory; each phase ends with every
  // rank learning whether any failed (one clear error, never a hang).
  std::exception_ptr error;
  RunDirPlan plan;
  if (group->is_main()) {
    try {
      plan = open_run_dir(cfg, opts.resume, group->env().restart_count > 0);
    } catch (...) {
      error = std::current_exception();
    }
  }
  group->check_all_ok("opening output.dir", error);
  if (!group->share_string("exports_only", plan.exports_only ? "1" : "").empty()) {
    // Rank 0 writes the exports; the others have nothing left to do.
    if (group->is_main()) return exports_only_result(cfg);
    RunResult nothing;
    nothing.exports_only = true;
    return nothing;
  }
  const std::string resume_from = group->share_string("resume_from", plan.resume_from);
  std::unique_ptr<TrainingRun> run;
  try {
    run = std::make_unique<TrainingRun>(cfg, opts, resume_from);
  } catch (...) {
    error = std::current_exception();
  }
  group->check_all_ok("setup (model, data, checkpoint)", error);
  if (plan.replace_earlier) remove_run_files(cfg.output.dir);  // rank 0 only: it writes
  RunResult result = run->loop();
  if (result.stopped_by_signal == 0) run->finish(result);
  return result;
}

}  // namespace loratune::train
