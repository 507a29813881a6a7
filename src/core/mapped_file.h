// A whole file mapped read-only into memory (mmap), the one reader under the
// safetensors checkpoints (model/safetensors.h) and the token corpora
// (train/token_corpus.h). Bad input throws InputError naming the file with the
// caller's label in front ("data file x.bin: cannot open (No such file...)").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace memo {

class MappedFile {
 public:
  // `label` opens every message: the path itself, or "data file PATH".
  // Throws InputError when the file cannot be opened, is not a regular file
  // or cannot be mapped. An empty file maps to data() == nullptr, size() 0.
  MappedFile(const std::string& path, const std::string& label);
  explicit MappedFile(const std::string& path) : MappedFile(path, path) {}
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return base_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace memo
