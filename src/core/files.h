// File helpers every writer of memo goes through (core/files.cpp), so that
// outputs never destroy anything:
//   * whole-file writes are atomic (temporary file, fsync, rename) for regular
//     files; a symlink is written through (its target is replaced, the link
//     stays), a character device or FIFO (/dev/null, a pipe) is written in
//     place and never replaced by a regular file; a directory, block device
//     or socket is refused;
//   * check_outputs() refuses, before any work, an output that names an input
//     (the data file, a file of the model directory, the config file), two
//     outputs naming one file, and paths that cannot be written;
//   * DirectoryLock keeps two runs from writing one --out directory;
//   * errors are classified by errno: a path the user gave that cannot be used
//     (permission, name too long, not a directory...) is an InputError (exit
//     2); a failure while writing (disk full, I/O error) is an Error (exit 1)
//     and leaves no partial temporary behind.
// Test-only fault injection: MEMO_FAULT_ENOSPC="PATTERN[:N]" makes the N-th
// file (default the first) memo opens for writing whose path contains PATTERN
// fail with ENOSPC after half of its first write (read once per process).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace memo {

// Throws InputError or Error for an errno from operation `what` on `path`:
// "cannot WHAT PATH: strerror". InputError when the path itself is the
// problem (EACCES, EPERM, ENAMETOOLONG, ENOENT, ENOTDIR, EISDIR, EROFS,
// ELOOP, EEXIST, ENXIO, ETXTBSY), Error otherwise (ENOSPC, EDQUOT, EIO...).
[[noreturn]] void throw_file_error(const std::string& what, const std::string& path, int err);

// A file opened for writing with open(2); every write is complete or throws
// (see throw_file_error), the fault-injection hook applies.
class FileWriter {
 public:
  // `flags` are open(2) flags (O_WRONLY is added).
  FileWriter(const std::string& path, int flags, int mode = 0644);
  ~FileWriter();  // closes, ignoring errors: call close() to see them
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;

  void write(const void* data, size_t bytes);
  void sync();   // fsync; throws on failure
  void close();  // throws on failure
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
  bool fault_ = false;  // the injected ENOSPC is due on the next write
};

// Writes `content` to `path` as described above; creates parent directories.
// On failure nothing at `path` has changed and no temporary is left.
void write_file_atomic(const std::string& path, const std::string& content);

// Appends one line to `path` (created if missing). A failure to append is an
// Error (a runtime failure: exit 1), never a silently dropped line.
void append_line(const std::string& path, const std::string& line);

// fsyncs an existing file (Error on failure).
void fsync_file(const std::string& path);

// Reads a whole text file of at most `max_bytes` (a device such as /dev/zero
// or an oversized file is refused without reading it all). InputError
// "WHAT PATH: ..." naming the path when it cannot be read.
std::string read_text_file(const std::string& path, size_t max_bytes, const std::string& what);

// A path with what it is to the user, for messages: {"--json", "out.json"}.
struct NamedPath {
  std::string what;
  std::string path;
};

// Checks, before anything is written, that each output file can be written
// without destroying anything, and throws InputError naming the flag and the
// path otherwise: an existing directory, block device or socket; a path that
// is one of the inputs' files (same device and inode; an input directory
// stands for the files in it, a few levels deep); two outputs that are the
// same file; a parent that is not a directory or cannot be created or written;
// a name longer than the system allows. Empty paths are skipped.
void check_outputs(const std::vector<NamedPath>& outputs, const std::vector<NamedPath>& inputs);

// The same for output directories (--out, --export-dsa): an existing path
// must be a directory (a symlink to one is fine) that is not an input's.
void check_output_dirs(const std::vector<NamedPath>& dirs, const std::vector<NamedPath>& inputs);

// An exclusive lock on DIR/.lock (created with DIR), held while the object
// lives. A second process asking for it gets InputError "WHAT DIR is in use
// by another memo run (pid N)". flock(2) locks die with their process, so a
// crashed run never leaves the directory locked. A directory the lock
// created (with any missing parents) is removed again when the lock goes and
// nothing but the lock file was written into it: a run refused after taking
// the lock leaves no empty --out behind.
class DirectoryLock {
 public:
  DirectoryLock(const std::string& dir, const std::string& what);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
  std::string dir_;
  std::string created_;  // the topmost directory the constructor created; empty if DIR existed
};

}  // namespace memo
