// trainer/cli/paths.h — commands never write over their own inputs.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace loratune::cli {

// One input of a command: what it is ("--model", "data.train[0]") and its path.
using NamedPath = std::pair<std::string, std::string>;

// Throws Error (kConfig) when `out` (named `out_name`, e.g. "--out") is the
// same file or directory as an input, lies inside one (logits --out
// MODEL/model.safetensors), or contains one (merge --out of a parent of the
// model); --overwrite does not change this. Paths are compared after
// resolving symbolic links and "..", also for outputs that do not exist yet.
// Empty paths are skipped.
void refuse_output_over_inputs(const std::string& out_name, const std::string& out,
                               const std::vector<NamedPath>& inputs);

}  // namespace loratune::cli
