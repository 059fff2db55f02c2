// Range and cross-field checks on a TrainConfig; see the contract of each
// field in config.h.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "trainer/config/config.h"
#include "trainer/config/detail.h"
#include "trainer/io/error.h"

namespace loratune::config {
namespace {

using detail::format_double;

// Upper bounds that no real run reaches; past them a value is a typo (an
// extra digit, a pasted byte count) that would otherwise surface as an
// allocation failure or an overflow long after the config was read.
constexpr int64_t kMaxRank = 65536;               // lora.r (also checked against the model at load)
constexpr int64_t kMaxSeqLen = int64_t{1} << 24;  // data.max_seq_len: 16M tokens
constexpr int64_t kMaxMicroBatch = 65536;         // train.micro_batch_size
// train.gradient_accumulation_steps: every micro-batch of an optimizer step
// is staged on the device before the step runs, so memory grows with it.
constexpr int64_t kMaxAccumulation = 1024;
constexpr int64_t kMaxEpochs = 1000000;    // train.epochs
constexpr int64_t kMaxSteps = 1000000000;  // step counts and intervals
// train.micro_batch_size * data.max_seq_len: int32 token indices per micro-batch.
constexpr int64_t kMaxMicroBatchTokens = (int64_t{1} << 31) - 1;

// Throws "<origin>: <path>: <message>", the origin being where the key was
// set (file:line or override) or, for a key left at its default, the source.
class Checker {
 public:
  Checker(const detail::Origins& origins, std::string source)
      : origins_(origins), source_(std::move(source)) {}

  std::string origin(const std::string& path) const {
    auto it = origins_.find(path);
    return it != origins_.end() ? it->second : source_;
  }
  bool was_set(const std::string& path) const { return origins_.count(path) > 0; }

  [[noreturn]] void fail(const std::string& path, const std::string& msg) const {
    fail_at(path, path + ": " + msg);
  }
  // As fail(), with the whole message given; `origin_path` picks the origin.
  [[noreturn]] void fail_at(const std::string& origin_path, const std::string& msg) const {
    const std::string where = origin(origin_path);
    throw Error(where.empty() ? msg : where + ": " + msg);
  }

  void at_least(const std::string& path, int64_t v, int64_t min) const {
    if (v < min) fail(path, "must be >= " + std::to_string(min) + ", got " + std::to_string(v));
  }
  // v in [lo, hi].
  void int_in_range(const std::string& path, int64_t v, int64_t lo, int64_t hi) const {
    if (v < lo || v > hi) {
      fail(path, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                     std::to_string(v));
    }
  }
  void positive(const std::string& path, double v) const {
    if (!(std::isfinite(v) && v > 0))
      fail(path, "must be a finite number > 0, got " + format_double(v));
  }
  void non_negative(const std::string& path, double v) const {
    if (!(std::isfinite(v) && v >= 0)) {
      fail(path, "must be a finite number >= 0, got " + format_double(v));
    }
  }
  // v in [lo, hi] or, when !hi_inclusive, [lo, hi).
  void in_range(const std::string& path, double v, double lo, double hi, bool hi_inclusive) const {
    const bool ok = v >= lo && (hi_inclusive ? v <= hi : v < hi);  // false for NaN
    if (!ok) {
      fail(path, "must be in [" + format_double(lo) + ", " + format_double(hi) +
                     (hi_inclusive ? "]" : ")") + ", got " + format_double(v));
    }
  }
  void file_list(const std::string& path, const std::vector<std::string>& files) const {
    for (const auto& f : files) {
      if (f.empty()) fail(path, "file names must not be empty");
    }
  }

 private:
  const detail::Origins& origins_;
  std::string source_;
};

void check_model_and_lora(const TrainConfig& cfg, const Checker& c) {
  if (cfg.model.path.empty()) {
    c.fail("model.path", "required: a Hugging Face model directory (config.json, *.safetensors)");
  }
  if (const std::string problem = device_problem(cfg.device); !problem.empty()) {
    c.fail("device", problem);
  }
  c.at_least("seed", cfg.seed, 0);

  const LoraConfig& l = cfg.lora;
  c.int_in_range("lora.r", l.r, 1, kMaxRank);
  c.positive("lora.alpha", l.alpha);
  c.in_range("lora.dropout", l.dropout, 0.0, 1.0, false);
  const std::string tm = "lora.target_modules";
  if (l.target_modules.empty()) {
    c.fail(tm, "must not be empty: list module names (e.g. [q_proj, v_proj]) or use all-linear");
  }
  std::set<std::string> seen;
  for (const auto& name : l.target_modules) {
    if (name.empty()) c.fail(tm, "module names must not be empty");
    if (name == "all-linear" && l.target_modules.size() > 1) {
      c.fail(tm, "all-linear already covers every linear layer; use it alone, not in a list");
    }
    if (!seen.insert(name).second) c.fail(tm, "'" + printable(name) + "' is listed twice");
  }
  // PiSSA / OLoRA rewrite the base weights from their own factorisation.
  if (l.init == LoraInit::kPissa || l.init == LoraInit::kOlora) {
    const std::string init = "lora.init is " + to_string(l.init);
    if (cfg.model.quantize != Quantize::kNone) {
      c.fail_at("lora.init", init +
                                 ", which rewrites the base weights; an NF4 base (model.quantize " +
                                 to_string(cfg.model.quantize) +
                                 ") cannot hold the residual exactly: use lora.init default or "
                                 "gaussian, or model.quantize none");
    }
    if (!l.init_from.empty()) {
      c.fail_at("lora.init", init +
                                 " but lora.init_from is set: an adapter read from disk is "
                                 "not re-initialised; use one or the other");
    }
    if (l.use_dora) {
      c.fail_at("lora.init", init +
                                 " with lora.use_dora is not supported (the rank-2r plain "
                                 "LoRA it is saved as has no DoRA form); use lora.init default");
    }
  }
  if (l.use_dora && cfg.output.gguf.adapter) {
    c.fail_at("lora.use_dora",
              "lora.use_dora is true but output.gguf.adapter asks for a llama.cpp LoRA adapter, "
              "which has no DoRA form; set output.gguf.adapter: false (output.gguf.type writes "
              "the merged model)");
  }
}

void check_data(const TrainConfig& cfg, const Checker& c) {
  const DataConfig& d = cfg.data;
  if (d.train.empty()) {
    c.fail("data.train", c.was_set("data.train")
                             ? "must not be empty: give one file or a list of files"
                             : "required: one file or a list of files (data: {train: ...})");
  }
  c.file_list("data.train", d.train);
  c.file_list("data.validation", d.validation);
  c.in_range("data.val_fraction", d.val_fraction, 0.0, 1.0, false);
  if (!d.validation.empty() && d.val_fraction > 0) {
    c.fail_at("data.val_fraction",
              "data.validation and data.val_fraction are both set; use validation files or a "
              "held-out fraction, not both");
  }
  if (const std::string problem = chat_template_problem(d.chat_template); !problem.empty()) {
    c.fail("data.chat_template", problem);
  }
  // One input token and one target token at least.
  c.int_in_range("data.max_seq_len", d.max_seq_len, 2, kMaxSeqLen);
}

void check_optimizer_and_schedule(TrainConfig& cfg, const Checker& c) {
  const OptimizerConfig& o = cfg.train.optimizer;
  c.positive("train.optimizer.lr", o.lr);
  c.in_range("train.optimizer.betas", o.beta1, 0.0, 1.0, false);
  c.in_range("train.optimizer.betas", o.beta2, 0.0, 1.0, false);
  c.positive("train.optimizer.eps", o.eps);
  c.non_negative("train.optimizer.weight_decay", o.weight_decay);
  if (o.loraplus_lr_ratio) c.positive("train.optimizer.loraplus_lr_ratio", *o.loraplus_lr_ratio);

  SchedulerConfig& s = cfg.train.scheduler;
  if (s.warmup_steps && s.warmup_ratio) {
    c.fail_at("train.scheduler.warmup_ratio",
              "train.scheduler.warmup_steps (" + std::to_string(*s.warmup_steps) +
                  ") and train.scheduler.warmup_ratio (" + format_double(*s.warmup_ratio) +
                  ") are both set; set only one (an override can unset the other with =null)");
  }
  if (s.warmup_steps) c.int_in_range("train.scheduler.warmup_steps", *s.warmup_steps, 0, kMaxSteps);
  if (s.warmup_ratio) c.in_range("train.scheduler.warmup_ratio", *s.warmup_ratio, 0.0, 1.0, true);
  if (!s.warmup_steps && !s.warmup_ratio) s.warmup_ratio = 0.03;
}

void check_train(TrainConfig& cfg, const Checker& c) {
  const TrainLoopConfig& t = cfg.train;
  c.int_in_range("train.epochs", t.epochs, 0, kMaxEpochs);
  c.int_in_range("train.max_steps", t.max_steps, 0, kMaxSteps);
  if (t.epochs == 0 && t.max_steps == 0) {
    c.fail_at(c.was_set("train.max_steps") ? "train.max_steps" : "train.epochs",
              "train.epochs and train.max_steps are both 0; set one of them > 0");
  }
  c.int_in_range("train.micro_batch_size", t.micro_batch_size, 1, kMaxMicroBatch);
  if (t.micro_batch_size * cfg.data.max_seq_len > kMaxMicroBatchTokens) {
    c.fail_at("train.micro_batch_size",
              "train.micro_batch_size (" + std::to_string(t.micro_batch_size) +
                  ") x data.max_seq_len (" + std::to_string(cfg.data.max_seq_len) +
                  ") must be <= " + std::to_string(kMaxMicroBatchTokens) +
                  " tokens per micro-batch");
  }
  c.int_in_range("train.gradient_accumulation_steps", t.gradient_accumulation_steps, 1,
                 kMaxAccumulation);
  if (t.global_batch) {
    c.int_in_range("train.global_batch", *t.global_batch, 1, (int64_t{1} << 31) - 1);
    if (*t.global_batch % t.micro_batch_size != 0) {
      c.fail_at("train.global_batch", "train.global_batch (" + std::to_string(*t.global_batch) +
                                          ") must be a multiple of train.micro_batch_size (" +
                                          std::to_string(t.micro_batch_size) + ")");
    }
  }
  c.int_in_range("train.dist_timeout_s", t.dist_timeout_s, 10, 86400);
  c.in_range("train.grad_bucket_mb", t.grad_bucket_mb, 0.0, 4096.0, true);
  if (t.shard_base && !t.gradient_checkpointing) {
    c.fail("train.shard_base",
           "needs train.gradient_checkpointing=true: without it every layer's gathered weights "
           "stay alive for the backward pass and sharding saves nothing");
  }
  if (t.shard_base && cfg.model.quantize != Quantize::kNone) {
    c.fail("train.shard_base",
           "does not shard NF4 weights; set model.quantize=none or "
           "train.shard_base=false");
  }
  check_optimizer_and_schedule(cfg, c);
  c.non_negative("train.max_grad_norm", t.max_grad_norm);
  c.int_in_range("train.eval_every", t.eval_every, 0, kMaxSteps);
  c.int_in_range("train.save_every", t.save_every, 0, kMaxSteps);
  c.at_least("train.keep_checkpoints", t.keep_checkpoints, 0);
  c.int_in_range("train.log_every", t.log_every, 1, kMaxSteps);
  c.int_in_range("train.max_bad_steps", t.max_bad_steps, 1, kMaxSteps);
  if (t.eval_every > 0 && cfg.data.validation.empty() && cfg.data.val_fraction == 0) {
    c.fail("train.eval_every", "is " + std::to_string(t.eval_every) +
                                   " but there is no validation data; set data.validation or "
                                   "data.val_fraction > 0");
  }
}

}  // namespace

namespace detail {

void validate_with_origins(TrainConfig& cfg, const Origins& origins, const std::string& source) {
  const Checker c(origins, source);
  check_model_and_lora(cfg, c);
  check_data(cfg, c);
  check_train(cfg, c);
  if (cfg.output.dir.empty()) c.fail("output.dir", "required: the run directory");
}

}  // namespace detail

std::string chat_template_problem(const std::string& name) {
  const auto& templates = chat_template_names();
  if (name == "auto" || std::find(templates.begin(), templates.end(), name) != templates.end()) {
    return "";
  }
  std::vector<std::string> names = {"auto"};
  names.insert(names.end(), templates.begin(), templates.end());
  return detail::not_one_of(name, names,
                            {{"llama-2", "llama2"},
                             {"llama-3", "llama3"},
                             {"llama3.1", "llama3"},
                             {"llama-3.1", "llama3"},
                             {"qwen", "chatml"},
                             {"qwen2", "chatml"},
                             {"qwen2.5", "chatml"},
                             {"phi-3", "phi3"},
                             {"gemma2", "gemma"}});
}

std::string device_problem(const std::string& device) {
  if (detail::is_valid_device(device)) return "";
  return "'" + printable(device) + "' is not one of auto, cpu, cuda, cuda:N (N a GPU index)" +
         detail::did_you_mean(device, {"auto", "cpu", "cuda"},
                              {{"gpu", "cuda"}, {"cuda0", "cuda:0"}});
}

void validate(TrainConfig& cfg) {
  detail::validate_with_origins(cfg, {}, "");
}

}  // namespace loratune::config
