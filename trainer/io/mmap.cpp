// trainer/io/mmap.cpp — MappedFile over POSIX mmap.
#include "trainer/io/mmap.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "trainer/io/error.h"

namespace loratune::io {
namespace {

// Closes a descriptor on every path out of open(); the mapping outlives it.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

Error sys_error(const std::string& path, const char* what) {
  return Error(path + ": " + what + ": " + std::strerror(errno), ErrorKind::kIo);
}

// The live mappings by start address, for release_mapped().
std::mutex g_live_mutex;
std::map<uintptr_t, const MappedFile*>& live_mappings() {
  static auto* live = new std::map<uintptr_t, const MappedFile*>();  // never destroyed
  return *live;
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  FdCloser fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) throw sys_error(path, "cannot open");
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) throw sys_error(path, "cannot stat");
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file", ErrorKind::kIo);

  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<size_t>(st.st_size);
  if (m->size_ == 0) return m;
  // MAP_NORESERVE: a writable private mapping is otherwise charged in full
  // against the commit limit, and a checkpoint larger than RAM would fail to
  // map although only the pages a caller writes to are ever copied.
  void* p =
      ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd.fd, 0);
  if (p == MAP_FAILED) throw sys_error(path, "cannot mmap");
  m->data_ = static_cast<uint8_t*>(p);
  std::lock_guard<std::mutex> lock(g_live_mutex);
  live_mappings()[reinterpret_cast<uintptr_t>(m->data_)] = m.get();
  return m;
}

MappedFile::~MappedFile() {
  if (data_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    live_mappings().erase(reinterpret_cast<uintptr_t>(data_));
  }
  ::munmap(data_, size_);
}

bool release_mapped(const void* data, size_t length) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(data);
  std::lock_guard<std::mutex> lock(g_live_mutex);
  auto it = live_mappings().upper_bound(p);  // the first mapping after p
  if (it == live_mappings().begin()) return false;
  --it;
  const MappedFile& m = *it->second;
  if (p >= it->first + m.size()) return false;
  m.release(p - it->first, length);
  return true;
}

void MappedFile::release(size_t offset, size_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  if (length > size_ - offset) length = size_ - offset;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data_) + offset;
  const uintptr_t end = begin + length;
  const uintptr_t first = (begin + page - 1) / page * page;
  const uintptr_t last = end / page * page;
  // The mapping starts page-aligned, so the last partial page of the file
  // ends the mapping too: release it when the range reaches the file's end.
  const uintptr_t map_end = reinterpret_cast<uintptr_t>(data_) + size_;
  const uintptr_t stop = end == map_end ? (map_end + page - 1) / page * page : last;
  if (stop <= first) return;
  // Advice only: a failure leaves memory resident but everything correct.
  ::madvise(reinterpret_cast<void*>(first), stop - first, MADV_DONTNEED);
}

}  // namespace loratune::io
