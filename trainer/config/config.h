// trainer/config/config.h — the typed training configuration, parsed once from YAML.
//
// A config file holds only overrides on the typed defaults below (as in nanoGPT):
// every key is optional except model.path, data.train and output.dir. Unknown
// keys, duplicate keys, wrong types, out-of-range values and unknown choice
// names are errors; each error is one line naming where the value came from
// (`<file>:<line>` or `override '<text>'`), the key path, and the closest valid
// key or choice:
//   configs/x.yaml:12: unknown key 'lora.rank' (did you mean 'lora.r'?)
//   configs/x.yaml:7: train.optimizer.lr: expected a number, got 'fast'
//   override 'train.lr=1': unknown key 'train.lr' (did you mean 'train.optimizer.lr'?)
//
// Keys are nested maps (`lora: {r: 8}`); dotted keys are for overrides only.
// Numbers follow YAML 1.2: 2e-4 is a number (PyYAML would read a string).
//
// Paths (model.path, data.*, output.dir, ...) are kept exactly as written.
// Relative paths resolve against the process's working directory when they are
// used, not against the YAML file's directory — the behaviour of torchtune,
// axolotl and the HF Trainer, so a config written for `loratune train -c
// configs/x.yaml` run from the repository root works unchanged.
//
// The training loop consumes these structs; it relies on validate() having
// accepted them (load_train_config and config_from_yaml_string always validate).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace loratune::config {

// Floating-point types for weights (model.dtype, output.merge_dtype).
enum class DType { kFloat32, kBFloat16, kFloat16 };  // float32 | bfloat16 | float16
// How data files are read (data.format); see DataConfig::format.
enum class DataFormat { kAuto, kText, kInstruction, kPromptCompletion, kChat, kTokenized };
enum class OptimizerName { kAdamW };                          // adamw
enum class SchedulerName { kConstant, kLinear, kCosine };     // constant | linear | cosine
enum class MixedPrecision { kNone, kBF16, kFP16 };            // none | bf16 | fp16
enum class Quantize { kNone, kNf4 };                          // none | nf4
enum class GgufType { kNone, kF32, kF16, kBF16, kQ8_0 };      // none | f32 | f16 | bf16 | q8_0
enum class LoraInit { kDefault, kGaussian, kPissa, kOlora };  // default | gaussian | pissa | olora

// The YAML spelling of each choice ("bfloat16", "prompt_completion", "bf16", ...).
std::string to_string(DType v);
std::string to_string(DataFormat v);
std::string to_string(OptimizerName v);
std::string to_string(SchedulerName v);
std::string to_string(MixedPrecision v);
std::string to_string(Quantize v);
std::string to_string(GgufType v);
std::string to_string(LoraInit v);

// Built-in chat template names accepted by data.chat_template besides "auto".
const std::vector<std::string>& chat_template_names();  // llama2 llama3 chatml mistral gemma phi3

// "" when `name` is a valid data.chat_template value ("auto" or a built-in),
// else the problem: "'llama-3' is not one of auto, llama2, ... (did you mean
// 'llama3'?)". Shared by the config and the --chat-template options of eval
// and generate, so all three accept and suggest the same names.
std::string chat_template_problem(const std::string& name);

// "" when `device` is auto, cpu, cuda or cuda:N (the `device` key), else the
// problem: "'gpu' is not one of auto, cpu, cuda, cuda:N (N a GPU index) (did
// you mean 'cuda'?)". Shared with the --device options of eval and generate.
std::string device_problem(const std::string& device);

struct ModelSection {
  // model.path: a Hugging Face model directory (config.json, *.safetensors,
  // tokenizer files). Required.
  std::string path;
  // model.dtype: dtype of the frozen base weights. Default bfloat16 (what a
  // 7-8B model needs to fit one GPU). LoRA weights are always kept in float32,
  // as PEFT does.
  DType dtype = DType::kBFloat16;
  // model.quantize: none | nf4. nf4 is QLoRA: the frozen projection weights
  // of the decoder layers (not embeddings, lm_head or norms) are quantized
  // at load to 4-bit NormalFloat exactly as bitsandbytes does (blocks of 64)
  // and dequantized on the fly in model.dtype, the compute dtype. Default none.
  Quantize quantize = Quantize::kNone;
  // model.double_quant: with nf4, also quantize the per-block scales (8-bit,
  // blocks of 256; bitsandbytes' bnb_4bit_use_double_quant). Default true.
  // Ignored when quantize is none.
  bool double_quant = true;
};

struct LoraConfig {
  // lora.r: adapter rank, in [1, 65536]. Default 8 (PEFT's default). As in
  // PEFT, r may exceed a projection's dimensions (the update then has full
  // rank); the pissa and olora inits need r <= min(in, out), checked at load.
  int64_t r = 8;
  // lora.alpha: scaling numerator, > 0. Default 16. The update is scaled by
  // alpha / r, or alpha / sqrt(r) with use_rslora.
  double alpha = 16.0;
  // lora.dropout: dropout on the adapter input, in [0, 1). Default 0.05.
  double dropout = 0.05;
  // lora.target_modules: names of the linear layers that get adapters, matched
  // against the last component of the module name (as PEFT does), or exactly
  // {"all-linear"}: every linear layer in the decoder blocks (lm_head
  // excluded, as in PEFT). In YAML a list, or the string all-linear.
  // Default [q_proj, k_proj, v_proj, o_proj]. Names are checked against the
  // model's layers when the model loads, not here.
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
  // lora.use_rslora: rank-stabilized scaling alpha / sqrt(r). Default false.
  bool use_rslora = false;
  // lora.use_dora: DoRA (weight-decomposed LoRA, PEFT's use_dora): a
  // trainable magnitude per output row rescales W + s·BA. Default false.
  bool use_dora = false;
  // lora.init: how fresh adapters start (PEFT's init_lora_weights).
  // default: A Kaiming-uniform, B zero. gaussian: A ~ N(0, 1/r), B zero.
  // pissa: A, B from the top-r singular vectors of W, which becomes the
  // residual W - s·BA. olora: the same from the QR decomposition of W.
  // pissa/olora save the adapter as the plain rank-2r LoRA on the original
  // weights (it loads anywhere) and need a float base (no model.quantize),
  // no lora.init_from and no lora.use_dora. Default default.
  LoraInit init = LoraInit::kDefault;
  // lora.init_from: a PEFT adapter directory (adapter_config.json +
  // adapter_model.safetensors) to start from instead of the standard init
  // (A Kaiming-uniform, B zero). Default "" (none).
  std::string init_from;

  // True when target_modules is {"all-linear"}.
  bool all_linear() const {
    return target_modules.size() == 1 && target_modules[0] == "all-linear";
  }
};

struct DataConfig {
  // data.train: training files, read as data.format says. In YAML one path
  // or a list. Required, non-empty.
  std::vector<std::string> train;
  // data.validation: validation files; in YAML one path or a list. Default
  // none. Mutually exclusive with val_fraction > 0.
  std::vector<std::string> validation;
  // data.val_fraction: fraction of the training examples held out (after a
  // seeded shuffle) for validation when no validation files are given, in
  // [0, 1). Default 0 (no validation).
  double val_fraction = 0.0;
  // data.format: auto (detected per line from its keys; all lines of one file
  // must agree) |
  // text {"text"} | instruction {"instruction","input"?,"output"} (Alpaca) |
  // prompt_completion {"prompt","completion"} | chat {"messages":[{role,
  // content}]} | tokenized {"input_ids", "labels"?}. Default auto.
  DataFormat format = DataFormat::kAuto;
  // data.chat_template: how chat examples become text (instruction examples
  // use the Alpaca prompt, as axolotl does): auto
  // (the tokenizer's own chat template from tokenizer_config.json) or a
  // built-in name from chat_template_names(). Default auto.
  std::string chat_template = "auto";
  // data.max_seq_len: tokens per sequence, in [2, 2^24] (one input and one target);
  // longer examples are truncated. Default 2048.
  int64_t max_seq_len = 2048;
  // data.packing: concatenate examples into max_seq_len sequences with
  // attention kept inside each example. Default false.
  bool packing = false;
  // data.shuffle: reshuffle the training examples every epoch (seeded).
  // Default true.
  bool shuffle = true;
  // data.train_on_prompt: also compute the loss on prompt/user tokens, not
  // only on responses. Default false (axolotl's train_on_inputs: false).
  bool train_on_prompt = false;
  // data.allow_special_tokens: parse special-token text such as
  // "<|eot_id|>" inside data as the special token. Default false: it stays
  // plain text, so data cannot inject control tokens.
  bool allow_special_tokens = false;
  // data.skip_malformed: skip (and count) malformed records instead of
  // failing on the first one with its file:line. Default false.
  bool skip_malformed = false;
  // data.cache_dir: directory for the tokenized-data cache (reused across
  // runs while the files, tokenizer and data settings are unchanged).
  // Default "": no cache, the data are tokenized at every start.
  std::string cache_dir;
};

struct OptimizerConfig {
  // train.optimizer.name: adamw (decoupled weight decay, torch.optim.AdamW).
  OptimizerName name = OptimizerName::kAdamW;
  // train.optimizer.lr: peak learning rate, > 0. Default 2e-4 (the usual LoRA lr).
  double lr = 2e-4;
  // train.optimizer.betas: [beta1, beta2], each in [0, 1). Default [0.9, 0.999].
  double beta1 = 0.9;
  double beta2 = 0.999;
  // train.optimizer.eps: > 0. Default 1e-8.
  double eps = 1e-8;
  // train.optimizer.weight_decay: >= 0, applied to the LoRA weights. Default 0.
  double weight_decay = 0.0;
  // train.optimizer.loraplus_lr_ratio: LoRA+ (arXiv 2402.12354), a finite
  // number > 0, or null (the default): plain AdamW. When set, the adapter
  // parameters are grouped as PEFT's create_loraplus_optimizer groups them:
  // lora_B weights and every 1-D parameter (a DoRA magnitude) train with
  // lr * ratio, the rest (lora_A) with lr; the schedule scales every group
  // alike. weight_decay is PEFT's loraplus_weight_decay: it applies to both
  // groups, except to parameters named *bias*, which get none. 16 is the
  // paper's usual value.
  std::optional<double> loraplus_lr_ratio;
};

struct SchedulerConfig {
  // train.scheduler.name: constant | linear | cosine (decay to 0 at the last
  // step, after warmup). Default cosine.
  SchedulerName name = SchedulerName::kCosine;
  // train.scheduler.warmup_steps (in [0, 10^9]) or train.scheduler.warmup_ratio (of
  // the total optimizer steps, in [0, 1]): linear warmup from 0. Setting both
  // is an error (ambiguous); null unsets one (useful in overrides). When
  // neither is set, validate() sets warmup_ratio to 0.03.
  std::optional<int64_t> warmup_steps;
  std::optional<double> warmup_ratio;
};

struct TrainLoopConfig {
  // train.epochs (in [0, 10^6], default 1) and train.max_steps (optimizer
  // steps, in [0, 10^9], default 0 = off). Exactly one decides the length: max_steps > 0 takes
  // precedence over epochs (as in the HF Trainer and axolotl); otherwise the
  // run lasts `epochs` epochs. At least one must be > 0.
  int64_t epochs = 1;
  int64_t max_steps = 0;
  // train.micro_batch_size: sequences per forward pass, in [1, 65536], with
  // micro_batch_size * data.max_seq_len < 2^31. Default 1.
  int64_t micro_batch_size = 1;
  // train.gradient_accumulation_steps: micro-batches per optimizer step, in
  // [1, 1024] (a step's micro-batches are all staged before it runs). Default 1.
  int64_t gradient_accumulation_steps = 1;
  // train.global_batch: sequences per optimizer step over all ranks of a
  // distributed run (torchrun), in [1, 2^31); unset (null, the default) means
  // micro_batch_size x gradient_accumulation_steps x world size. Set, each
  // rank accumulates global_batch / (micro_batch_size x world size)
  // micro-batches (which must divide exactly), so the same config trains the
  // same way on any number of ranks and a checkpoint resumes on another
  // world size; gradient_accumulation_steps must then be 1 or that quotient.
  std::optional<int64_t> global_batch;
  // train.dist_timeout_s: seconds a rank of a distributed run waits for the
  // others (rendezvous, start-up, every collective) before it fails with an
  // error naming the phase, in [10, 86400]. Default 600.
  int64_t dist_timeout_s = 600;
  // train.shard_base: in a distributed run, each rank keeps only 1/world of
  // the decoder layers' frozen projection weights and gathers a layer from
  // all ranks just before its forward pass (and again for its recomputation
  // in backward), freeing it after; LoRA weights stay whole on every rank.
  // Needs train.gradient_checkpointing (else every gathered layer would stay
  // alive for backward) and a float base (not model.quantize nf4). A single
  // process ignores it. Default false.
  bool shard_base = false;
  // train.grad_bucket_mb: in a distributed run, the adapter gradients are
  // all-reduced in buckets of about this many MiB, each started while the
  // last micro-batch's backward pass is still computing the earlier layers
  // (the buckets go from the last layer down); 0 waits for the whole
  // backward pass and all-reduces once. In [0, 4096]. Default 25 (as
  // PyTorch DDP's bucket_cap_mb). Changes no result beyond float rounding.
  double grad_bucket_mb = 25;
  OptimizerConfig optimizer;
  SchedulerConfig scheduler;
  // train.max_grad_norm: clip the global gradient L2 norm to this, >= 0;
  // 0 turns clipping off. Default 1.0.
  double max_grad_norm = 1.0;
  // train.mixed_precision: autocast compute dtype: none | bf16 | fp16 (fp16
  // uses a dynamic loss scaler). Default none.
  MixedPrecision mixed_precision = MixedPrecision::kNone;
  // train.gradient_checkpointing: recompute decoder-block activations in the
  // backward pass (less memory, ~30% more compute). Default false.
  bool gradient_checkpointing = false;
  // train.eval_every: evaluate every N optimizer steps, in [0, 10^9]; 0 = only at the
  // end. Needs validation data when > 0. Default 0.
  int64_t eval_every = 0;
  // train.save_every: checkpoint every N optimizer steps, in [0, 10^9]; 0 = only the
  // final adapter. Default 0.
  int64_t save_every = 0;
  // train.keep_checkpoints: newest intermediate checkpoints kept, >= 0;
  // 0 = keep all. Default 3.
  int64_t keep_checkpoints = 3;
  // train.log_every: log loss/lr/grad-norm every N optimizer steps, in [1, 10^9].
  // Default 1.
  int64_t log_every = 1;
  // train.max_bad_steps: consecutive optimizer steps with a non-finite loss
  // (each one skipped) before the run aborts, in [1, 10^9]. Default 5.
  int64_t max_bad_steps = 5;
};

// output.gguf: GGUF files for llama.cpp / Ollama / LM Studio written at the
// end of a finished run, as `loratune export-gguf` writes them
// (trainer/gguf/export.h), from the model the run trained on (a .gguf
// model.path: its float32 import; with model.quantize nf4 the adapter is
// merged onto the full-precision base, as export-gguf merges it, where
// output.merge writes the dequantized NF4 base). A model or tokenizer the
// export cannot carry is refused before training starts.
struct GgufOutputConfig {
  // output.gguf.type: none | f32 | f16 | bf16 | q8_0. Not none: the base with
  // the final adapter merged, in <dir>/model.<type>.gguf (`export-gguf
  // --model model.path --adapter <dir>/adapter --type <type>`), and beside it
  // an Ollama Modelfile (FROM ./model.<type>.gguf, a stop parameter per
  // end-of-turn token). Default none.
  GgufType type = GgufType::kNone;
  // output.gguf.adapter: write the adapter alone as llama.cpp's LoRA adapter
  // GGUF, <dir>/adapter.gguf (`export-gguf --adapter-only`, f32), whatever
  // type says. Default false.
  bool adapter = false;
};

struct OutputConfig {
  // output.dir: run directory (resolved config, checkpoints, logs, final
  // adapter in PEFT format). Required.
  std::string dir;
  // output.merge: also write the base model with the adapter merged in
  // (HF safetensors) to <dir>/merged. Default false.
  bool merge = false;
  // output.merge_dtype: dtype of the merged weights; nullopt ("auto" in
  // YAML) = the base checkpoint's own dtype (config.json's, else its
  // files'), as `loratune merge` without --dtype: a bfloat16 model trained in
  // float32 on a CPU is merged back to bfloat16. Default auto.
  std::optional<DType> merge_dtype;
  // output.overwrite: allow a non-empty output.dir to be replaced. Default
  // false: an existing run is never clobbered.
  bool overwrite = false;
  GgufOutputConfig gguf;
};

struct TrainConfig {
  ModelSection model;
  // device: auto (cuda:0 if available, else cpu) | cpu | cuda | cuda:N.
  // Default auto.
  std::string device = "auto";
  // seed: seeds init, dropout, shuffling and the validation split, >= 0.
  // Default 42.
  int64_t seed = 42;
  LoraConfig lora;
  DataConfig data;
  TrainLoopConfig train;
  OutputConfig output;
};

bool operator==(const TrainConfig& a, const TrainConfig& b);
inline bool operator!=(const TrainConfig& a, const TrainConfig& b) {
  return !(a == b);
}

// Reads the YAML file at `yaml_path`, applies `overrides` in order, then
// validate()s. Each override is `a.b=value` where value is a YAML scalar or
// flow collection (`train.optimizer.lr=1e-4`, `lora.target_modules=[q_proj,v_proj]`,
// `train.optimizer={lr: 1e-4, eps: 1e-6}`: sets only the keys it names);
// `key=null` unsets an optional key (lora.init_from, data.validation,
// data.cache_dir, train.optimizer.loraplus_lr_ratio,
// train.scheduler.warmup_steps/warmup_ratio).
// Throws loratune::Error (one line; ErrorKind::kIo for a missing/unreadable
// file, kConfig for everything else) for a missing/unreadable file, YAML syntax
// errors (file:line:column), unknown or duplicate keys, wrong types, bad
// override syntax and everything validate() rejects.
TrainConfig load_train_config(const std::string& yaml_path,
                              const std::vector<std::string>& overrides);

// As load_train_config, from YAML text; `source_name` stands for the file in errors.
TrainConfig config_from_yaml_string(const std::string& yaml,
                                    const std::vector<std::string>& overrides = {},
                                    const std::string& source_name = "<string>");

// The fully resolved config as YAML: every key with its value, in schema
// order, for the run directory. load(to_yaml(c)) == c for any c that
// validate() accepted (it resolves the warmup default).
std::string to_yaml(const TrainConfig& cfg);

// Checks ranges and cross-field rules (see each field) and resolves the
// warmup default. Throws loratune::Error naming the key path and the rule.
void validate(TrainConfig& cfg);

}  // namespace loratune::config
