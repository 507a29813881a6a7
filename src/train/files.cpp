// Atomic file writes for reports (core/files.h).
#include "core/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace memo {

namespace {

void make_parent(const std::filesystem::path& p) {
  if (!p.has_parent_path()) return;
  std::error_code ec;
  std::filesystem::create_directories(p.parent_path(), ec);
  require_input(!ec, "cannot create directory ", p.parent_path().string(), ": ", ec.message());
}

}  // namespace

void write_file_atomic(const std::string& path, const std::string& content) {
  std::filesystem::path p(path);
  make_parent(p);
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  require_input(fd >= 0, "cannot write ", tmp, ": ", std::strerror(errno));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw InputError(cat("cannot write ", tmp, ": ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw InputError(cat("cannot rename ", tmp, " to ", path, ": ", std::strerror(err)));
  }
}

void append_line(const std::string& path, const std::string& line) {
  std::filesystem::path p(path);
  make_parent(p);
  std::ofstream out(path, std::ios::app);
  require_input(out.good(), "cannot write ", path);
  out << line << '\n';
  require_input(out.good(), "cannot write ", path);
}

}  // namespace memo
