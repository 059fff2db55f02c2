// Helpers every test binary shares: where the fixtures live, how to run the
// reference Python and the loratune executable, and scratch directories.
#pragma once

#include <string>
#include <vector>

namespace loratune::test {

// Paths handed to tests by ctest (tests/CMakeLists.txt). Each throws if unset.
std::string python();        // interpreter with torch/transformers/peft
std::string source_dir();    // repository root
std::string testdata_dir();  // build/testdata: generated fixtures
std::string loratune_bin();  // the built `loratune` executable

// Result of a child process: exit status and everything it printed.
struct RunResult {
  int status = -1;  // exit code, or 128+signal
  std::string out;  // stdout and stderr interleaved
};

// The tiny test variants of tests/variants.json (the manifest the fixture
// scripts read too), sorted; with `tag`, only those carrying it ("decode",
// "packing", "train").
std::vector<std::string> variants(const std::string& tag = "");

// Runs `cmd` through /bin/sh -c and captures its output.
RunResult run(const std::string& cmd);

// Runs a reference Python script from the repository (path relative to the
// root, e.g. "tests/python/ref_logits.py") with `args`; fails the test with
// the script's output if it exits non-zero.
std::string run_python(const std::string& script, const std::string& args);

// A fresh empty directory under the system temp dir, removed at exit of the
// process unless LORATUNE_KEEP_TMP is set.
std::string make_temp_dir(const std::string& tag);

// Shell-quotes one argument.
std::string quote(const std::string& s);

// Reads a whole file; throws if it cannot.
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& content);

}  // namespace loratune::test
