// run_training: the run directory policy (open_run_dir), then a TrainingRun
// in three phases.
//
// Setup (the constructor), in order: seed; load the model; inject LoRA (then
// lora.init_from); prepare the data; build the Trainer; on resume restore the
// newest checkpoint; write config.yaml. loop(): the steps, logging through
// StepLogger (metrics.cpp), checkpoints, evaluations, stops. finish(): the
// final evaluation, the summary line and the adapter.
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/stack.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

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

std::string resolve_device(const std::string& d) {
  if (d == "auto") return torch::cuda::is_available() ? "cuda:0" : "cpu";
  return d;
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

// Refuses to clobber runs; clears our own files when output.overwrite.
void prepare_run_dir(const config::TrainConfig& cfg, bool resume) {
  const fs::path out(cfg.output.dir);
  const bool finished = fs::exists(out / "adapter");
  if (resume) {
    if (finished) {
      throw Error("output.dir '" + out.string() + "' holds a finished run (" +
                  (out / "adapter").string() + " exists); nothing to resume");
    }
    return;
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
    return;
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
  // Everything a run writes (output.merge, output.gguf included).
  for (const char* name :
       {"adapter", "checkpoints", "metrics.jsonl", "config.yaml", "merged", "model.f32.gguf",
        "model.f16.gguf", "model.bf16.gguf", "model.q8_0.gguf", "adapter.gguf", "Modelfile"}) {
    fs::remove_all(out / name);
  }
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
std::string resolved_config_text(const config::TrainConfig& cfg, const std::string& run_dir,
                                 const std::string& resume_from, int64_t step,
                                 const RunOptions& opts) {
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
  const std::vector<ConfigChange> changes = config_changes(before, now);
  if (changes.empty()) return now + history;
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
  return now + history + note;
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

// The run directory policy: refuses to clobber other runs (prepare_run_dir)
// and names the checkpoint a resume continues from ("" for a fresh run).
std::string open_run_dir(const config::TrainConfig& cfg, bool resume) {
  prepare_run_dir(cfg, resume);
  if (!resume) return "";
  std::string from = latest_checkpoint(cfg.output.dir);
  if (from.empty()) {
    throw Error("--resume: no complete checkpoint under '" + cfg.output.dir + "/checkpoints'");
  }
  return from;
}

// One training run in three phases: the constructor sets everything up
// (model, adapters, data, Trainer, restored state, config.yaml), loop() runs
// the steps until the end or a stop, finish() evaluates and writes the adapter.
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

  const config::TrainConfig& cfg_;
  const RunOptions& opts_;
  const std::string run_dir_;
  const std::string resume_from_;
  const std::string model_dir_;  // model.path on disk (a .gguf's import when resolved)
  model::CausalLM model_{nullptr};
  lora::LoraSpec spec_;
  std::vector<std::string> adapted_;
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
};

TrainingRun::TrainingRun(const config::TrainConfig& cfg, const RunOptions& opts,
                         std::string resume_from)
    : cfg_(cfg),
      opts_(opts),
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
  at::manual_seed(static_cast<uint64_t>(cfg.seed));
  model::LoadOptions load{to_scalar_type(cfg.model.dtype), resolve_device(cfg.device)};
  if (cfg.model.quantize == config::Quantize::kNf4) {
    load.quantize = {model::Quantization::kNf4, cfg.model.double_quant};  // QLoRA
  }
  model_ = model::load_model(model_dir_, load);
  const c10::Device device = model_->device();
  spec_ = spec_of(cfg);
  adapted_ = lora::inject_lora(*model_, spec_);
  if (!cfg.lora.init_from.empty()) lora::load_adapter_weights(cfg.lora.init_from, *model_);

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

  const int64_t accum = cfg.train.gradient_accumulation_steps;
  total_ = cfg.train.max_steps > 0
               ? cfg.train.max_steps
               : std::max<int64_t>(
                     1, (cfg.train.epochs * loader_->batches_per_epoch() + accum - 1) / accum);
  trainer_ = std::make_unique<Trainer>(*model_, cfg.train, total_);

  state_.total_steps = total_;
  if (!resume_from_.empty()) {
    state_ = load_checkpoint(resume_from_, *model_, trainer_->optimizer());
    if (state_.total_steps != total_) {
      throw Error(resume_from_ + ": checkpoint of a run of " + std::to_string(state_.total_steps) +
                  " steps, but this config gives " + std::to_string(total_));
    }
    loader_->seek(state_.data_position);
    trainer_->set_step_count(state_.step);
    // metrics.jsonl continues from what the checkpoint had seen.
    const fs::path m = fs::path(resume_from_) / "metrics.jsonl";
    io::write_file_atomic(run_dir_ + "/metrics.jsonl", fs::exists(m) ? io::read_file(m) : "");
  }
  io::write_file_atomic(run_dir_ + "/config.yaml",
                        resolved_config_text(cfg, run_dir_, resume_from_, state_.step, opts));
}

void TrainingRun::checkpoint(RunResult& result) {
  state_.step = trainer_->step_count();
  state_.data_position = loader_->position();
  state_.elapsed_s = elapsed();
  result.checkpoint = save_checkpoint(run_dir_, *model_, spec_, trainer_->optimizer(), state_,
                                      cfg_.train.keep_checkpoints);
}

void TrainingRun::run_eval(int64_t step) {
  EvalResult e = evaluate(*model_, val_);
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
  const c10::Device device = model_->device();
  metrics_ = std::make_unique<MetricsLog>(run_dir_ + "/metrics.jsonl");
  progress_ = std::make_unique<Progress>(total_, opts_.plain_progress);
  Progress& progress = *progress_;
  progress.message("loratune: training " + std::to_string(total_) + " steps on " + device.str() +
                   " (" + std::to_string(train_examples_) + " examples, " +
                   std::to_string(val_.size()) + " validation batches)" +
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
  const int64_t accum = cfg_.train.gradient_accumulation_steps;
  while (trainer_->step_count() < total_) {
    logger.open_window();
    std::vector<MicroBatch> micro;
    for (int64_t a = 0; a < accum; ++a) {
      micro.push_back(to_micro_batch(loader_->next(), device, cfg_.data.packing));
    }
    StepResult r = trainer_->step(micro);
    const int64_t step = trainer_->step_count();
    state_.tokens_seen += r.tokens;
    logger.add(step, std::move(r));

    int stop = opts_.stop_signal != nullptr ? opts_.stop_signal->load() : 0;
    if (stop == 0 && opts_.stop_after_step > 0 && step >= opts_.stop_after_step) stop = SIGTERM;
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
  lora::save_adapter(run_dir_ + "/adapter", *model_, spec_, /*overwrite=*/false);
  progress_->message("loratune: adapter written to " + run_dir_ + "/adapter");
  result.steps_done = trainer_->step_count();
}

}  // namespace

RunResult run_training(const config::TrainConfig& cfg, const RunOptions& opts) {
  if (cfg.train.mixed_precision != config::MixedPrecision::kNone) {
    // Refused rather than ignored: no autocast path exists yet.
    throw Error("train.mixed_precision=" + config::to_string(cfg.train.mixed_precision) +
                " is not supported yet; use model.dtype=bfloat16 (bf16 base weights, float32 "
                "LoRA weights) with train.mixed_precision=none");
  }
  TrainingRun run(cfg, opts, open_run_dir(cfg, opts.resume));
  RunResult result = run.loop();
  if (result.stopped_by_signal == 0) run.finish(result);
  return result;
}

}  // namespace loratune::train
