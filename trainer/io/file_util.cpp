// trainer/io/file_util.cpp — atomic files and directories, JSON files.
#include "trainer/io/file_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <string_view>
#include <vector>

#include "trainer/io/error.h"

namespace fs = std::filesystem;

namespace loratune::io {
namespace {

std::atomic<unsigned> g_temp_counter{0};

// "<path>.tmp.<pid>.<n>": unique per process and call, in the same directory
// as `path` so the final rename never crosses a file system.
// What is at `path` when it is neither absent nor of the kind an atomic
// write may replace ("" when it may be replaced). rename() would put a file
// over a device node, FIFO or socket as readily as over a file; as root,
// `--out /dev/null` would then replace the system's /dev/null.
std::string unreplaceable(const std::string& path, bool want_dir) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return "";  // absent (or unreadable: rename reports it)
  if (S_ISLNK(st.st_mode)) {
    if (::stat(path.c_str(), &st) != 0) return want_dir ? "a dangling symbolic link" : "";
  }
  if (want_dir)
    return S_ISDIR(st.st_mode) ? "" : (S_ISREG(st.st_mode) ? "a file" : "a special file");
  if (S_ISREG(st.st_mode)) return "";
  if (S_ISDIR(st.st_mode)) return "a directory";
  if (S_ISFIFO(st.st_mode)) return "a FIFO";
  if (S_ISSOCK(st.st_mode)) return "a socket";
  return "a device";
}

std::string temp_name(const std::string& path) {
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(g_temp_counter++);
}

Error sys_error(const std::string& path, const std::string& what) {
  return Error(path + ": " + what + ": " + std::strerror(errno), ErrorKind::kIo);
}

std::string parent_dir(const std::string& path) {
  fs::path p = fs::path(path).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

// fsync on a directory makes a rename inside it durable.
void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw sys_error(path, "cannot open for fsync");
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  errno = saved;
  if (rc != 0) throw sys_error(path, "fsync failed");
}

// Checks made while nlohmann parses: a duplicate key in any object (it
// keeps the last one silently, which would hide a broken or tampered file)
// and nesting past kMaxJsonDepth (refused before the deep value exists).
template <typename J>
class ParseChecks {
 public:
  ParseChecks(const std::string& where, ErrorKind kind) : where_(where), kind_(kind) {}
  bool operator()(int depth, typename J::parse_event_t event, J& parsed) {
    using E = typename J::parse_event_t;
    if ((event == E::object_start || event == E::array_start) && depth >= kMaxJsonDepth) {
      throw Error(where_ + "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels",
                  kind_);
    }
    if (event == E::object_start) {
      keys_.emplace_back();
    } else if (event == E::object_end) {
      if (!keys_.empty()) keys_.pop_back();
    } else if (event == E::key && !keys_.empty()) {
      const auto& k = parsed.template get_ref<const std::string&>();
      if (!keys_.back().insert(k).second) {
        throw Error(where_ + "duplicate key \"" + printable(k) + "\" in a JSON object", kind_);
      }
    }
    return true;
  }

 private:
  const std::string& where_;
  ErrorKind kind_;
  std::vector<std::set<std::string>> keys_;
};

// nlohmann's message is "[json.exception.parse_error.101] parse error at line
// L, column C: <what>"; keep <what> and report the position ourselves.
std::string parse_error_detail(const std::string& what) {
  size_t col = what.find(", column ");
  size_t colon = what.find(": ", col == std::string::npos ? 0 : col);
  return colon == std::string::npos ? what : what.substr(colon + 2);
}

// Removes "<target>.tmp.<pid>.<n>" directories (and "<target>.old.tmp...")
// left by a process that died before commit (kill -9, power loss): their pid
// no longer runs. Directories of live processes are left alone.
void remove_stale_temp_dirs(const std::string& target) {
  fs::path t(target);
  fs::path dir = t.parent_path().empty() ? fs::path(".") : t.parent_path();
  const std::string base = t.filename().string();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    for (const std::string& prefix : {base + ".tmp.", base + ".old.tmp."}) {
      if (name.rfind(prefix, 0) != 0) continue;
      const std::string rest = name.substr(prefix.size());  // "<pid>.<n>"
      size_t dot = rest.find('.');
      if (dot == std::string::npos || dot == 0) continue;
      pid_t pid = 0;
      try {
        pid = static_cast<pid_t>(std::stol(rest.substr(0, dot)));
      } catch (const std::exception&) {
        continue;
      }
      if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH && e.is_directory(ec)) {
        fs::remove_all(e.path(), ec);
      }
    }
  }
}

}  // namespace

void refuse_unreplaceable(const std::string& path, bool want_dir) {
  const std::string what = unreplaceable(path, want_dir);
  if (!what.empty()) {
    throw Error(path + ": is " + what + ", not " + (want_dir ? "a directory" : "a regular file") +
                    "; refusing to replace it (choose another output path)",
                ErrorKind::kIo);
  }
}

namespace {

// "SOURCE:LINE:COLUMN: invalid JSON: WHAT" for the byte at `offset`
// (0-based), or "invalid JSON at column C: WHAT" for a source-less one-line
// text (a JSONL record, whose caller names file and line).
std::string invalid_at(std::string_view text, size_t offset, const std::string& source,
                       const std::string& what) {
  offset = std::min(offset, text.size());
  size_t line = 1, column = 1;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  if (source.empty()) return "invalid JSON at column " + std::to_string(column) + ": " + what;
  return source + ":" + std::to_string(line) + ":" + std::to_string(column) +
         ": invalid JSON: " + what;
}

template <typename J>
J parse_checked(std::string_view text, const std::string& source, ErrorKind kind) {
  // nlohmann takes a NUL byte for the end of the input and ignores the rest.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
    throw Error(invalid_at(text, nul, source, "a NUL byte"), kind);
  const std::string where = source.empty() ? std::string() : source + ": ";
  ParseChecks<J> checks(where, kind);
  try {
    return J::parse(text.begin(), text.end(), std::ref(checks));
  } catch (const typename J::parse_error& e) {
    // e.byte is the 1-based offset of the offending byte.
    throw Error(invalid_at(text, e.byte == 0 ? 0 : e.byte - 1, source,
                           printable(parse_error_detail(e.what()))),
                kind);
  } catch (const typename J::out_of_range& e) {  // a number beyond double: 1e400
    // "[json.exception.out_of_range.406] number overflow parsing '1e400'"
    std::string what = e.what();
    const size_t close = what.find("] ");
    if (close != std::string::npos) what = what.substr(close + 2);
    throw Error(where + "invalid JSON: " + printable(what), kind);
  }
}

}  // namespace

nlohmann::json parse_json(std::string_view text, const std::string& source, ErrorKind kind) {
  return parse_checked<nlohmann::json>(text, source, kind);
}

nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& source,
                                          ErrorKind kind) {
  return parse_checked<nlohmann::ordered_json>(text, source, kind);
}

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw sys_error(path, "cannot open");
  std::string out;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int saved = errno;
      ::close(fd);
      errno = saved;
      throw sys_error(path, "read failed");
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

nlohmann::json read_json(const std::string& path, ErrorKind kind) {
  return parse_json(read_file(path), path, kind);
}

void write_json_atomic(const std::string& path, const nlohmann::json& j) {
  write_file_atomic(path, j.dump(2) + "\n");
}

void fsync_dir(const std::string& dir) {
  fsync_path(dir, true);
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

// --- AtomicFile ---------------------------------------------------------------

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(temp_name(path_)) {
  refuse_unreplaceable(path_, /*want_dir=*/false);
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw sys_error(path_, "cannot create temp file " + tmp_);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0) throw Error(path_ + ": write after commit", ErrorKind::kInternal);
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw sys_error(path_, "write failed");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw Error(path_ + ": commit called twice", ErrorKind::kInternal);
  if (::fsync(fd_) != 0) throw sys_error(path_, "fsync failed");
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) throw sys_error(path_, "close failed");
  refuse_unreplaceable(path_, /*want_dir=*/false);  // again: it may have appeared meanwhile
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) throw sys_error(path_, "rename failed");
  committed_ = true;
  fsync_path(parent_dir(path_), true);
}

// --- AtomicDir ------------------------------------------------------------------

AtomicDir::AtomicDir(std::string target, bool overwrite)
    : target_(std::move(target)), overwrite_(overwrite) {
  while (!target_.empty() && target_.size() > 1 && target_.back() == '/') target_.pop_back();
  refuse_unreplaceable(target_, /*want_dir=*/true);
  remove_stale_temp_dirs(target_);
  tmp_ = temp_name(target_);
  if (::mkdir(tmp_.c_str(), 0755) != 0) {
    throw sys_error(target_, "cannot create temp directory " + tmp_);
  }
}

AtomicDir::~AtomicDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);
}

void AtomicDir::commit() {
  if (committed_) throw Error(target_ + ": commit called twice", ErrorKind::kInternal);
  // Make the contents durable before the rename publishes them.
  for (const auto& e : fs::recursive_directory_iterator(tmp_)) {
    fsync_path(e.path().string(), e.is_directory());
  }
  fsync_path(tmp_, true);

  std::error_code ec;
  const bool exists = fs::exists(fs::symlink_status(target_, ec));
  std::string old;
  if (exists) {
    if (!overwrite_) throw Error(target_ + ": already exists (refusing to overwrite)");
    refuse_unreplaceable(target_, /*want_dir=*/true);
    old = temp_name(target_ + ".old");
    if (::rename(target_.c_str(), old.c_str()) != 0) {
      throw sys_error(target_, "cannot move the existing target aside");
    }
  }
  if (::rename(tmp_.c_str(), target_.c_str()) != 0) {
    int saved = errno;
    if (!old.empty()) ::rename(old.c_str(), target_.c_str());  // put the old one back
    errno = saved;
    throw sys_error(target_, "rename failed");
  }
  committed_ = true;
  fsync_path(parent_dir(target_), true);
  if (!old.empty()) fs::remove_all(old, ec);  // best effort: the new target is in place
}

}  // namespace loratune::io
