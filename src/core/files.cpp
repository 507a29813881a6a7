// The file helpers of core/files.h: atomic writes that never replace a
// device, FIFO or symlink, output checks against the inputs, the --out lock,
// errno classification and the test-only ENOSPC fault hook.
#include "core/files.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>

#include "core/error.h"

namespace memo {

namespace fs = std::filesystem;

namespace {

// --- fault injection (tests only) -------------------------------------------

struct FaultPlan {
  std::string pattern;  // empty: off
  int nth = 1;
  int seen = 0;
  std::mutex mutex;
};

FaultPlan& fault_plan() {
  static FaultPlan* plan = [] {
    auto* p = new FaultPlan;
    if (const char* v = std::getenv("MEMO_FAULT_ENOSPC"); v && *v) {
      std::string s(v);
      const auto colon = s.rfind(':');
      if (colon != std::string::npos && colon + 1 < s.size()) {
        p->nth = std::max(1, std::atoi(s.c_str() + colon + 1));
        s.resize(colon);
      }
      p->pattern = s;
    }
    return p;
  }();
  return *plan;
}

// Whether the file being opened at `path` is the one to fail.
bool fault_due(const std::string& path) {
  auto& p = fault_plan();
  if (p.pattern.empty() || path.find(p.pattern) == std::string::npos) return false;
  std::lock_guard<std::mutex> lock(p.mutex);
  return ++p.seen == p.nth;
}

// --- small helpers -----------------------------------------------------------

bool is_path_problem(int err) {
  switch (err) {
    case EACCES: case EPERM: case ENAMETOOLONG: case ENOENT: case ENOTDIR: case EISDIR:
    case EROFS: case ELOOP: case EEXIST: case ENXIO: case ETXTBSY:
      return true;
    default:
      return false;
  }
}

// write(2) with SIGPIPE blocked, so a reader that went away (a FIFO, a pipe
// behind /dev/stdout) is an EPIPE error instead of killing the process.
ssize_t write_no_sigpipe(int fd, const char* data, size_t bytes) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  ssize_t n = ::write(fd, data, bytes);
  const int err = errno;
  if (n < 0 && err == EPIPE) {
    const timespec zero{0, 0};
    sigtimedwait(&pipe_set, nullptr, &zero);  // drop the SIGPIPE this write raised
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = err;
  return n;
}

void make_parent(const fs::path& p) {
  if (!p.has_parent_path()) return;
  std::error_code ec;
  fs::create_directories(p.parent_path(), ec);
  if (ec) throw_file_error("create directory", p.parent_path().string(), ec.value());
}

std::string parent_of(const std::string& path) {
  fs::path p(path);
  return p.has_parent_path() ? p.parent_path().string() : std::string(".");
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: the data itself is already synced
  ::fsync(fd);
  ::close(fd);
}

// How an output path is written.
struct OutputTarget {
  enum Kind { kNew, kRegular, kInPlace } kind = kNew;
  std::string path;  // the file to replace (a symlink's target for kRegular)
};

const char* kind_name(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISFIFO(mode)) return "a FIFO";
  return "not a regular file";
}

OutputTarget resolve_output(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {OutputTarget::kNew, path};
    throw_file_error("write", path, errno);
  }
  std::string target = path;
  if (S_ISLNK(st.st_mode)) {
    if (::stat(path.c_str(), &st) != 0) {
      if (errno == ENOENT)
        throw InputError(cat(path, " is a symlink to a missing file; memo writes through symlinks and does not "
                             "replace them (remove the link or give another path)"));
      throw_file_error("write", path, errno);
    }
    char* real = ::realpath(path.c_str(), nullptr);
    if (real == nullptr) throw_file_error("resolve", path, errno);
    target = real;
    std::free(real);
  }
  if (S_ISREG(st.st_mode)) return {OutputTarget::kRegular, target};
  if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) return {OutputTarget::kInPlace, path};
  throw InputError(cat("cannot write ", path, ": it is ", kind_name(st.st_mode),
                       " (memo writes reports to regular files, character devices and FIFOs)"));
}

// A temporary name next to `final_path` that fits NAME_MAX.
std::string temporary_for(const std::string& final_path) {
  static std::atomic<int> counter{0};
  const std::string suffix = cat(".tmp.", ::getpid(), ".", counter++);
  fs::path p(final_path);
  if (p.filename().string().size() + suffix.size() <= NAME_MAX) return final_path + suffix;
  return (p.parent_path() / (".memo" + suffix)).string();
}

}  // namespace

// --- errors --------------------------------------------------------------------

void throw_file_error(const std::string& what, const std::string& path, int err) {
  const std::string msg = cat("cannot ", what, " ", path, ": ", std::strerror(err));
  if (is_path_problem(err)) throw InputError(msg);
  throw Error(msg);
}

// --- FileWriter --------------------------------------------------------------

FileWriter::FileWriter(const std::string& path, int flags, int mode) : path_(path) {
  fd_ = ::open(path.c_str(), flags | O_WRONLY | O_CLOEXEC, mode);
  if (fd_ < 0) throw_file_error("open for writing", path, errno);
  fault_ = fault_due(path);
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::write(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  size_t left = bytes;
  if (fault_) {  // write half, then fail as a full disk would
    fault_ = false;
    left /= 2;
    while (left > 0) {
      ssize_t n = ::write(fd_, p, left);
      if (n <= 0) break;
      p += n;
      left -= static_cast<size_t>(n);
    }
    throw_file_error("write", path_, ENOSPC);
  }
  while (left > 0) {
    ssize_t n = write_no_sigpipe(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_file_error("write", path_, errno);
    if (n == 0) throw_file_error("write", path_, EIO);
    p += n;
    left -= static_cast<size_t>(n);
  }
}

void FileWriter::sync() {
  if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS)  // EINVAL: a FIFO or device
    throw_file_error("sync", path_, errno);
}

void FileWriter::close() {
  const int fd = fd_;
  fd_ = -1;
  if (fd >= 0 && ::close(fd) != 0 && errno != EINTR) throw_file_error("close", path_, errno);
}

// --- whole files and lines -------------------------------------------------------

void write_file_atomic(const std::string& path, const std::string& content) {
  const OutputTarget target = resolve_output(path);
  if (target.kind == OutputTarget::kInPlace) {  // never replaced by a regular file
    FileWriter w(target.path, O_NOCTTY);
    w.write(content.data(), content.size());
    w.close();
    return;
  }
  make_parent(fs::path(target.path));
  const std::string tmp = temporary_for(target.path);
  try {
    FileWriter w(tmp, O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
    w.write(content.data(), content.size());
    w.sync();
    w.close();
    if (::rename(tmp.c_str(), target.path.c_str()) != 0) throw_file_error(cat("rename ", tmp, " to"), target.path, errno);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  fsync_dir(parent_of(target.path));
}

void append_line(const std::string& path, const std::string& line) {
  try {
    make_parent(fs::path(path));
    FileWriter w(path, O_CREAT | O_APPEND | O_NOCTTY);
    const std::string text = line + "\n";
    w.write(text.data(), text.size());
    w.close();
  } catch (const Error& e) {
    // Mid-run, a line that cannot be appended is a runtime failure (exit 1).
    throw Error(e.what());
  }
}

void fsync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(cat("cannot sync ", path, ": ", std::strerror(errno)));
  const bool ok = ::fsync(fd) == 0 || errno == EINVAL;
  const int err = errno;
  ::close(fd);
  if (!ok) throw Error(cat("cannot sync ", path, ": ", std::strerror(err)));
}

std::string read_text_file(const std::string& path, size_t max_bytes, const std::string& what) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(cat(what, " ", path, ": cannot read (", std::strerror(errno), ")"));
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw InputError(cat(what, " ", path, ": is a directory"));
  }
  std::string text;
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw InputError(cat(what, " ", path, ": cannot read (", std::strerror(err), ")"));
    }
    if (n == 0) break;
    if (text.size() + static_cast<size_t>(n) > max_bytes) {
      ::close(fd);
      throw InputError(cat(what, " ", path, ": larger than ", max_bytes, " bytes; refusing to read it"));
    }
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return text;
}

// --- output checks ---------------------------------------------------------------

namespace {

struct FileId {
  dev_t dev;
  ino_t ino;
  bool operator==(const FileId& o) const { return dev == o.dev && ino == o.ino; }
};

struct InputFile {
  FileId id;
  std::string what;  // "--data"
  std::string root;  // the path given for the input
  std::string path;  // the file itself (inside an input directory: that file)
};

std::optional<FileId> id_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileId{st.st_dev, st.st_ino};
}

// The files an input stands for: itself, or for a directory the directory and
// the files below it, three levels deep (an --out directory's
// checkpoints/step-N/*), at most a few thousand.
std::vector<InputFile> input_files(const std::vector<NamedPath>& inputs) {
  std::vector<InputFile> out;
  for (const auto& in : inputs) {
    if (in.path.empty()) continue;
    struct stat st {};
    if (::stat(in.path.c_str(), &st) != 0) continue;  // a missing input is reported by its reader
    out.push_back({{st.st_dev, st.st_ino}, in.what, in.path, in.path});
    if (!S_ISDIR(st.st_mode)) continue;
    std::error_code ec;
    fs::recursive_directory_iterator it(in.path, fs::directory_options::skip_permission_denied, ec), end;
    for (int seen = 0; !ec && it != end && seen < 20000; it.increment(ec), ++seen) {
      if (it.depth() >= 2) it.disable_recursion_pending();
      const std::string p = it->path().string();
      if (auto id = id_of(p)) out.push_back({*id, in.what, in.path, p});
    }
  }
  return out;
}

std::string describe_input(const InputFile& f) {
  if (f.path != f.root) return cat(f.path, ", a file of ", f.what, " ", f.root);
  return cat(f.what, " ", f.path);
}

// The nearest existing ancestor of a path that does not exist must be a
// writable directory.
void check_creatable(const std::string& what, const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  while (true) {
    struct stat st {};
    const std::string d = dir.empty() ? "." : dir.string();
    if (::stat(d.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) throw InputError(cat(what, " ", path, ": ", d, " is not a directory"));
      if (::access(d.c_str(), W_OK | X_OK) != 0)
        throw InputError(cat(what, " ", path, ": cannot write in ", d, ": ", std::strerror(errno)));
      return;
    }
    if (errno != ENOENT) throw InputError(cat(what, " ", path, ": ", std::strerror(errno)));
    if (!dir.has_parent_path() || dir.parent_path() == dir) return;
    dir = dir.parent_path();
  }
}

// lstat-level checks shared by files and directories; returns the id of an
// existing path (followed through a symlink).
std::optional<FileId> check_existing(const std::string& what, const std::string& path, bool want_dir) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) throw InputError(cat(what, " ", path, ": ", std::strerror(errno)));
    check_creatable(what, path);
    return std::nullopt;
  }
  if (S_ISLNK(st.st_mode) && ::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT)
      throw InputError(cat(what, " ", path, ": a symlink to a missing file (memo writes through symlinks, "
                           "it does not replace them)"));
    throw InputError(cat(what, " ", path, ": ", std::strerror(errno)));
  }
  if (want_dir) {
    if (!S_ISDIR(st.st_mode)) throw InputError(cat(what, " ", path, ": exists and is not a directory"));
    if (::access(path.c_str(), W_OK | X_OK) != 0)
      throw InputError(cat(what, " ", path, ": cannot write in it: ", std::strerror(errno)));
  } else {
    if (S_ISDIR(st.st_mode)) throw InputError(cat(what, " ", path, ": is a directory (a file name is expected)"));
    if (!S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode) && !S_ISFIFO(st.st_mode))
      throw InputError(cat(what, " ", path, ": is ", kind_name(st.st_mode),
                           " (memo writes reports to regular files, character devices and FIFOs)"));
    if (S_ISREG(st.st_mode)) check_creatable(what, path);  // replaced by a rename in its directory
  }
  return FileId{st.st_dev, st.st_ino};
}

void check_against(const std::vector<NamedPath>& outputs, const std::vector<NamedPath>& inputs, bool dirs) {
  const auto files = input_files(inputs);
  std::vector<std::pair<FileId, const NamedPath*>> seen_ids;
  std::vector<std::pair<std::string, const NamedPath*>> seen_new;
  for (const auto& o : outputs) {
    if (o.path.empty()) continue;
    const auto id = check_existing(o.what, o.path, dirs);
    if (!id) {
      std::error_code ec;
      const std::string key = fs::weakly_canonical(fs::absolute(o.path, ec), ec).string();
      for (const auto& [k, other] : seen_new)
        if (k == key) throw InputError(cat(o.what, " ", o.path, " and ", other->what, " ", other->path, " are the same file"));
      seen_new.emplace_back(key, &o);
      continue;
    }
    for (const auto& f : files)
      if (f.id == *id)
        throw InputError(cat(o.what, " ", o.path, " is the input ", describe_input(f),
                             "; memo does not overwrite its inputs (choose another path)"));
    for (const auto& [k, other] : seen_ids)
      if (k == *id && !dirs)
        throw InputError(cat(o.what, " ", o.path, " and ", other->what, " ", other->path, " are the same file"));
    seen_ids.emplace_back(*id, &o);
  }
}

}  // namespace

void check_outputs(const std::vector<NamedPath>& outputs, const std::vector<NamedPath>& inputs) {
  check_against(outputs, inputs, /*dirs=*/false);
}

void check_output_dirs(const std::vector<NamedPath>& dirs, const std::vector<NamedPath>& inputs) {
  check_against(dirs, inputs, /*dirs=*/true);
}

// --- the --out lock --------------------------------------------------------------

DirectoryLock::DirectoryLock(const std::string& dir, const std::string& what) : dir_(dir) {
  std::error_code ec;
  // The topmost missing directory of DIR's chain: what the destructor may remove.
  for (fs::path p = fs::absolute(fs::path(dir), ec).lexically_normal(); !ec && p.has_relative_path();
       p = p.parent_path()) {
    std::error_code status_ec;  // set for a missing path too: read the type
    if (fs::symlink_status(p, status_ec).type() != fs::file_type::not_found) break;
    created_ = p.string();
  }
  ec.clear();
  fs::create_directories(dir, ec);
  if (ec) throw_file_error(cat("create ", what, " directory"), dir, ec.value());
  const std::string path = (fs::path(dir) / ".lock").string();
  for (int attempt = 0; attempt < 5; ++attempt) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) throw_file_error("open the lock", path, errno);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char buf[32] = {};
      const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
      ::close(fd);
      if (err != EWOULDBLOCK) throw_file_error("lock", path, err);
      const long pid = n > 0 ? std::atol(buf) : 0;
      throw InputError(cat(what, " ", dir, " is in use by another memo run",
                           pid > 0 ? cat(" (pid ", pid, ")") : std::string(),
                           "; wait for it to finish or choose another directory"));
    }
    // The lock file may have been replaced between open and flock: then the
    // lock we hold is on a file nobody else will open; take the new one.
    struct stat held {}, now {};
    if (::fstat(fd, &held) == 0 && ::stat(path.c_str(), &now) == 0 && held.st_ino == now.st_ino &&
        held.st_dev == now.st_dev) {
      const std::string pid = cat(::getpid(), "\n");
      if (::ftruncate(fd, 0) == 0) (void)!::pwrite(fd, pid.data(), pid.size(), 0);
      fd_ = fd;
      return;
    }
    ::close(fd);
  }
  throw Error(cat("cannot lock ", path, ": it keeps being replaced"));
}

DirectoryLock::~DirectoryLock() {
  if (fd_ < 0) return;
  if (!created_.empty()) {
    // Still holding the lock: if DIR holds nothing but .lock, remove it and
    // the empty parents this lock created (never anything that existed).
    std::error_code ec;
    bool only_lock = true;
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().filename() != ".lock") only_lock = false;
    if (!ec && only_lock) {
      fs::remove(fs::path(dir_) / ".lock", ec);
      const fs::path top = fs::path(created_);
      for (fs::path p = fs::absolute(fs::path(dir_), ec).lexically_normal(); !ec && p.has_relative_path();
           p = p.parent_path()) {
        if (!fs::remove(p, ec) || ec) break;  // not empty (or gone): stop climbing
        if (p == top) break;
      }
    }
  }
  ::close(fd_);  // releases the flock
}

}  // namespace memo
