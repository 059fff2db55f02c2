// trainer/train/train.h — the LoRA training loop: loss, AdamW, lr schedules,
// gradient accumulation and clipping, evaluation, checkpoints and resume.
//
// The reference is Hugging Face transformers + PEFT + torch.optim.AdamW:
//   * loss of an optimizer step = sum over its micro-batches of the per-token
//     cross entropy (float32; logits[:, :-1] vs labels[:, 1:], -100 ignored)
//     divided by the number of target tokens of the WHOLE step (transformers'
//     num_items_in_batch fix), so accumulation gives the same gradient as one
//     big batch;
//   * AdamW with decoupled weight decay (p *= 1 - lr*wd) over the adapter
//     parameters only, through at::_fused_adamw_ (CPU and CUDA); with LoRA+
//     (train.optimizer.loraplus_lr_ratio) in PEFT's create_loraplus_optimizer
//     param groups;
//   * clipping as torch.nn.utils.clip_grad_norm_ (foreach norms, coefficient
//     max_norm / (norm + 1e-6) clamped to 1), returning the pre-clip norm;
//   * lr at optimizer step k (0-based) = lr * lambda(k) with transformers'
//     get_{constant,linear,cosine}_schedule_with_warmup lambdas.
// A step whose loss or gradient norm is not finite is skipped (no update,
// AdamW's step counters unchanged, grads zeroed) through _fused_adamw_'s
// found_inf, so no host-device sync is needed; the schedule still advances.
//
// Shapes: B micro-batch rows, T tokens, V vocabulary.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/config/config.h"
#include "trainer/data/data.h"
#include "trainer/dist/dist.h"
#include "trainer/lora/lora.h"
#include "trainer/model/model.h"

namespace loratune::tokenizer {
class Tokenizer;
}

namespace loratune::train {

class DeviceTimer;  // device.h

// ---- loss (loss.cpp) --------------------------------------------------------

// One micro-batch on the model's device. All [B,T] int64; attention_mask
// 1/0. segment_ids set only for packed batches; attention_mask only for
// unpacked batches whose padding is not all at the row ends (right padding
// needs none: the causal mask hides it, and padded positions hold no targets).
struct MicroBatch {
  at::Tensor input_ids, labels, position_ids, attention_mask, segment_ids;
  int64_t target_tokens = 0;  // labels[:, 1:] != -100
  int64_t tokens = 0;         // non-padding tokens
  // Position of this micro-batch in its step over all ranks (rank r's a-th
  // of `accum` is r * accum + a): with Trainer::seed_dropout, its dropout
  // masks depend on (seed, step, index) alone, whichever rank runs it.
  int64_t index = 0;
};

// A data::Batch as tensors on `device`. `packed` passes segment_ids (and the
// per-example position_ids) to the model; otherwise the attention mask where
// needed. Bound for CUDA, the batch is staged in pinned memory and copied
// asynchronously (no host-device sync).
MicroBatch to_micro_batch(const data::Batch& b, const c10::Device& device, bool packed);

// Number of target tokens: labels[:, 1:] != -100. labels [B,T].
int64_t count_target_tokens(const at::Tensor& labels);

// Sum of the float32 cross entropy of logits [B,T,V] against the shifted
// labels [B,T] (ignore -100): a 0-dim float32 tensor on the logits' device.
at::Tensor token_loss_sum(const at::Tensor& logits, const at::Tensor& labels);

// The same sum from the final hidden states [B,T,D] and the model's output
// head (frozen weight [V,D] and its logit transform, e.g. Gemma 2's final
// soft-cap: the same description CausalLM::logits applies): hidden[:, :-1]
// predicts labels[:, 1:],
// and only the `target_tokens` rows (labels[:, 1:] != -100, the caller's
// count; no device sync) are projected, in chunks of tokens, so the [N,V]
// logits and their gradient never exist whole. With autograd on, the
// gradient w.r.t. hidden is formed in the forward pass (the loss is a sum)
// and backward scales it. A 0-dim float32 tensor on hidden's device.
at::Tensor linear_loss_sum(const at::Tensor& hidden, const model::OutputHead& head,
                           const at::Tensor& labels, int64_t target_tokens);

// forward + loss sum for one micro-batch (linear_loss_sum, or token_loss_sum
// when lm_head carries an adapter); with `checkpoint`, through
// hidden_states_checkpointed (activation checkpointing).
at::Tensor micro_batch_loss_sum(model::CausalLMImpl& model, const MicroBatch& mb,
                                bool checkpoint = false);

// ---- schedule (schedule.cpp) -------------------------------------------------

class LrSchedule {
 public:
  // total_steps >= 1 optimizer steps; warmup resolved by warmup_steps(cfg, total).
  LrSchedule(const config::SchedulerConfig& cfg, double peak_lr, int64_t total_steps);
  // The lr used by optimizer step `step` (0-based), exactly transformers'
  // LambdaLR value base_lr * lambda(step).
  double lr_at(int64_t step) const;
  int64_t warmup() const { return warmup_; }
  int64_t total() const { return total_; }

 private:
  config::SchedulerName name_;
  double peak_;
  int64_t warmup_, total_;
};

// warmup_steps, or ceil(total * warmup_ratio) as the HF Trainer computes it.
int64_t warmup_steps(const config::SchedulerConfig& cfg, int64_t total_steps);

// ---- optimizer (optimizer.cpp) -------------------------------------------------

// One parameter group of AdamW, as a torch.optim param_groups entry: which
// of the optimizer's parameters it holds, its lr before the schedule (the
// LambdaLR base_lr) and its weight decay.
struct ParamGroup {
  std::vector<size_t> params;  // indices into AdamW::params()
  double lr = 0;
  double weight_decay = 0;
};

// The AdamW groups of the adapter parameters `named` (lora::adapter_tensors:
// PEFT names, in AdamW's parameter order) under `cfg`. Without
// cfg.loraplus_lr_ratio: one group of all, lr and weight_decay. With it, as
// PEFT's create_loraplus_optimizer(model, AdamW, lr=lr, loraplus_lr_ratio=
// ratio, loraplus_weight_decay=weight_decay) groups them, empty groups left
// out, in its order:
//   A         every other parameter (lora_A):          lr,         weight_decay
//   B         name contains "lora_B", or 1-D (a DoRA
//             magnitude), unless named *bias*:           lr * ratio, weight_decay
//   B no-decay the same, named *bias*:                  lr * ratio, 0
// (PEFT also leaves parameters inside nn.LayerNorm modules undecayed and
// gives LoRA embedding layers their own group; adapters here sit on linear
// projections only, so neither case arises.)
std::vector<ParamGroup> adapter_param_groups(
    const std::vector<std::pair<std::string, at::Tensor>>& named,
    const config::OptimizerConfig& cfg);

// AdamW over a fixed list of float32 parameters in param groups; state
// tensors live beside them (same device and dtype; step counters float32
// scalars per parameter, as torch.optim.AdamW(fused=True) keeps them). The
// state is per parameter in params() order whatever the groups.
class AdamW {
 public:
  // One group: every parameter, cfg.lr and cfg.weight_decay.
  AdamW(std::vector<at::Tensor> params, const config::OptimizerConfig& cfg);
  // `groups` must hold every parameter exactly once (throws Error otherwise);
  // empty groups are dropped.
  AdamW(std::vector<at::Tensor> params, const config::OptimizerConfig& cfg,
        std::vector<ParamGroup> groups);
  // One update from the parameters' .grad, group g with lr lrs[g] (one per
  // group: one at::_fused_adamw_ call each, as torch.optim.AdamW(fused=True)
  // steps each param group). When `found_inf` (a 0-dim float32 tensor,
  // 1 = skip) is defined and 1, nothing changes.
  void step(const std::vector<double>& lrs, const at::Tensor& found_inf = {});
  // The same for an optimizer of one group; throws Error with several.
  void step(double lr, const at::Tensor& found_inf = {});
  // Zeroes every .grad in place (allocating zero grads the first time).
  void zero_grad();
  const std::vector<at::Tensor>& params() const { return params_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  std::vector<at::Tensor>& exp_avg() { return exp_avg_; }
  std::vector<at::Tensor>& exp_avg_sq() { return exp_avg_sq_; }
  std::vector<at::Tensor>& steps() { return steps_; }

 private:
  std::vector<at::Tensor> params_, exp_avg_, exp_avg_sq_, steps_;
  std::vector<ParamGroup> groups_;
  config::OptimizerConfig cfg_;
};

// torch.nn.utils.clip_grad_norm_(params, max_norm) over the grads of
// `params`: returns the total L2 norm before clipping (0-dim float32, on
// device, no sync). max_norm <= 0 only measures.
at::Tensor clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

// ---- one optimizer step (loop.cpp) ------------------------------------------

struct StepResult {
  at::Tensor loss;                // 0-dim float32 on device: the step's mean token loss
  at::Tensor grad_norm;           // 0-dim float32 on device: pre-clip norm
  at::Tensor found_inf;           // 0-dim float32 on device: 1 when the step was skipped
  double lr = 0;                  // the scheduled lr (train.optimizer.lr's group)
  std::vector<double> group_lrs;  // the lr of each AdamW group (groups() order)
  int64_t target_tokens = 0;      // of the whole step (all ranks)
  int64_t tokens = 0;             // of the whole step (all ranks)
  // Distributed runs only: 0-dim float32 on device, the number of ranks that
  // asked to stop (step()'s stop_request summed over ranks), the same on
  // every rank.
  at::Tensor stop_requests;
};

// What a step's micro-batches hold over all ranks of a distributed run.
// Every rank counts the whole step's micro-batches from the loader
// (data::DataLoader::peek_counts, without collating them), so it knows these
// without communication.
struct StepTotals {
  int64_t target_tokens = 0;  // labels[:, 1:] != -100
  int64_t tokens = 0;         // non-padding tokens
  // The totals of `micro` alone: a step that runs all its micro-batches
  // itself (one process).
  static StepTotals of(const std::vector<MicroBatch>& micro);
};

// Owns the optimizer and schedule for `model`'s adapter parameters and runs
// optimizer steps on micro-batches the caller supplies. The AdamW groups are
// adapter_param_groups(lora::adapter_tensors(model), cfg.optimizer); each
// group's lr at step k is its lr times the schedule's lambda(k), as
// transformers' LambdaLR scales every param group. Does not sync the host
// with the device.
//
// Data parallel (`group` set): every rank runs step() on its own share of
// the step's micro-batches, each loss divided by the whole step's target
// count (StepTotals), so the sum over ranks of their gradients is the
// gradient of the whole step. The adapter gradients are views into one flat
// float32 buffer that also carries the loss and the stop requests; summing
// it over the ranks makes the gradient, the loss and the decision to stop
// the same on every rank, then clipping (the global norm), the non-finite
// check and AdamW run identically on each, so the replicated LoRA weights
// stay equal without being sent. The sum goes in buckets of
// cfg.grad_bucket_mb (GradReducer, loop.cpp): during the last micro-batch's
// backward pass, each bucket is all-reduced as soon as the gradients in it
// are final, while backward goes on with the earlier layers.
class Trainer {
 public:
  Trainer(model::CausalLMImpl& model, const config::TrainLoopConfig& cfg, int64_t total_steps,
          dist::Group* group = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  // One optimizer step over `micro` (this rank's share of the accumulation
  // group), `totals` being the counts of the whole step over all ranks
  // (StepTotals::of(micro) for one process). Puts the model in training
  // mode. Throws when the step has no target, or `micro` is empty without a
  // group (with one, a rank may have no share). With a group,
  // `stop_request` (this rank wants to stop) is summed into
  // StepResult::stop_requests.
  StepResult step(const std::vector<MicroBatch>& micro, const StepTotals& totals,
                  bool stop_request = false);
  // From now on each micro-batch reseeds the device's default generator with
  // a hash of (seed, step, MicroBatch::index) before its forward pass, so
  // LoRA dropout draws the same masks on any number of ranks and after a
  // resume. Without it the masks continue the generator's stream.
  void seed_dropout(uint64_t seed) { dropout_seed_ = seed; }
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t s) { step_ = s; }
  // Data parallel: the number of gradient all-reduces per step (0 without a
  // group).
  int64_t grad_buckets() const;
  // ... of which the last step started while its backward pass still ran.
  int64_t grad_buckets_overlapped() const;
  AdamW& optimizer() { return opt_; }
  const LrSchedule& schedule() const { return sched_; }

 private:
  model::CausalLMImpl& model_;
  config::TrainLoopConfig cfg_;
  AdamW opt_;
  LrSchedule sched_;
  std::vector<LrSchedule> group_sched_;  // one per opt_.groups(), peak = the group's lr
  int64_t step_ = 0;
  std::optional<uint64_t> dropout_seed_;
  dist::Group* group_ = nullptr;
  at::Tensor flat_;  // with group_: [grads of opt_.params() | loss | stop requests]
  int64_t grad_numel_ = 0;
  class GradReducer;
  std::unique_ptr<GradReducer> reducer_;  // with group_
};

// Mean token loss over `batches` (sum CE / all their target tokens) in eval
// mode without autograd; restores the previous training mode.
struct EvalResult {
  double loss = 0;
  double perplexity = 0;
  int64_t target_tokens = 0;
};
EvalResult evaluate(model::CausalLMImpl& model, const std::vector<MicroBatch>& batches);

// Loss and perplexity of `model` on the files of `data_cfg` (data.train,
// read as the training data is: format, masking, max_seq_len, packing), in
// file order and micro-batches of `batch_size`. `tok` must have been loaded
// from `tokenizer_dir`.
EvalResult evaluate_files(model::CausalLMImpl& model, const tokenizer::Tokenizer& tok,
                          const std::string& tokenizer_dir, const config::DataConfig& data_cfg,
                          int64_t batch_size);

// ---- activation checkpointing (activation_checkpoint.cpp) -------------------

// Runs `fn(x)` so that its intermediate activations are not kept for the
// backward pass: backward recomputes fn with the CPU (and CUDA) RNG states
// of the forward restored, so dropout masks repeat. `params` are the
// trainable tensors fn uses (LoRA A/B of the layer): they are passed to the
// autograd node so their gradients are computed. x [..] -> same as fn's.
at::Tensor checkpointed(const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& x,
                        const std::vector<at::Tensor>& params);

// model.forward(input_ids, opt) (no KV cache) with every decoder layer
// checkpointed: logits [B,T,V]. It is the model's own forward pass with
// ForwardOptions::run_layer wrapping each layer in `checkpointed`, so the
// two cannot diverge.
at::Tensor forward_checkpointed(model::CausalLMImpl& model, const at::Tensor& input_ids,
                                const model::ForwardOptions& opt);
// The same before lm_head: the final normed hidden states [B,T,D].
at::Tensor hidden_states_checkpointed(model::CausalLMImpl& model, const at::Tensor& input_ids,
                                      const model::ForwardOptions& opt);

// ---- sharded base weights (shard_base.cpp) -------------------------------------

// The frozen projection weights of the decoder layers (attention and MLP)
// split over the ranks of a data-parallel run (train.shard_base): rank r
// keeps the r-th of `world` equal chunks of each layer's weights laid end to
// end (the last chunk zero-padded), and each forward call of a layer gathers
// the whole layer with one all-gather and drops it after
// (DecoderLayerImpl::weight_scope). With activation checkpointing, backward
// gathers each layer again for its recomputation and frees it when that
// layer's backward is done, so a rank holds 1/world of the layers' weights
// plus two or three layers whole. While a layer runs, the next one's gather
// (up the layers in a forward pass, down them in backward) is already under
// way. Embeddings, norms, lm_head and the LoRA
// weights stay whole on every rank.
//
// Every rank must run the same forward passes in the same order (each one
// is a collective per layer): the training steps do; evaluation runs every
// batch on every rank.
class ShardedBase {
 public:
  // Takes the weights as loaded (zero-copy views of the mapped files, on the
  // host even for a GPU model when loaded with LoadOptions::
  // layer_projections_on_host: only this rank's chunk is read from them and
  // sent to the model's device, with the projections' adapters) and
  // installs the weight scopes. Throws for NF4 projections.
  ShardedBase(model::CausalLMImpl& model, dist::Group& group);
  ~ShardedBase();
  ShardedBase(const ShardedBase&) = delete;
  ShardedBase& operator=(const ShardedBase&) = delete;
  int64_t held_bytes() const { return held_bytes_; }  // this rank's chunks
  int64_t full_bytes() const { return full_bytes_; }  // the weights whole

 private:
  struct Piece;
  struct Layer;
  std::shared_ptr<void> gather(size_t index);
  // Starts gathering layer `index` into a free buffer (returned).
  at::Tensor start_gather(size_t index, std::unique_ptr<dist::Group::Pending>* pending);
  // A [numel] view of a gather buffer no live tensor uses.
  at::Tensor buffer(int64_t numel, const at::TensorOptions& options);

  dist::Group& group_;
  std::vector<Layer> layers_;
  std::vector<at::Tensor> pool_;  // gather buffers of max_layer_numel_
  // The next layer's gather, started while the current one runs.
  std::unique_ptr<dist::Group::Pending> prefetch_;
  size_t prefetch_index_ = 0;
  at::Tensor prefetch_buffer_;
  int64_t max_layer_numel_ = 0;
  int64_t held_bytes_ = 0, full_bytes_ = 0;
};

// ---- metrics and progress (metrics.cpp, progress.cpp) ------------------------

class Progress;

// metrics.jsonl: one JSON object per line, appended and flushed per record.
class MetricsLog {
 public:
  // Opens `path` for appending (creating it). An empty path: a log that
  // writes nothing (the ranks other than 0 of a distributed run).
  explicit MetricsLog(std::string path);
  void write(const nlohmann::ordered_json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The loss of the last "train" and of the last "val" record of a
// metrics.jsonl (nullopt where there is none, or the value is null).
struct FinalLosses {
  std::optional<double> train;
  std::optional<double> val;
  int64_t last_step = 0;  // the largest "step" of any record
};
FinalLosses read_final_losses(const std::string& metrics_path);

// The step records of metrics.jsonl and the progress line. Steps are queued
// as device tensors and written at log points only: flush() is the one place
// the step loop waits for the device (one device-to-host copy per flush).
// It also counts consecutive skipped (non-finite) steps.
class StepLogger {
 public:
  // elapsed0: the run's elapsed seconds when this process started (resume).
  StepLogger(MetricsLog& log, Progress& progress, DeviceTimer& timer, const c10::Device& device,
             int64_t max_bad_steps, double elapsed0);
  // Starts timing a window of steps (before its first step is queued).
  void open_window();
  void add(int64_t step, StepResult r);
  // Writes the queued steps; false when the run has reached max_bad_steps
  // consecutive skipped steps. On CUDA the records also hold the window's
  // device time per step (CUDA events) and the caching allocator's memory.
  bool flush(double elapsed_s);
  int64_t bad_run() const { return bad_run_; }  // consecutive skipped steps so far

 private:
  MetricsLog& log_;
  Progress& progress_;
  DeviceTimer& timer_;
  c10::Device device_;
  int64_t max_bad_steps_;
  int64_t bad_run_ = 0;
  std::vector<std::pair<int64_t, StepResult>> pending_;
  double window_start_s_;
  int64_t window_tokens_ = 0;
  bool window_open_ = false;  // the timer is running
};

// A progress display on stderr: a \r-updated bar on a TTY, plain lines
// otherwise (or when forced); `silent` shows nothing (the ranks other than 0
// of a distributed run).
class Progress {
 public:
  Progress(int64_t total_steps, bool force_plain = false, bool silent = false);
  void update(int64_t step, double loss, double lr, double tokens_per_s, double elapsed_s,
              double grad_norm);
  void message(const std::string& line);  // a full line (clears the bar)
  void finish();

 private:
  int64_t total_;
  bool tty_;
  bool silent_;
  bool bar_shown_ = false;
};

// ---- checkpoints (checkpoint.cpp) --------------------------------------------

// What a checkpoint holds besides the adapter.
struct TrainState {
  int64_t step = 0;  // optimizer steps done
  data::LoaderPosition data_position;
  int64_t total_steps = 0;
  int64_t tokens_seen = 0;
  double elapsed_s = 0;
  // The ranks that trained it, and the sequences each optimizer step read
  // over all of them (micro_batch_size x accumulation x world size; 0 in
  // checkpoints older than these fields). A checkpoint resumes on any number
  // of ranks that keeps sequences_per_step.
  int64_t world_size = 1;
  int64_t sequences_per_step = 0;
};

// True when every LoRA parameter of `model` is finite (one device sync).
bool adapter_is_finite(model::CausalLMImpl& model);

// Writes <run_dir>/checkpoints/step-<state.step>/ atomically: adapter/ (PEFT
// format), optimizer.safetensors (moments and step counters by PEFT tensor
// name, RNG states "rng.cpu", "rng.cuda.<i>"), state.json, and a copy of
// metrics.jsonl as it is now. Then removes all but the newest `keep`
// checkpoints (keep 0 = keep all). Returns the directory. Non-finite adapter
// weights are never written: it throws Error instead, before pruning, so the
// newest checkpoint on disk is always a finite one.
std::string save_checkpoint(const std::string& run_dir, model::CausalLMImpl& model,
                            const lora::LoraSpec& spec, AdamW& opt, const TrainState& state,
                            int64_t keep);

// The newest complete checkpoint directory of `run_dir`, or "" when none.
std::string latest_checkpoint(const std::string& run_dir);

// Restores adapter weights, optimizer state and RNG states from `ckpt_dir`
// into `model` / `opt` and returns the train state. Throws naming the file
// and tensor on any mismatch.
TrainState load_checkpoint(const std::string& ckpt_dir, model::CausalLMImpl& model, AdamW& opt);

// ---- the whole run (run.cpp) -------------------------------------------------

struct RunOptions {
  bool resume = false;
  // Polled once per optimizer step; nonzero (the signal number) stops the
  // run after the current step with a checkpoint.
  const std::atomic<int>* stop_signal = nullptr;
  // Test hook: after this many optimizer steps behave as if SIGTERM arrived (0 = off).
  int64_t stop_after_step = 0;
  bool plain_progress = false;  // plain log lines even on a TTY
  // --resume with a config that changes training (lr, data, seed, ...).
  bool allow_config_change = false;
  // The model directory to read when model.path is not one itself (a .gguf
  // file's import, see gguf::resolve_model_path); empty: model.path. The
  // adapter's base_model_name_or_path and the saved config keep model.path.
  std::string model_dir;
  // A distributed run (torchrun): this rank's process group, null for a
  // single process. Rank 0 alone writes (run directory, metrics, checkpoints,
  // adapter); every rank reads its share of each step's micro-batches; a
  // torchrun restart (TORCHELASTIC_RESTART_COUNT > 0) resumes from the newest
  // checkpoint by itself.
  dist::Group* group = nullptr;
  // Test hook for restarts: this rank kills itself (SIGKILL) after this
  // optimizer step, in the group's first attempt only (crash_step 0 = off).
  int crash_rank = -1;
  int64_t crash_step = 0;
};

// Config keys a resumed run may change without allow_config_change: they do
// not change what is computed (logging, checkpoint cadence, merge, cache).
const std::vector<std::string>& resume_neutral_keys();

// The dotted keys whose values differ between two resolved configs (YAML
// text as config::to_yaml writes it), with old and new values; keys in
// resume_neutral_keys() are left out.
struct ConfigChange {
  std::string key, before, after;
};
std::vector<ConfigChange> config_changes(const std::string& before_yaml,
                                         const std::string& after_yaml);

struct RunResult {
  int64_t steps_done = 0;
  int stopped_by_signal = 0;  // the signal number when stopped early, else 0
  bool aborted_bad_steps = false;
  std::string checkpoint;  // last checkpoint written ("" when none)
  // --resume of a run whose training had finished (adapter/ written) but
  // whose requested exports are missing (missing_exports): nothing was
  // trained; the caller writes the missing exports.
  bool exports_only = false;
};

// The exports cfg.output asks for that cfg.output.dir lacks, by name:
// "merged" (output.merge), "model.<type>.gguf" (output.gguf.type; also when
// its Modelfile is missing), "adapter.gguf" (output.gguf.adapter).
std::vector<std::string> missing_exports(const config::TrainConfig& cfg);

// Trains as `cfg` says into cfg.output.dir:
//   config.yaml (the resolved config), metrics.jsonl, checkpoints/step-N/,
//   adapter/ (the final adapter in PEFT format, written last).
// A directory holding a finished run (adapter/) is refused unless
// output.overwrite (which clears it first) or resume (which then trains
// nothing: with the run's own config and some requested export missing it
// returns exports_only, else it refuses: nothing to resume); a directory with
// checkpoints but no adapter is refused unless resume or overwrite. With
// resume, training continues from the newest checkpoint and is bitwise
// identical on CPU to an uninterrupted run. Too many consecutive non-finite
// steps (train.max_bad_steps, checked at log points) write a checkpoint (when
// the weights are still finite) and throw Error; LoRA weights that became
// non-finite (checked at log points and before every write) throw Error
// naming the last finite checkpoint, and nothing non-finite is written.
// On resume, a config that changes training (anything but the keys listed in
// resume_neutral_keys()) is refused unless opts.allow_config_change; then
// config.yaml records the change as comments; a run directory without its
// config.yaml cannot be checked and is refused (kCorrupt). A stop request writes a checkpoint and
// returns with stopped_by_signal set. train.mixed_precision other than none is refused (no autocast
// yet): bf16 training is model.dtype=bfloat16 with float32 LoRA weights.
RunResult run_training(const config::TrainConfig& cfg, const RunOptions& opts);

}  // namespace loratune::train
