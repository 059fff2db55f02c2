// Choice spellings, suggestions, number formatting and equality for the config.
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "trainer/config/config.h"
#include "trainer/config/detail.h"
#include "trainer/io/error.h"

namespace loratune::config {
namespace detail {

const ChoiceTable<DType>& dtype_table() {
  static const ChoiceTable<DType> t{
      {{"float32", DType::kFloat32}, {"bfloat16", DType::kBFloat16}, {"float16", DType::kFloat16}},
      {{"fp32", "float32"},
       {"float", "float32"},
       {"bf16", "bfloat16"},
       {"fp16", "float16"},
       {"half", "float16"}}};
  return t;
}

const ChoiceTable<DataFormat>& format_table() {
  static const ChoiceTable<DataFormat> t{{{"auto", DataFormat::kAuto},
                                          {"text", DataFormat::kText},
                                          {"instruction", DataFormat::kInstruction},
                                          {"prompt_completion", DataFormat::kPromptCompletion},
                                          {"chat", DataFormat::kChat},
                                          {"tokenized", DataFormat::kTokenized}},
                                         {{"alpaca", "instruction"},
                                          {"completion", "prompt_completion"},
                                          {"input_output", "prompt_completion"},
                                          {"sharegpt", "chat"},
                                          {"messages", "chat"},
                                          {"conversation", "chat"},
                                          {"pretokenized", "tokenized"}}};
  return t;
}

const ChoiceTable<OptimizerName>& optimizer_table() {
  static const ChoiceTable<OptimizerName> t{
      {{"adamw", OptimizerName::kAdamW}},
      {{"adamw_torch", "adamw"}, {"adamw_hf", "adamw"}, {"adam", "adamw"}, {"AdamW", "adamw"}}};
  return t;
}

const ChoiceTable<SchedulerName>& scheduler_table() {
  static const ChoiceTable<SchedulerName> t{{{"constant", SchedulerName::kConstant},
                                             {"linear", SchedulerName::kLinear},
                                             {"cosine", SchedulerName::kCosine}},
                                            {{"constant_with_warmup", "constant"},
                                             {"cosine_with_warmup", "cosine"},
                                             {"cosine_annealing", "cosine"},
                                             {"linear_with_warmup", "linear"}}};
  return t;
}

const ChoiceTable<MixedPrecision>& mixed_precision_table() {
  static const ChoiceTable<MixedPrecision> t{{{"none", MixedPrecision::kNone},
                                              {"bf16", MixedPrecision::kBF16},
                                              {"fp16", MixedPrecision::kFP16}},
                                             {{"no", "none"},
                                              {"off", "none"},
                                              {"fp32", "none"},
                                              {"float32", "none"},
                                              {"bfloat16", "bf16"},
                                              {"float16", "fp16"},
                                              {"half", "fp16"}}};
  return t;
}

const ChoiceTable<Quantize>& quantize_table() {
  static const ChoiceTable<Quantize> t{{{"none", Quantize::kNone}, {"nf4", Quantize::kNf4}},
                                       {{"no", "none"},
                                        {"off", "none"},
                                        {"false", "none"},
                                        {"4bit", "nf4"},
                                        {"int4", "nf4"},
                                        {"fp4", "nf4"},
                                        {"bnb", "nf4"},
                                        {"bnb_4bit", "nf4"},
                                        {"qlora", "nf4"}}};
  return t;
}

const ChoiceTable<LoraInit>& lora_init_table() {
  static const ChoiceTable<LoraInit> t{{{"default", LoraInit::kDefault},
                                        {"gaussian", LoraInit::kGaussian},
                                        {"pissa", LoraInit::kPissa},
                                        {"olora", LoraInit::kOlora}},
                                       {{"true", "default"},
                                        {"kaiming", "default"},
                                        {"normal", "gaussian"},
                                        {"svd", "pissa"},
                                        {"qr", "olora"}}};
  return t;
}

const ChoiceTable<GgufType>& gguf_type_table() {
  // Types export-gguf does not write point at the nearest one it does.
  static const ChoiceTable<GgufType> t{{{"none", GgufType::kNone},
                                        {"f32", GgufType::kF32},
                                        {"f16", GgufType::kF16},
                                        {"bf16", GgufType::kBF16},
                                        {"q8_0", GgufType::kQ8_0}},
                                       {{"no", "none"},
                                        {"off", "none"},
                                        {"false", "none"},
                                        {"fp32", "f32"},
                                        {"float32", "f32"},
                                        {"fp16", "f16"},
                                        {"float16", "f16"},
                                        {"half", "f16"},
                                        {"bfloat16", "bf16"},
                                        {"q8", "q8_0"},
                                        {"int8", "q8_0"},
                                        {"q4", "q8_0"},
                                        {"q4_0", "q8_0"},
                                        {"q4_1", "q8_0"},
                                        {"q4_k", "q8_0"},
                                        {"q4_k_m", "q8_0"},
                                        {"q5_k_m", "q8_0"},
                                        {"q6_k", "q8_0"}}};
  return t;
}

std::string did_you_mean(const std::string& value, const std::vector<std::string>& names,
                         const std::vector<std::pair<std::string, std::string>>& aliases) {
  for (const auto& [alias, name] : aliases) {
    if (alias == value) return " (did you mean '" + name + "'?)";
  }
  // Case-only differences ("BFloat16") are the most likely slip.
  for (const auto& name : names) {
    if (name.size() != value.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i) {
      same = std::tolower(static_cast<unsigned char>(name[i])) ==
             std::tolower(static_cast<unsigned char>(value[i]));
    }
    if (same) return " (did you mean '" + name + "'?)";
  }
  const std::string best = closest_match(value, names);
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

std::string not_one_of(const std::string& value, const std::vector<std::string>& names,
                       const std::vector<std::pair<std::string, std::string>>& aliases) {
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  return "'" + printable(value) + "' is not one of " + list + did_you_mean(value, names, aliases);
}

std::string format_double(double v) {
  if (std::isnan(v)) return ".nan";
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  const size_t e = s.find('e');
  if (s.find('.') == std::string::npos) {
    if (e == std::string::npos) {
      s += ".0";
    } else {
      s.insert(e, ".0");
    }
  }
  return s;
}

bool is_valid_device(const std::string& device) {
  if (device == "auto" || device == "cpu" || device == "cuda") return true;
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5 || device.size() > 8) return false;
  for (size_t i = 5; i < device.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(device[i]))) return false;
  }
  return true;
}

}  // namespace detail

namespace {

template <typename E>
std::string name_of(const detail::ChoiceTable<E>& table, E v) {
  for (const auto& [name, value] : table.values) {
    if (value == v) return name;
  }
  throw Error("config: enum value " + std::to_string(static_cast<int>(v)) + " has no name");
}

}  // namespace

std::string to_string(DType v) {
  return name_of(detail::dtype_table(), v);
}
std::string to_string(DataFormat v) {
  return name_of(detail::format_table(), v);
}
std::string to_string(OptimizerName v) {
  return name_of(detail::optimizer_table(), v);
}
std::string to_string(SchedulerName v) {
  return name_of(detail::scheduler_table(), v);
}
std::string to_string(MixedPrecision v) {
  return name_of(detail::mixed_precision_table(), v);
}
std::string to_string(Quantize v) {
  return name_of(detail::quantize_table(), v);
}
std::string to_string(GgufType v) {
  return name_of(detail::gguf_type_table(), v);
}
std::string to_string(LoraInit v) {
  return name_of(detail::lora_init_table(), v);
}

const std::vector<std::string>& chat_template_names() {
  static const std::vector<std::string> names = {"llama2",  "llama3", "chatml",
                                                 "mistral", "gemma",  "phi3"};
  return names;
}

bool operator==(const TrainConfig& a, const TrainConfig& b) {
  const auto& la = a.lora;
  const auto& lb = b.lora;
  const auto& da = a.data;
  const auto& db = b.data;
  const auto& ta = a.train;
  const auto& tb = b.train;
  const auto& oa = ta.optimizer;
  const auto& ob = tb.optimizer;
  return a.model.path == b.model.path && a.model.dtype == b.model.dtype &&
         a.model.quantize == b.model.quantize && a.model.double_quant == b.model.double_quant &&
         a.device == b.device && a.seed == b.seed &&
         // lora
         la.r == lb.r && la.alpha == lb.alpha && la.dropout == lb.dropout &&
         la.target_modules == lb.target_modules && la.use_rslora == lb.use_rslora &&
         la.init_from == lb.init_from && la.use_dora == lb.use_dora && la.init == lb.init &&
         // data
         da.train == db.train && da.validation == db.validation &&
         da.val_fraction == db.val_fraction && da.format == db.format &&
         da.chat_template == db.chat_template && da.max_seq_len == db.max_seq_len &&
         da.packing == db.packing && da.shuffle == db.shuffle &&
         da.train_on_prompt == db.train_on_prompt &&
         da.allow_special_tokens == db.allow_special_tokens &&
         da.skip_malformed == db.skip_malformed && da.cache_dir == db.cache_dir &&
         // train
         ta.epochs == tb.epochs && ta.max_steps == tb.max_steps &&
         ta.micro_batch_size == tb.micro_batch_size &&
         ta.gradient_accumulation_steps == tb.gradient_accumulation_steps &&
         ta.global_batch == tb.global_batch && ta.dist_timeout_s == tb.dist_timeout_s &&
         ta.shard_base == tb.shard_base && ta.grad_bucket_mb == tb.grad_bucket_mb &&
         oa.name == ob.name && oa.lr == ob.lr && oa.beta1 == ob.beta1 && oa.beta2 == ob.beta2 &&
         oa.eps == ob.eps && oa.weight_decay == ob.weight_decay &&
         oa.loraplus_lr_ratio == ob.loraplus_lr_ratio && ta.scheduler.name == tb.scheduler.name &&
         ta.scheduler.warmup_steps == tb.scheduler.warmup_steps &&
         ta.scheduler.warmup_ratio == tb.scheduler.warmup_ratio &&
         ta.max_grad_norm == tb.max_grad_norm && ta.mixed_precision == tb.mixed_precision &&
         ta.gradient_checkpointing == tb.gradient_checkpointing && ta.eval_every == tb.eval_every &&
         ta.save_every == tb.save_every && ta.keep_checkpoints == tb.keep_checkpoints &&
         ta.log_every == tb.log_every && ta.max_bad_steps == tb.max_bad_steps &&
         // output
         a.output.dir == b.output.dir && a.output.merge == b.output.merge &&
         a.output.merge_dtype == b.output.merge_dtype && a.output.overwrite == b.output.overwrite &&
         a.output.gguf.type == b.output.gguf.type && a.output.gguf.adapter == b.output.gguf.adapter;
}

}  // namespace loratune::config
