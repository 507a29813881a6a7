// Flat and Megatron token corpora (memory-mapped) and the packed, resumable
// data source.
#include "train/data_megatron.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/units.h"

namespace memo::train {

namespace fs = std::filesystem;

namespace {

// A read-only memory map of a whole file.
class Mapping {
 public:
  explicit Mapping(const std::string& path) : path_(path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    require_input(fd >= 0, "data file ", path, ": cannot open (", std::strerror(errno), ")");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw InputError(cat("data file ", path, ": not a regular file"));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        throw InputError(cat("data file ", path, ": cannot map (", std::strerror(errno), ")"));
      }
      base_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
  }
  ~Mapping() {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  const uint8_t* data() const { return base_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

int64_t load_id(const uint8_t* p, int width, bool is_signed) {
  switch (width) {
    case 1: return is_signed ? static_cast<int8_t>(p[0]) : p[0];
    case 2: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return is_signed ? static_cast<int16_t>(v) : v;
    }
    case 4: {
      uint32_t v;
      std::memcpy(&v, p, 4);
      return is_signed ? static_cast<int32_t>(v) : v;
    }
    default: {
      int64_t v;
      std::memcpy(&v, p, 8);
      return v;
    }
  }
}

void check_id(int64_t id, int64_t vocab, const std::string& path, int64_t pos) {
  if (id < 0 || id >= vocab)
    throw InputError(cat("data file ", path, ": token id ", id, " at position ", pos,
                         " is outside the model's vocabulary (size ", vocab, ")"));
}

class FlatCorpus final : public TokenCorpus {
 public:
  FlatCorpus(const std::string& path, int width, std::string dtype, int64_t vocab)
      : map_(path), width_(width), dtype_(std::move(dtype)), vocab_(vocab) {
    require_input(map_.size() > 0, "data file ", path, ": is empty");
    require_input(map_.size() % static_cast<size_t>(width_) == 0, "data file ", path, ": size ", map_.size(),
                  " bytes is not a whole number of ", dtype_, " tokens");
  }
  int64_t size() const override { return static_cast<int64_t>(map_.size()) / width_; }
  void read(int64_t start, int64_t count, int64_t* out) const override {
    require_input(start >= 0 && start + count <= size(), "data file ", map_.path(), ": read past the end");
    for (int64_t i = 0; i < count; ++i) {
      out[i] = load_id(map_.data() + (start + i) * width_, width_, false);
      check_id(out[i], vocab_, map_.path(), start + i);
    }
  }
  std::string describe() const override {
    return strf("%s: %s tokens of %s", map_.path().c_str(), format_count(static_cast<double>(size())).c_str(),
                dtype_.c_str());
  }
  std::string kind() const override { return "flat " + dtype_; }

 private:
  Mapping map_;
  int width_;
  std::string dtype_;
  int64_t vocab_;
};

class MegatronCorpus final : public TokenCorpus {
 public:
  MegatronCorpus(const std::string& prefix, int64_t vocab)
      : idx_path_(prefix + ".idx"), bin_(prefix + ".bin"), vocab_(vocab) {
    Mapping idx(idx_path_);
    const uint8_t* p = idx.data();
    const size_t n = idx.size();
    const std::string& f = idx_path_;
    require_input(n >= 34 && std::memcmp(p, "MMIDIDX\0\0", 9) == 0, "data file ", f,
                  ": not a Megatron index (magic \"MMIDIDX\" missing or file too short)");
    uint64_t version, seqs, docs;
    std::memcpy(&version, p + 9, 8);
    require_input(version == 1, "data file ", f, ": index version ", version, " is not supported (expected 1)");
    const uint8_t code = p[17];
    std::memcpy(&seqs, p + 18, 8);
    std::memcpy(&docs, p + 26, 8);
    // dtype codes as in megatron/core/datasets/indexed_dataset.py
    switch (code) {
      case 1: width_ = 1; break;                        // uint8
      case 2: width_ = 1; signed_ = true; break;        // int8
      case 3: width_ = 2; signed_ = true; break;        // int16
      case 4: width_ = 4; signed_ = true; break;        // int32
      case 5: width_ = 8; signed_ = true; break;        // int64
      case 8: width_ = 2; break;                        // uint16
      default:
        throw InputError(cat("data file ", f, ": token dtype code ", int(code),
                             " is not an integer type (1-5 or 8)"));
    }
    const uint64_t body = n - 34;
    require_input(seqs <= body / 12 && docs <= (body - seqs * 12) / 8 && 34 + seqs * 12 + docs * 8 <= n,
                  "data file ", f, ": ", seqs, " sequences and ", docs, " document entries do not match its size ",
                  n, " bytes");
    require_input(seqs > 0, "data file ", f, ": holds no sequences");
    std::vector<int32_t> sizes(seqs);
    std::vector<int64_t> pointers(seqs);
    std::memcpy(sizes.data(), p + 34, seqs * 4);
    std::memcpy(pointers.data(), p + 34 + seqs * 4, seqs * 8);
    starts_.resize(seqs + 1, 0);
    pointers_.resize(seqs);
    for (uint64_t i = 0; i < seqs; ++i) {
      require_input(sizes[i] >= 0, "data file ", f, ": sequence ", i, " has negative size ", sizes[i]);
      const uint64_t bytes = static_cast<uint64_t>(sizes[i]) * static_cast<uint64_t>(width_);
      require_input(pointers[i] >= 0 && static_cast<uint64_t>(pointers[i]) <= bin_.size() &&
                        bytes <= bin_.size() - static_cast<uint64_t>(pointers[i]),
                    "data file ", f, ": sequence ", i, " (", sizes[i], " tokens at byte ", pointers[i],
                    ") lies outside ", bin_.path(), " (", bin_.size(), " bytes)");
      pointers_[i] = pointers[i];
      starts_[i + 1] = starts_[i] + sizes[i];
    }
    require_input(starts_.back() > 0, "data file ", f, ": all sequences are empty");
    docs_ = docs > 0 ? static_cast<int64_t>(docs) - 1 : 0;
  }
  int64_t size() const override { return starts_.back(); }
  void read(int64_t start, int64_t count, int64_t* out) const override {
    require_input(start >= 0 && start + count <= size(), "data file ", bin_.path(), ": read past the end");
    // The sequence holding `start`, then walk forward.
    size_t s = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), start) - starts_.begin() - 1);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t pos = start + i;
      while (pos >= starts_[s + 1]) ++s;
      const uint8_t* at = bin_.data() + pointers_[s] + (pos - starts_[s]) * width_;
      out[i] = load_id(at, width_, signed_);
      check_id(out[i], vocab_, bin_.path(), pos);
    }
  }
  std::string describe() const override {
    return strf("%s (Megatron): %s tokens in %lld sequences, %lld documents", bin_.path().c_str(),
                format_count(static_cast<double>(size())).c_str(),
                static_cast<long long>(pointers_.size()), static_cast<long long>(docs_));
  }
  std::string kind() const override {
    return cat("megatron ", signed_ ? "int" : "uint", width_ * 8, ", ", pointers_.size(), " sequences");
  }

 private:
  std::string idx_path_;
  Mapping bin_;
  int64_t vocab_;
  int width_ = 2;
  bool signed_ = false;
  std::vector<int64_t> starts_;    // cumulative token counts, seqs + 1 of them
  std::vector<int64_t> pointers_;  // byte offset of each sequence in .bin
  int64_t docs_ = 0;
};

std::string megatron_prefix(const std::string& path) {
  const fs::path p(path);
  if (p.extension() == ".bin" || p.extension() == ".idx") return (p.parent_path() / p.stem()).string();
  return path;
}

// Sequential windows in a seeded affine order per epoch: i -> (a i + b) mod n
// with gcd(a, n) = 1, a bijection that needs no table.
class PackedSource final : public DataSource {
 public:
  PackedSource(std::unique_ptr<TokenCorpus> corpus, int64_t seq_len, uint64_t seed)
      : corpus_(std::move(corpus)), seq_len_(seq_len), seed_(seed) {
    samples_ = (corpus_->size() - 1) / seq_len_;
    require_input(samples_ >= 1, corpus_->describe(), ": fewer than seq_len + 1 = ", seq_len_ + 1, " tokens");
  }

  MicroBatch next(int64_t batch, int64_t seq_len) override {
    require_input(seq_len == seq_len_, "packed data: seq_len changed from ", seq_len_, " to ", seq_len);
    auto window = at::empty({batch, seq_len + 1}, at::kLong);
    auto* w = window.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      const uint64_t n = static_cast<uint64_t>(samples_);
      Rng rng(seed_ ^ 0x9ACCEDull ^ (epoch_ * 0x9E3779B97F4A7C15ull));
      uint64_t a = n > 1 ? 1 + rng.below(n - 1) : 1;
      while (std::gcd(a, n) != 1) a = a % n + 1;
      const uint64_t off = rng.below(n);
      const uint64_t sample = static_cast<uint64_t>((static_cast<unsigned __int128>(a) * index_ + off) % n);
      corpus_->read(static_cast<int64_t>(sample) * seq_len, seq_len + 1, w + b * (seq_len + 1));
      if (++index_ == n) {
        index_ = 0;
        ++epoch_;
      }
    }
    return {window.narrow(1, 0, seq_len).contiguous(), window.narrow(1, 1, seq_len).contiguous(),
            batch * seq_len};  // every position has a target
  }

  std::string describe() const override {
    return strf("%s, packed into %lld sequences of %lld", corpus_->describe().c_str(),
                static_cast<long long>(samples_), static_cast<long long>(seq_len_));
  }
  std::string fingerprint() const override {
    return strf("%s, packed into sequences of %lld", corpus_->fingerprint().c_str(), static_cast<long long>(seq_len_));
  }
  std::vector<uint64_t> state() const override { return {epoch_, index_}; }
  void restore(const std::vector<uint64_t>& s) override {
    require_input(s.size() == 2 && s[1] < static_cast<uint64_t>(samples_),
                  "checkpoint: the data position does not fit this packed data source");
    epoch_ = s[0];
    index_ = s[1];
  }

 private:
  std::unique_ptr<TokenCorpus> corpus_;
  int64_t seq_len_;
  uint64_t seed_;
  int64_t samples_ = 0;
  uint64_t epoch_ = 0, index_ = 0;
};

}  // namespace

void TokenCorpus::scan() {
  const int64_t block = 1 << 20;
  std::vector<int64_t> ids(static_cast<size_t>(std::min<int64_t>(block, std::max<int64_t>(size(), 1))));
  uint64_t h = kTokenHashSeed;
  for (int64_t start = 0; start < size(); start += block) {
    const int64_t n = std::min(block, size() - start);
    read(start, n, ids.data());
    for (int64_t i = 0; i < n; ++i) h = hash_token(h, ids[static_cast<size_t>(i)]);
  }
  hash_ = h;
}

std::string TokenCorpus::fingerprint() const {
  return strf("%s: %lld tokens, id hash %016llx", kind().c_str(), static_cast<long long>(size()),
              static_cast<unsigned long long>(hash_));
}

bool is_megatron_data(const std::string& path, const std::string& dtype) {
  if (dtype == "megatron") return true;
  if (dtype != "auto") return false;
  const auto prefix = megatron_prefix(path);
  std::error_code ec;
  return fs::is_regular_file(prefix + ".idx", ec) && fs::is_regular_file(prefix + ".bin", ec);
}

std::unique_ptr<TokenCorpus> open_token_corpus(const std::string& path, const std::string& dtype,
                                               int64_t vocab) {
  std::unique_ptr<TokenCorpus> corpus;
  if (is_megatron_data(path, dtype)) {
    corpus = std::make_unique<MegatronCorpus>(megatron_prefix(path), vocab);
  } else {
    const auto format = flat_token_format(path, dtype);
    std::error_code ec;
    require_input(fs::is_regular_file(path, ec), "data file ", path, ": not found");
    corpus = std::make_unique<FlatCorpus>(path, format.width, format.kind, vocab);
  }
  corpus->scan();
  return corpus;
}

std::unique_ptr<DataSource> make_packed_source(std::unique_ptr<TokenCorpus> corpus, int64_t seq_len,
                                               uint64_t seed) {
  return std::make_unique<PackedSource>(std::move(corpus), seq_len, seed);
}

}  // namespace memo::train
