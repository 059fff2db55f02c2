// trainer/io/file_util.h — atomic files, atomic directories, JSON files.
#pragma once

#include <nlohmann/json.hpp>

#include <string_view>

#include <string>

#include "trainer/io/error.h"

namespace loratune::io {

// Writes `bytes` to `path` atomically: a temp file in the same directory,
// write, fsync, rename over `path`, fsync the directory. On any failure the
// temp file is removed and `path` is untouched; throws io::Error naming path.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Throws io::Error (kIo) naming `path` when something exists there that an
// atomic write must not replace: for a file (`want_dir` false) anything but a
// regular file or a link to one (a device node, FIFO, socket, directory); for
// a directory anything but a directory or a link to one. AtomicFile and
// AtomicDir check it themselves; commands call it first to fail before work.
void refuse_unreplaceable(const std::string& path, bool want_dir);

// Streams data into `<path>.tmp.<pid>.<n>`; commit() fsyncs and renames it
// over `path`. Destroyed without commit(), it removes the temp file.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  void write(const void* data, size_t n);
  void commit();
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// A directory built under a temp name beside `target` and renamed into place
// by commit(); destroyed without commit(), the temp directory is removed.
// commit() refuses an existing target unless `overwrite` (then the old target
// is moved aside and removed only after the rename succeeded). Construction
// first removes temp directories of the same target left by processes that
// died (kill -9) before their commit.
class AtomicDir {
 public:
  AtomicDir(std::string target, bool overwrite);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  const std::string& path() const { return tmp_; }  // write here
  void commit();

 private:
  std::string target_, tmp_;
  bool overwrite_;
  bool committed_ = false;
};

// Reads and parses a JSON file. Errors name the file and line:column; a file
// that cannot be read is kIo, malformed JSON (or a duplicate key) is `kind`:
// kCorrupt for a model's or adapter's files, kData for a user's data.
nlohmann::json read_json(const std::string& path, ErrorKind kind = ErrorKind::kCorrupt);
// Nesting past which JSON is refused: the recursive code that copies,
// prints or walks a value would overflow the stack long before nlohmann's
// iterative parser stops (HF tokenizers' serde_json stops at 128 levels,
// Python's json near 1000).
constexpr int kMaxJsonDepth = 256;

// Parses JSON text; errors (kind `kind`) start "SOURCE:LINE:COLUMN: ", or
// "column C: " when `source` is empty (a JSONL record whose caller names
// file and line). Beyond nlohmann's own checks it refuses a NUL byte
// (nlohmann stops there and ignores the rest), nesting deeper than
// kMaxJsonDepth and a duplicate key in any object.
nlohmann::json parse_json(std::string_view text, const std::string& source,
                          ErrorKind kind = ErrorKind::kCorrupt);
// The same, keeping objects' key order.
nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& source,
                                          ErrorKind kind = ErrorKind::kCorrupt);
// Reads a whole file into memory; throws io::Error (kIo) naming path.
std::string read_file(const std::string& path);
// fsync on a directory: makes creations, renames and removals in it durable.
void fsync_dir(const std::string& dir);
// Writes JSON (indent 2, trailing newline) atomically.
void write_json_atomic(const std::string& path, const nlohmann::json& j);

}  // namespace loratune::io
