// trainer/gguf/resolve.cpp — a .gguf file wherever loratune reads a model
// directory: imported once (float32) into a cache directory keyed by the
// file's real path, size and modification time, and reused from then on.
#include <sys/stat.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "trainer/gguf/gguf.h"
#include "trainer/io/sha256.h"

namespace fs = std::filesystem;

namespace loratune::gguf {

bool is_gguf_path(const std::string& path) {
  static const std::string kExt = ".gguf";
  if (path.size() <= kExt.size()) return false;
  for (size_t k = 0; k < kExt.size(); ++k) {
    const char c = path[path.size() - kExt.size() + k];
    if (std::tolower(static_cast<unsigned char>(c)) != kExt[k]) return false;
  }
  return true;
}

std::string gguf_cache_root() {
  if (const char* env = std::getenv("LORATUNE_CACHE"); env != nullptr && *env != '\0') {
    return (fs::path(env) / "gguf").string();
  }
  const char* home = std::getenv("HOME");
  if (home == nullptr || *home == '\0') {
    throw Error("cannot place the import of a .gguf model: neither LORATUNE_CACHE nor HOME is set",
                ErrorKind::kConfig);
  }
  return (fs::path(home) / ".cache" / "loratune" / "gguf").string();
}

std::string gguf_cache_dir(const std::string& gguf_path) {
  struct stat st;
  if (::stat(gguf_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw Error("model path '" + gguf_path + "': no such .gguf file", ErrorKind::kIo);
  }
  std::error_code ec;
  const fs::path real = fs::canonical(gguf_path, ec);
  if (ec) {
    throw Error("model path '" + gguf_path + "': cannot resolve it (" + ec.message() + ")",
                ErrorKind::kIo);
  }
  const std::string key = real.string() + "\n" + std::to_string(st.st_size) + "\n" +
                          std::to_string(st.st_mtim.tv_sec) + "." +
                          std::to_string(st.st_mtim.tv_nsec);
  const std::string hash = io::sha256_hex(key).substr(0, 16);
  return (fs::path(gguf_cache_root()) / (real.stem().string() + "-" + hash)).string();
}

std::string resolve_model_path(const std::string& path) {
  if (!is_gguf_path(path)) return path;
  const std::string dir = gguf_cache_dir(path);
  std::error_code ec;
  if (fs::is_regular_file(fs::path(dir) / "config.json", ec)) {
    std::fprintf(stderr, "loratune: %s: using its float32 import in %s\n", path.c_str(),
                 dir.c_str());
    return dir;
  }
  std::fprintf(stderr, "loratune: %s: importing it (float32) into %s\n", path.c_str(), dir.c_str());
  std::fflush(stderr);
  fs::create_directories(fs::path(dir).parent_path(), ec);
  if (ec) {
    throw Error("cannot create the GGUF import cache '" + fs::path(dir).parent_path().string() +
                    "': " + ec.message(),
                ErrorKind::kIo);
  }
  ImportOptions opt;
  opt.gguf_path = path;
  opt.out_dir = dir;
  opt.dtype = at::kFloat;
  try {
    import_gguf(opt);
  } catch (const Error&) {
    // Another process that imported the same file first committed the same
    // directory (the import is written under a temp name and renamed).
    if (fs::is_regular_file(fs::path(dir) / "config.json", ec)) return dir;
    throw;
  }
  return dir;
}

}  // namespace loratune::gguf
