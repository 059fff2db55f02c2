// trainer/io/lock.cpp — DirLock: flock(LOCK_EX | LOCK_NB) on a pid file.
//
// Unlinking a lock file that others may have opened is racy unless every
// taker checks, after flock succeeds, that the path still names the inode it
// locked; a taker that lost that race retries on the new file.
#include "trainer/io/lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "trainer/io/error.h"

namespace loratune::io {
namespace {

std::string read_pid(int fd) {
  char buf[32] = {};
  const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  std::string s = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s.find_first_not_of("0123456789") == std::string::npos ? s : std::string();
}

}  // namespace

DirLock::DirLock(std::string lock_path, const std::string& what) : path_(std::move(lock_path)) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      throw Error(path_ + ": cannot create the lock file for " + what + ": " + std::strerror(errno),
                  ErrorKind::kIo);
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string pid = read_pid(fd);
      ::close(fd);
      if (err == EWOULDBLOCK) {
        throw Error(what + " is in use by another loratune process" +
                        (pid.empty() ? std::string() : " (pid " + pid + ")") + "; lock " + path_,
                    ErrorKind::kIo);
      }
      throw Error(path_ + ": cannot lock: " + std::strerror(err), ErrorKind::kIo);
    }
    struct stat by_fd {
    }, by_path{};
    if (::fstat(fd, &by_fd) == 0 && ::stat(path_.c_str(), &by_path) == 0 &&
        by_fd.st_ino == by_path.st_ino && by_fd.st_dev == by_path.st_dev) {
      const std::string pid = std::to_string(::getpid()) + "\n";
      if (::ftruncate(fd, 0) != 0 ||
          ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
        const int err = errno;
        ::close(fd);
        throw Error(path_ + ": cannot write the lock file: " + std::strerror(err), ErrorKind::kIo);
      }
      fd_ = fd;
      return;
    }
    ::close(fd);  // the holder removed the file after we opened it: take the new one
  }
  throw Error(path_ + ": could not take the lock for " + what + " (the file keeps changing)",
              ErrorKind::kIo);
}

DirLock::~DirLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still held: a waiter re-checks the inode
  ::close(fd_);
}

}  // namespace loratune::io
