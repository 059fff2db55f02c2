// The config schema: one Field per leaf key, reading YAML into TrainConfig and
// writing it back (to_yaml). Adding a key means adding one line to fields().
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "trainer/config/config.h"
#include "trainer/config/detail.h"
#include "trainer/io/error.h"

namespace loratune::config {
namespace {

using detail::describe;
using detail::Field;
using detail::ValueCtx;

[[noreturn]] void type_error(const ValueCtx& c, const std::string& expected, const YAML::Node& n) {
  throw Error(c.where + ": " + c.path + ": expected " + expected + ", got " + describe(n));
}

bool is_null(const YAML::Node& n) {
  return !n.IsDefined() || n.IsNull();
}

int64_t read_int(const YAML::Node& n, const ValueCtx& c) {
  if (!n.IsScalar()) type_error(c, "an integer", n);
  try {
    return n.as<int64_t>();
  } catch (const YAML::BadConversion&) {
    type_error(c, "an integer", n);
  }
}

double read_double(const YAML::Node& n, const ValueCtx& c) {
  if (!n.IsScalar()) type_error(c, "a number", n);
  try {
    return n.as<double>();
  } catch (const YAML::BadConversion&) {
    type_error(c, "a number", n);
  }
}

bool read_bool(const YAML::Node& n, const ValueCtx& c) {
  if (!n.IsScalar()) type_error(c, "true or false", n);
  try {
    return n.as<bool>();
  } catch (const YAML::BadConversion&) {
    type_error(c, "true or false", n);
  }
}

std::string read_string(const YAML::Node& n, const ValueCtx& c) {
  if (!n.IsScalar()) type_error(c, "a string", n);
  return n.Scalar();
}

// One path, or a list of paths; null reads as none.
std::vector<std::string> read_paths(const YAML::Node& n, const ValueCtx& c) {
  if (is_null(n)) return {};
  if (n.IsScalar()) return {n.Scalar()};
  if (!n.IsSequence()) type_error(c, "a file or a list of files", n);
  std::vector<std::string> out;
  for (const auto& item : n) {
    if (!item.IsScalar()) type_error(c, "a file or a list of files", item);
    out.push_back(item.Scalar());
  }
  return out;
}

std::vector<std::string> read_target_modules(const YAML::Node& n, const ValueCtx& c) {
  const char* expected = "a list of module names (e.g. [q_proj, v_proj]) or 'all-linear'";
  if (n.IsScalar() && n.Scalar() == "all-linear") return {"all-linear"};
  if (!n.IsSequence()) type_error(c, expected, n);
  std::vector<std::string> out;
  for (const auto& item : n) {
    if (!item.IsScalar()) type_error(c, expected, item);
    out.push_back(item.Scalar());
  }
  return out;
}

template <typename E>
E read_choice(const YAML::Node& n, const ValueCtx& c, const detail::ChoiceTable<E>& table) {
  if (!n.IsScalar()) {
    std::string list;
    for (const auto& name : table.names()) list += (list.empty() ? "" : ", ") + name;
    type_error(c, "one of " + list, n);
  }
  for (const auto& [name, value] : table.values) {
    if (name == n.Scalar()) return value;
  }
  throw Error(c.where + ": " + c.path + ": " +
              detail::not_one_of(n.Scalar(), table.names(), table.aliases));
}

// Strings that a YAML reader would take for a bool, number or null (or that
// are empty) are written quoted so they read back as strings everywhere.
bool needs_quotes(const std::string& s) {
  if (s.empty()) return true;
  static const char* kWords[] = {"true", "false", "yes",  "no",   "on",    "off",  "y",
                                 "n",    "null",  "~",    "True", "False", "Yes",  "No",
                                 "On",   "Off",   "Null", "NULL", "TRUE",  "FALSE"};
  for (const char* w : kWords) {
    if (s == w) return true;
  }
  char* end = nullptr;
  std::strtod(s.c_str(), &end);
  return end != s.c_str() && *end == '\0';
}

void write_string(YAML::Emitter& out, const std::string& s) {
  if (needs_quotes(s)) out << YAML::DoubleQuoted;
  out << s;
}

void write_list(YAML::Emitter& out, const std::vector<std::string>& items) {
  out << YAML::Flow << YAML::BeginSeq;
  for (const auto& s : items) write_string(out, s);
  out << YAML::EndSeq;
}

// Field builders. `get` is a generic lambda returning a reference to the
// member, so one accessor serves both read (non-const) and write (const).
template <typename Get>
Field int_field(const char* path, Get get) {
  return {path,
          [get](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            get(c) = read_int(n, ctx);
          },
          [get](const TrainConfig& c, YAML::Emitter& out) { out << get(c); }};
}

template <typename Get>
Field double_field(const char* path, Get get) {
  return {
      path,
      [get](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
        get(c) = read_double(n, ctx);
      },
      [get](const TrainConfig& c, YAML::Emitter& out) { out << detail::format_double(get(c)); }};
}

template <typename Get>
Field bool_field(const char* path, Get get) {
  return {path,
          [get](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            get(c) = read_bool(n, ctx);
          },
          [get](const TrainConfig& c, YAML::Emitter& out) { out << (get(c) ? "true" : "false"); }};
}

// `nullable`: null reads as "" (for keys whose empty value means "none").
template <typename Get>
Field string_field(const char* path, Get get, bool nullable) {
  return {path,
          [get, nullable](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            get(c) = (nullable && is_null(n)) ? std::string() : read_string(n, ctx);
          },
          [get](const TrainConfig& c, YAML::Emitter& out) { write_string(out, get(c)); }};
}

template <typename Get>
Field paths_field(const char* path, Get get) {
  return {path,
          [get](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            get(c) = read_paths(n, ctx);
          },
          [get](const TrainConfig& c, YAML::Emitter& out) { write_list(out, get(c)); }};
}

template <typename Get, typename E>
Field choice_field(const char* path, Get get, const detail::ChoiceTable<E>& (*table)()) {
  return {path,
          [get, table](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            get(c) = read_choice(n, ctx, table());
          },
          [get](const TrainConfig& c, YAML::Emitter& out) { out << to_string(get(c)); }};
}

// std::optional numbers: null unsets, and unset writes as null.
template <typename Get>
Field optional_int_field(const char* path, Get get) {
  return {path,
          [get](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            if (is_null(n)) {
              get(c).reset();
            } else {
              get(c) = read_int(n, ctx);
            }
          },
          [get](const TrainConfig& c, YAML::Emitter& out) {
            if (get(c)) {
              out << *get(c);
            } else {
              out << YAML::Null;
            }
          }};
}

template <typename Get>
Field optional_double_field(const char* path, Get get) {
  return {path,
          [get](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            if (is_null(n)) {
              get(c).reset();
            } else {
              get(c) = read_double(n, ctx);
            }
          },
          [get](const TrainConfig& c, YAML::Emitter& out) {
            if (get(c)) {
              out << detail::format_double(*get(c));
            } else {
              out << YAML::Null;
            }
          }};
}

Field betas_field() {
  return {"train.optimizer.betas",
          [](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            if (!n.IsSequence() || n.size() != 2)
              type_error(ctx, "a list of two numbers [beta1, beta2]", n);
            c.train.optimizer.beta1 = read_double(n[0], ctx);
            c.train.optimizer.beta2 = read_double(n[1], ctx);
          },
          [](const TrainConfig& c, YAML::Emitter& out) {
            out << YAML::Flow << YAML::BeginSeq << detail::format_double(c.train.optimizer.beta1)
                << detail::format_double(c.train.optimizer.beta2) << YAML::EndSeq;
          }};
}

Field target_modules_field() {
  return {"lora.target_modules",
          [](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            c.lora.target_modules = read_target_modules(n, ctx);
          },
          [](const TrainConfig& c, YAML::Emitter& out) {
            if (c.lora.all_linear()) {
              out << "all-linear";
            } else {
              write_list(out, c.lora.target_modules);
            }
          }};
}

// output.merge_dtype: "auto" is nullopt (= the base checkpoint's dtype).
Field merge_dtype_field() {
  return {"output.merge_dtype",
          [](TrainConfig& c, const YAML::Node& n, const ValueCtx& ctx) {
            if (n.IsScalar() && n.Scalar() == "auto") {
              c.output.merge_dtype.reset();
              return;
            }
            if (!n.IsScalar()) type_error(ctx, "auto or a dtype", n);
            auto names = detail::dtype_table().names();
            names.insert(names.begin(), "auto");
            for (const auto& [name, value] : detail::dtype_table().values) {
              if (name == n.Scalar()) {
                c.output.merge_dtype = value;
                return;
              }
            }
            throw Error(ctx.where + ": " + ctx.path + ": " +
                        detail::not_one_of(n.Scalar(), names, detail::dtype_table().aliases));
          },
          [](const TrainConfig& c, YAML::Emitter& out) {
            out << (c.output.merge_dtype ? to_string(*c.output.merge_dtype) : "auto");
          }};
}

}  // namespace

namespace detail {

std::string describe(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "null";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a map";
  return "'" + printable(n.Scalar()) + "'";
}

const std::vector<Field>& fields() {
// The member a key reads into; a generic lambda, so it serves read and write.
#define REF(member)      \
  [](auto& c) -> auto& { \
    return c.member;     \
  }
  // clang-format off
  static const std::vector<Field> kFields = {
      string_field("model.path", REF(model.path), false),
      choice_field("model.dtype", REF(model.dtype), &dtype_table),
      choice_field("model.quantize", REF(model.quantize), &quantize_table),
      bool_field("model.double_quant", REF(model.double_quant)),
      string_field("device", REF(device), false),
      int_field("seed", REF(seed)),
      int_field("lora.r", REF(lora.r)),
      double_field("lora.alpha", REF(lora.alpha)),
      double_field("lora.dropout", REF(lora.dropout)),
      target_modules_field(),
      bool_field("lora.use_rslora", REF(lora.use_rslora)),
      bool_field("lora.use_dora", REF(lora.use_dora)),
      choice_field("lora.init", REF(lora.init), &lora_init_table),
      string_field("lora.init_from", REF(lora.init_from), true),
      paths_field("data.train", REF(data.train)),
      paths_field("data.validation", REF(data.validation)),
      double_field("data.val_fraction", REF(data.val_fraction)),
      choice_field("data.format", REF(data.format), &format_table),
      string_field("data.chat_template", REF(data.chat_template), false),
      int_field("data.max_seq_len", REF(data.max_seq_len)),
      bool_field("data.packing", REF(data.packing)),
      bool_field("data.shuffle", REF(data.shuffle)),
      bool_field("data.train_on_prompt", REF(data.train_on_prompt)),
      bool_field("data.allow_special_tokens", REF(data.allow_special_tokens)),
      bool_field("data.skip_malformed", REF(data.skip_malformed)),
      string_field("data.cache_dir", REF(data.cache_dir), true),
      int_field("train.epochs", REF(train.epochs)),
      int_field("train.max_steps", REF(train.max_steps)),
      int_field("train.micro_batch_size", REF(train.micro_batch_size)),
      int_field("train.gradient_accumulation_steps", REF(train.gradient_accumulation_steps)),
      optional_int_field("train.global_batch", REF(train.global_batch)),
      int_field("train.dist_timeout_s", REF(train.dist_timeout_s)),
      bool_field("train.shard_base", REF(train.shard_base)),
      double_field("train.grad_bucket_mb", REF(train.grad_bucket_mb)),
      choice_field("train.optimizer.name", REF(train.optimizer.name), &optimizer_table),
      double_field("train.optimizer.lr", REF(train.optimizer.lr)),
      betas_field(),
      double_field("train.optimizer.eps", REF(train.optimizer.eps)),
      double_field("train.optimizer.weight_decay", REF(train.optimizer.weight_decay)),
      optional_double_field("train.optimizer.loraplus_lr_ratio", REF(train.optimizer.loraplus_lr_ratio)),
      choice_field("train.scheduler.name", REF(train.scheduler.name), &scheduler_table),
      optional_int_field("train.scheduler.warmup_steps", REF(train.scheduler.warmup_steps)),
      optional_double_field("train.scheduler.warmup_ratio", REF(train.scheduler.warmup_ratio)),
      double_field("train.max_grad_norm", REF(train.max_grad_norm)),
      choice_field("train.mixed_precision", REF(train.mixed_precision), &mixed_precision_table),
      bool_field("train.gradient_checkpointing", REF(train.gradient_checkpointing)),
      int_field("train.eval_every", REF(train.eval_every)),
      int_field("train.save_every", REF(train.save_every)),
      int_field("train.keep_checkpoints", REF(train.keep_checkpoints)),
      int_field("train.log_every", REF(train.log_every)),
      int_field("train.max_bad_steps", REF(train.max_bad_steps)),
      string_field("output.dir", REF(output.dir), false),
      bool_field("output.merge", REF(output.merge)),
      merge_dtype_field(),
      bool_field("output.overwrite", REF(output.overwrite)),
      choice_field("output.gguf.type", REF(output.gguf.type), &gguf_type_table),
      bool_field("output.gguf.adapter", REF(output.gguf.adapter)),
  };
  // clang-format on
#undef REF
  return kFields;
}

}  // namespace detail

std::string to_yaml(const TrainConfig& cfg) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::vector<std::string> open;  // the sections currently open, outermost first
  for (const Field& f : detail::fields()) {
    std::vector<std::string> parts;
    for (size_t start = 0;;) {
      const size_t dot = f.path.find('.', start);
      parts.push_back(f.path.substr(start, dot - start));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    const size_t depth = parts.size() - 1;
    size_t common = 0;
    while (common < open.size() && common < depth && open[common] == parts[common]) ++common;
    while (open.size() > common) {
      out << YAML::EndMap;
      open.pop_back();
    }
    while (open.size() < depth) {
      out << YAML::Key << parts[open.size()] << YAML::Value << YAML::BeginMap;
      open.push_back(parts[open.size()]);
    }
    out << YAML::Key << parts.back() << YAML::Value;
    f.write(cfg, out);
  }
  while (!open.empty()) {
    out << YAML::EndMap;
    open.pop_back();
  }
  out << YAML::EndMap;
  if (!out.good()) throw Error("config: to_yaml: " + out.GetLastError(), ErrorKind::kInternal);

  // A blank line before each top-level section keeps the file readable.
  const std::string body = out.c_str();
  std::string text = "# loratune resolved config: every key with the value this run used.\n";
  for (size_t start = 0; start < body.size();) {
    size_t nl = body.find('\n', start);
    if (nl == std::string::npos) nl = body.size();
    const std::string line = body.substr(start, nl - start);
    const bool section = start != 0 && !line.empty() && line[0] != ' ' && line.back() == ':';
    text += (section ? "\n" : "") + line + "\n";
    start = nl + 1;
  }
  return text;
}

}  // namespace loratune::config
