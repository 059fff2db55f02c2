// trainer/cli/paths.cpp — refuse_output_over_inputs.
#include "trainer/cli/paths.h"

#include <filesystem>
#include <system_error>

#include "trainer/io/error.h"

namespace fs = std::filesystem;

namespace loratune::cli {
namespace {

// The absolute path with symlinks of its existing part resolved.
fs::path resolved(const std::string& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(p), ec);
  return ec ? fs::absolute(p).lexically_normal() : r;
}

// True when `inner` is `outer` or lies below it, component by component.
bool within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin();
  for (auto o = outer.begin(); o != outer.end(); ++o, ++i) {
    if (o->empty()) continue;  // a trailing separator
    if (i == inner.end() || *i != *o) return false;
  }
  return true;
}

}  // namespace

void refuse_output_over_inputs(const std::string& out_name, const std::string& out,
                               const std::vector<NamedPath>& inputs) {
  if (out.empty()) return;
  const fs::path o = resolved(out);
  for (const auto& [name, path] : inputs) {
    if (path.empty()) continue;
    const fs::path in = resolved(path);
    std::string how;
    if (o == in) {
      how = "is";
    } else if (within(o, in)) {
      how = "lies inside";
    } else if (within(in, o)) {
      how = "contains";
    } else {
      continue;
    }
    throw Error(out_name + " '" + out + "' " + how + " the " + name + " '" + path +
                "'; a command never writes over its inputs: choose an output outside them");
  }
}

}  // namespace loratune::cli
