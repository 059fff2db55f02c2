// trainer/io/lock.h — one writer per output: an exclusive, non-blocking
// flock on a lock file, held for the lifetime of a DirLock.
//
// `loratune train` holds `<output.dir>/.loratune.lock` for the whole run and
// `loratune merge` holds `<out>.lock` beside its output while it writes, so
// a second process aimed at the same output fails at once with one line
// naming the holder's pid instead of interleaving metrics or wiping a live
// run. The kernel drops the lock when the holder dies (kill -9 included), so
// a stale file never blocks anyone. The file holds the pid as text and is
// removed when the lock is released.
#pragma once

#include <string>

namespace loratune::io {

class DirLock {
 public:
  // Takes the lock on `lock_path` (created if absent) for `what` (a phrase
  // for errors, e.g. "output.dir 'runs/x'"). Throws Error (kind kIo) naming
  // the pid of the process holding it, or why the file cannot be created.
  DirLock(std::string lock_path, const std::string& what);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace loratune::io
