// trainer/io/mmap.h — a read-only file mapped into memory, copy-on-write.
//
// The mapping is MAP_PRIVATE|MAP_NORESERVE with PROT_READ|PROT_WRITE: tensors handed out
// as views (at::from_blob) may be written by callers, and such writes copy
// the touched pages privately; they never reach the file. A zero-length file
// is not mapped at all (mmap rejects length 0): data() is nullptr, size() 0.
//
// Lifetime: hold it through std::shared_ptr; every tensor viewing it keeps a
// copy of that pointer in its deleter, so the mapping lives until the last
// view is gone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace loratune::io {

class MappedFile {
 public:
  // open + fstat + mmap. Throws io::Error("<path>: <strerror>") on failure,
  // and for anything that is not a regular file.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // madvise(MADV_DONTNEED) on the whole pages inside [offset, offset+length):
  // the kernel drops them from this process; a later read faults them in again
  // from the file. Pages written through a view revert to the file's bytes,
  // so release only what has been copied elsewhere. Partial pages at either
  // end are left alone (they may belong to a neighbouring tensor).
  void release(size_t offset, size_t length) const;

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// MappedFile::release for memory given by address: when [data, data+length)
// starts inside a live MappedFile, its whole pages are dropped (see release)
// and true is returned; any other memory is left alone (false). For a caller
// that holds a tensor but not its file, e.g. a weight that was loaded as a
// view of the mapping and has been copied elsewhere.
bool release_mapped(const void* data, size_t length);

}  // namespace loratune::io
