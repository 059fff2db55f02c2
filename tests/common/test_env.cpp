#include "common/test_env.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace fs = std::filesystem;

namespace loratune::test {
namespace {

std::string env_or_throw(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    throw std::runtime_error(std::string("environment variable ") + name +
                             " is not set: run this test through ctest");
  }
  return v;
}

std::mutex g_tmp_mu;
std::vector<std::string>* g_tmp_dirs = nullptr;

void remove_temp_dirs() {
  if (g_tmp_dirs == nullptr || std::getenv("LORATUNE_KEEP_TMP") != nullptr) return;
  for (const auto& d : *g_tmp_dirs) {
    std::error_code ec;
    fs::remove_all(d, ec);
  }
}

}  // namespace

std::string python() {
  return env_or_throw("LORATUNE_PYTHON");
}
std::string source_dir() {
  return env_or_throw("LORATUNE_SOURCE_DIR");
}
std::string testdata_dir() {
  return env_or_throw("LORATUNE_TESTDATA");
}
std::string loratune_bin() {
  return env_or_throw("LORATUNE_BIN");
}

std::vector<std::string> variants(const std::string& tag) {
  const std::string path = source_dir() + "/tests/variants.json";
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read " + path);
  const nlohmann::json manifest = nlohmann::json::parse(f);
  std::vector<std::string> names;
  for (const auto& [name, v] : manifest.at("variants").items()) {
    if (tag.empty()) {
      names.push_back(name);
      continue;
    }
    for (const auto& t : v.value("tags", nlohmann::json::array())) {
      if (t == tag) names.push_back(name);
    }
  }
  return names;  // nlohmann's object keys are sorted
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  return q + "'";
}

RunResult run(const std::string& cmd) {
  RunResult r;
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (p == nullptr) throw std::runtime_error("popen failed for: " + cmd);
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = pclose(p);
  if (WIFEXITED(st)) {
    r.status = WEXITSTATUS(st);
  } else if (WIFSIGNALED(st)) {
    r.status = 128 + WTERMSIG(st);
  }
  return r;
}

std::string run_python(const std::string& script, const std::string& args) {
  std::string cmd = quote(python()) + " " + quote(source_dir() + "/" + script) + " " + args;
  RunResult r = run(cmd);
  if (r.status != 0) {
    ADD_FAILURE() << "reference script failed (" << r.status << "): " << cmd << "\n" << r.out;
    throw std::runtime_error("reference script failed: " + script);
  }
  return r.out;
}

std::string make_temp_dir(const std::string& tag) {
  std::string templ = (fs::temp_directory_path() / ("loratune-" + tag + "-XXXXXX")).string();
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp failed: " + templ);
  std::lock_guard<std::mutex> lock(g_tmp_mu);
  if (g_tmp_dirs == nullptr) {
    g_tmp_dirs = new std::vector<std::string>();
    std::atexit(remove_temp_dirs);
  }
  g_tmp_dirs->emplace_back(buf.data());
  return buf.data();
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw std::runtime_error("cannot write " + path);
  f << content;
}

}  // namespace loratune::test
