// Flat and Megatron token corpora, memory-mapped, every id checked.
#include "train/token_corpus.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/units.h"

namespace memo::train {

namespace fs = std::filesystem;

namespace {

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

// The one message for an id the model cannot embed, flat or Megatron.
void check_id(int64_t id, int64_t vocab, const std::string& path, int64_t pos) {
  if (id >= vocab)
    throw InputError(cat("data file ", path, ": token id ", id, " at position ", pos,
                         " is >= the model's vocabulary size ", vocab));
  if (id < 0)  // a signed Megatron dtype
    throw InputError(cat("data file ", path, ": token id ", id, " at position ", pos, " is negative"));
}

// "data file PATH": how every message about a data file starts.
std::string label(const std::string& path) { return "data file " + path; }

class FlatCorpus final : public TokenCorpus {
 public:
  FlatCorpus(const std::string& path, int width, std::string dtype, int64_t vocab)
      : map_(path, label(path)), width_(width), dtype_(std::move(dtype)), vocab_(vocab) {
    require_input(map_.size() > 0, "data file ", path, ": is empty");
    require_input(map_.size() % static_cast<size_t>(width_) == 0, "data file ", path, ": size ", map_.size(),
                  " bytes is not a whole number of ", dtype_, " tokens (", width_, " bytes each)");
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
  MappedFile map_;
  int width_;
  std::string dtype_;
  int64_t vocab_;
};

class MegatronCorpus final : public TokenCorpus {
 public:
  MegatronCorpus(const std::string& prefix, int64_t vocab)
      : idx_path_(prefix + ".idx"), bin_(prefix + ".bin", label(prefix + ".bin")), vocab_(vocab) {
    const MappedFile idx(idx_path_, label(idx_path_));
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
  MappedFile bin_;
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
    corpus = open_flat_corpus(path, flat_token_format(path, dtype), vocab);
  }
  corpus->scan();
  return corpus;
}

std::unique_ptr<TokenCorpus> open_flat_corpus(const std::string& path, const FlatTokenFormat& format,
                                              int64_t vocab) {
  std::error_code ec;
  require_input(fs::is_regular_file(path, ec), "data file ", path, ": not found");
  return std::make_unique<FlatCorpus>(path, format.width, format.kind, vocab);
}

FlatTokenFormat flat_token_format(const std::string& path, const std::string& dtype) {
  FlatTokenFormat f;
  f.kind = dtype;
  if (f.kind == "auto") f.kind = fs::path(path).extension() == ".bin" ? "uint16" : "text";
  f.width = f.kind == "text" ? 1 : f.kind == "uint16" ? 2 : f.kind == "uint32" ? 4 : 0;
  require_input(f.width > 0, "data dtype \"", dtype, "\" is unknown (expected auto, text, uint16, uint32 or megatron)");
  return f;
}

}  // namespace memo::train
