// run_training: model + adapters + data + Trainer + run directory.
//
// setup() order: check the run directory; seed; load the model; inject LoRA
// (then lora.init_from); prepare the data; build the Trainer; on resume
// restore the newest checkpoint; write config.yaml; loop.
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

// Host copies of StepResults, taken at log points only: the one place the
// step loop waits for the device.
struct Logger {
  MetricsLog* log = nullptr;
  Progress* progress = nullptr;
  DeviceTimer* timer = nullptr;  // device time of the steps since the last flush
  c10::Device device{c10::kCPU};
  int64_t max_bad_steps = 1;
  int64_t bad_run = 0;  // consecutive skipped steps so far
  std::vector<std::pair<int64_t, StepResult>> pending;
  double window_start_s = 0;
  int64_t window_tokens = 0;
  bool window_open = false;  // the timer is running

  // Starts timing the next window (before its first step is queued).
  void open_window() {
    if (window_open) return;
    timer->start();
    window_open = true;
  }

  // Syncs once for the pending steps and writes them. Returns false when the
  // run has reached max_bad_steps consecutive skipped steps. On CUDA the
  // records also hold the window's device time per step (CUDA events) and
  // the caching allocator's memory.
  bool flush(double elapsed_s, int64_t tokens_seen) {
    if (pending.empty()) return true;
    const double dt = std::max(1e-9, elapsed_s - window_start_s);
    const double tps = static_cast<double>(window_tokens) / dt;
    timer->stop();
    window_open = false;
    const bool on_events = timer->uses_events();
    const double step_ms = timer->elapsed_ms() / static_cast<double>(pending.size());
    const std::optional<MemoryStats> mem = memory_stats(device);
    // [steps,3] (loss, grad_norm, found_inf) in one device-to-host copy.
    std::vector<at::Tensor> rows;
    for (auto& [step, r] : pending) {
      rows.push_back(at::stack({r.loss, r.grad_norm, r.found_inf.to(r.loss.scalar_type())}));
    }
    const at::Tensor host = at::stack(rows).to(at::kCPU, at::kDouble);
    const double* v = host.data_ptr<double>();
    bool ok = true;
    double last_loss = 0, last_norm = 0;
    for (size_t i = 0; i < pending.size(); ++i) {
      const auto& [step, r] = pending[i];
      const double loss = v[3 * i], norm = v[3 * i + 1];
      const bool skipped = v[3 * i + 2] != 0.0;
      last_loss = loss;
      last_norm = norm;
      nlohmann::ordered_json j;
      j["step"] = step;
      j["split"] = "train";
      j["loss"] = loss;
      j["lr"] = r.lr;
      j["grad_norm"] = norm;
      j["tokens"] = r.tokens;
      j["tokens_per_s"] = tps;
      j["elapsed_s"] = elapsed_s;
      if (on_events) j["step_ms"] = step_ms;
      if (mem) {
        j["mem_allocated_gib"] = static_cast<double>(mem->allocated) / kGiB;
        j["mem_peak_gib"] = static_cast<double>(mem->peak_allocated) / kGiB;
      }
      if (skipped) j["skipped"] = true;
      log->write(j);
      if (skipped) {
        ++bad_run;
        progress->message("loratune: warning: step " + std::to_string(step) +
                          ": non-finite loss or gradient (loss " + std::to_string(loss) +
                          ", grad_norm " + std::to_string(norm) + "); update skipped (" +
                          std::to_string(bad_run) + " in a row)");
        if (bad_run >= max_bad_steps) ok = false;
      } else {
        bad_run = 0;
      }
    }
    const auto& last = pending.back();
    progress->update(last.first, last_loss, last.second.lr, tps, elapsed_s, last_norm);
    pending.clear();
    window_start_s = elapsed_s;
    window_tokens = 0;
    (void)tokens_seen;
    return ok;
  }
};

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

}  // namespace

RunResult run_training(const config::TrainConfig& cfg, const RunOptions& opts) {
  if (cfg.train.mixed_precision != config::MixedPrecision::kNone) {
    // Refused rather than ignored: no autocast path exists yet.
    throw Error("train.mixed_precision=" + config::to_string(cfg.train.mixed_precision) +
                " is not supported yet; use model.dtype=bfloat16 (bf16 base weights, float32 "
                "LoRA weights) with train.mixed_precision=none");
  }
  prepare_run_dir(cfg, opts.resume);
  const std::string run_dir = cfg.output.dir;
  std::string resume_from;
  if (opts.resume) {
    resume_from = latest_checkpoint(run_dir);
    if (resume_from.empty()) {
      throw Error("--resume: no complete checkpoint under '" + run_dir + "/checkpoints'");
    }
  }

  // Checked before any weight is read: a sequence longer than the model's
  // positions would train positions it never learned.
  // What model.path names on disk: the directory itself, or a .gguf file's
  // import (the caller resolved it; the adapter still names model.path).
  const std::string& model_dir = opts.model_dir.empty() ? cfg.model.path : opts.model_dir;
  const int64_t max_pos = model::load_config(model_dir).max_position_embeddings;
  if (cfg.data.max_seq_len > max_pos) {
    throw Error("data.max_seq_len=" + std::to_string(cfg.data.max_seq_len) +
                " exceeds the model's max_position_embeddings (" + std::to_string(max_pos) + ", " +
                model_dir + "/config.json)");
  }
  at::manual_seed(static_cast<uint64_t>(cfg.seed));
  const std::string device_name = resolve_device(cfg.device);
  model::LoadOptions load{to_scalar_type(cfg.model.dtype), device_name};
  if (cfg.model.quantize == config::Quantize::kNf4) {
    load.quantize = {model::Quantization::kNf4, cfg.model.double_quant};  // QLoRA
  }
  model::CausalLM model = model::load_model(model_dir, load);
  const c10::Device device = model->device();
  const lora::LoraSpec spec = spec_of(cfg);
  const std::vector<std::string> adapted = lora::inject_lora(*model, spec);
  if (!cfg.lora.init_from.empty()) lora::load_adapter_weights(cfg.lora.init_from, *model);

  // No tokenizer files: pre-tokenized data only (pad id from config.json).
  auto tok = data::load_tokenizer_if_present(model_dir);
  data::PreparedData prepared =
      data::prepare_data(cfg.data, static_cast<uint64_t>(cfg.seed), tok.get(), model_dir);
  const int32_t pad_id = data::pad_id_for_model(tok.get(), model_dir);
  check_token_ids(prepared.train, model->config().vocab_size, "data.train", model_dir);
  check_token_ids(prepared.validation, model->config().vocab_size, "validation", model_dir);
  data::DataLoader loader(
      data::make_sequences(prepared.train, cfg.data.max_seq_len, cfg.data.packing),
      cfg.train.micro_batch_size, pad_id, static_cast<uint64_t>(cfg.seed), cfg.data.shuffle);
  const std::vector<MicroBatch> val = eval_batches(prepared.validation, cfg, pad_id, device);

  const int64_t accum = cfg.train.gradient_accumulation_steps;
  const int64_t total =
      cfg.train.max_steps > 0
          ? cfg.train.max_steps
          : std::max<int64_t>(1,
                              (cfg.train.epochs * loader.batches_per_epoch() + accum - 1) / accum);
  Trainer trainer(*model, cfg.train, total);

  TrainState state;
  state.total_steps = total;
  if (!resume_from.empty()) {
    state = load_checkpoint(resume_from, *model, trainer.optimizer());
    if (state.total_steps != total) {
      throw Error(resume_from + ": checkpoint of a run of " + std::to_string(state.total_steps) +
                  " steps, but this config gives " + std::to_string(total));
    }
    loader.seek(state.data_position);
    trainer.set_step_count(state.step);
    // metrics.jsonl continues from what the checkpoint had seen.
    const fs::path m = fs::path(resume_from) / "metrics.jsonl";
    io::write_file_atomic(run_dir + "/metrics.jsonl", fs::exists(m) ? io::read_file(m) : "");
  }
  io::write_file_atomic(run_dir + "/config.yaml",
                        resolved_config_text(cfg, run_dir, resume_from, state.step, opts));

  MetricsLog metrics(run_dir + "/metrics.jsonl");
  Progress progress(total, opts.plain_progress);
  progress.message("loratune: training " + std::to_string(total) + " steps on " + device.str() +
                   " (" + std::to_string(prepared.train.size()) + " examples, " +
                   std::to_string(val.size()) + " validation batches)" +
                   (resume_from.empty() ? "" : ", resumed from " + resume_from));
  progress.message("loratune: LoRA r=" + std::to_string(spec.r) +
                   " alpha=" + format_number(spec.alpha) + " on " + std::to_string(adapted.size()) +
                   " projections" + adapter_variants(cfg));
  DeviceTimer timer(device);
  reset_peak_memory(device);
  Logger logger;
  logger.log = &metrics;
  logger.progress = &progress;
  logger.timer = &timer;
  logger.device = device;
  logger.max_bad_steps = cfg.train.max_bad_steps;
  const auto t0 = std::chrono::steady_clock::now();
  const double elapsed0 = state.elapsed_s;
  logger.window_start_s = elapsed0;
  auto elapsed = [&] { return elapsed0 + seconds_since(t0); };

  RunResult result;
  auto checkpoint = [&](int64_t keep) {
    state.step = trainer.step_count();
    state.data_position = loader.position();
    state.elapsed_s = elapsed();
    result.checkpoint = save_checkpoint(run_dir, *model, spec, trainer.optimizer(), state, keep);
  };
  auto run_eval = [&](int64_t step) {
    EvalResult e = evaluate(*model, val);
    nlohmann::ordered_json j;
    j["step"] = step;
    j["split"] = "val";
    j["loss"] = e.loss;
    j["perplexity"] = e.perplexity;
    metrics.write(j);
    progress.message("step " + std::to_string(step) + " validation loss " + std::to_string(e.loss) +
                     " perplexity " + std::to_string(e.perplexity));
  };

  const int64_t first_step = trainer.step_count();
  const int64_t tokens0 = state.tokens_seen;
  while (trainer.step_count() < total) {
    logger.open_window();
    std::vector<MicroBatch> micro;
    for (int64_t a = 0; a < accum; ++a) {
      micro.push_back(to_micro_batch(loader.next(), device, cfg.data.packing));
    }
    StepResult r = trainer.step(micro);
    const int64_t step = trainer.step_count();
    state.tokens_seen += r.tokens;
    logger.window_tokens += r.tokens;
    logger.pending.emplace_back(step, std::move(r));

    int stop = opts.stop_signal != nullptr ? opts.stop_signal->load() : 0;
    if (stop == 0 && opts.stop_after_step > 0 && step >= opts.stop_after_step) stop = SIGTERM;
    const bool save_now = cfg.train.save_every > 0 && step % cfg.train.save_every == 0;
    if (step % cfg.train.log_every == 0 || step == total || save_now || stop != 0) {
      const bool ok = logger.flush(elapsed(), state.tokens_seen);
      const bool finite = adapter_is_finite(*model);
      if (!finite) {
        progress.finish();
        throw diverged(step, run_dir);
      }
      if (!ok) {
        checkpoint(cfg.train.keep_checkpoints);
        progress.finish();
        throw Error("training aborted: " + std::to_string(logger.bad_run) +
                        " consecutive steps with a non-finite loss or gradient "
                        "(train.max_bad_steps=" +
                        std::to_string(cfg.train.max_bad_steps) + "); checkpoint written to " +
                        result.checkpoint,
                    ErrorKind::kData);
      }
    }
    if (!val.empty() && cfg.train.eval_every > 0 && step % cfg.train.eval_every == 0 &&
        step != total) {
      run_eval(step);
    }
    if (save_now && step != total) checkpoint(cfg.train.keep_checkpoints);
    if (stop != 0 && step != total) {
      if (!save_now) checkpoint(cfg.train.keep_checkpoints);
      progress.message("loratune: stopped by signal " + std::to_string(stop) + " after step " +
                       std::to_string(step) + "; checkpoint " + result.checkpoint +
                       " (continue with --resume)");
      progress.finish();
      result.steps_done = step;
      result.stopped_by_signal = stop;
      return result;
    }
  }
  if (!adapter_is_finite(*model)) {
    progress.finish();
    throw diverged(trainer.step_count(), run_dir);
  }
  if (!val.empty()) run_eval(trainer.step_count());
  progress.finish();
  progress.message(run_summary(trainer.step_count() - first_step, state.tokens_seen - tokens0,
                               seconds_since(t0), device));
  lora::save_adapter(run_dir + "/adapter", *model, spec, /*overwrite=*/false);
  progress.message("loratune: adapter written to " + run_dir + "/adapter");
  result.steps_done = trainer.step_count();
  return result;
}

}  // namespace loratune::train
