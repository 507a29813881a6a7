// MappedFile: open, fstat, mmap read-only, close the descriptor (the mapping
// stays valid), munmap on destruction.
#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace memo {

MappedFile::MappedFile(const std::string& path, const std::string& label) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  require_input(fd >= 0, label, ": cannot open (", std::strerror(errno), ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(cat(label, ": not a regular file"));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw InputError(cat(label, ": cannot map (", std::strerror(err), ")"));
    }
    base_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

}  // namespace memo
