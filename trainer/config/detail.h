// trainer/config/detail.h — internals shared by the trainer/config .cpp files.
// Not a public API: everything outside trainer/config includes config.h only.
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "trainer/config/config.h"

namespace loratune::config::detail {

// Where each key's value came from, by key path: "configs/x.yaml:12" or
// "override 'lora.r=0'". Keys left at their defaults are absent.
using Origins = std::map<std::string, std::string>;

// The context of one value being read: its origin and its key path.
struct ValueCtx {
  std::string where;  // "configs/x.yaml:12" or "override 'lora.r=0'"
  std::string path;   // "lora.r"
};

// One leaf key of the schema. read() parses a YAML node into the config and
// throws loratune::Error "<where>: <path>: expected ..., got ..." on a wrong
// type or unknown choice; write() emits the value for to_yaml().
struct Field {
  std::string path;  // "train.optimizer.lr"
  std::function<void(TrainConfig&, const YAML::Node&, const ValueCtx&)> read;
  std::function<void(const TrainConfig&, YAML::Emitter&)> write;
};

// How a node reads in an error message: 'fast', a list, a map, null.
std::string describe(const YAML::Node& n);

// Every leaf key in schema order, grouped by section (to_yaml's order).
const std::vector<Field>& fields();

// A choice key's spellings. `aliases` maps names other tools use ("bf16" for
// a dtype) to ours; they are never accepted, only suggested.
template <typename E>
struct ChoiceTable {
  std::vector<std::pair<std::string, E>> values;
  std::vector<std::pair<std::string, std::string>> aliases;

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& v : values) out.push_back(v.first);
    return out;
  }
};
const ChoiceTable<DType>& dtype_table();
const ChoiceTable<DataFormat>& format_table();
const ChoiceTable<OptimizerName>& optimizer_table();
const ChoiceTable<SchedulerName>& scheduler_table();
const ChoiceTable<MixedPrecision>& mixed_precision_table();
const ChoiceTable<Quantize>& quantize_table();
const ChoiceTable<GgufType>& gguf_type_table();
const ChoiceTable<LoraInit>& lora_init_table();

// " (did you mean 'x'?)" for the alias or closest name of `value`, else "".
std::string did_you_mean(const std::string& value, const std::vector<std::string>& names,
                         const std::vector<std::pair<std::string, std::string>>& aliases = {});
// "'bf16' is not one of float32, bfloat16, float16 (did you mean 'bfloat16'?)"
std::string not_one_of(const std::string& value, const std::vector<std::string>& names,
                       const std::vector<std::pair<std::string, std::string>>& aliases = {});

// The shortest decimal that reads back as exactly `v`, always with a '.' or
// an exponent so YAML 1.1 readers (PyYAML) also see a float: 2e-4 -> "0.0002",
// 1e-8 -> "1.0e-08", 16 -> "16.0".
std::string format_double(double v);

// auto | cpu | cuda | cuda:N
bool is_valid_device(const std::string& device);

// validate() with the origins of the values: errors start with the origin
// of the offending key, or with `source` (the file, when non-empty) for a
// required key that was never set.
void validate_with_origins(TrainConfig& cfg, const Origins& origins, const std::string& source);

}  // namespace loratune::config::detail
