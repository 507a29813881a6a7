// The synthetic in-context task and token-file readers.
#include "train/data.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/units.h"
#include "train/data_megatron.h"
#include "train/loss.h"

namespace memo::train {

uint64_t Rng::next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Rng::below(uint64_t n) {
  // Rejection sampling keeps it exactly uniform.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do r = next();
  while (r >= limit);
  return r % n;
}

void DataSource::restore(const std::vector<uint64_t>& s) {
  require_input(s.empty(), "checkpoint: the data position does not fit this data source");
}

namespace {

// The synthetic task. Every sequence draws its own alphabet: A distinct
// tokens out of the whole vocabulary, used with Zipf-like frequencies
// (weight 1/rank), and its tokens are i.i.d. from that. Since alphabets are
// random, the tokens are uniform over the vocabulary to anyone who does not
// read the sequence: a model that ignores its context cannot beat ln(vocab).
// Reading back recovers the alphabet and its frequencies; rare members are
// seen only far back, so the further a model attends, the lower its loss.
class SyntheticAlphabet final : public DataSource {
 public:
  SyntheticAlphabet(const SyntheticOptions& o, int64_t seq_len)
      : vocab_(o.vocab), rng_(o.seed ^ 0x5EEDull) {
    require_input(o.vocab >= 32, "synthetic task: the model's vocabulary (", o.vocab,
                  ") must be at least 32");
    require_input(seq_len >= 8, "synthetic task: seq_len (", seq_len, ") must be at least 8");
    alphabet_ = o.alphabet > 0 ? o.alphabet : std::min<int64_t>(16, o.vocab / 4);
    require_input(alphabet_ <= o.vocab, "synthetic task: alphabet ", alphabet_, " exceeds the vocabulary ", o.vocab);
    double total = 0.0;
    for (int64_t r = 1; r <= alphabet_; ++r) total += 1.0 / static_cast<double>(r);
    double acc = 0.0;
    for (int64_t r = 1; r <= alphabet_; ++r) {
      acc += 1.0 / static_cast<double>(r) / total;
      cumulative_.push_back(acc);
    }
  }

  MicroBatch next(int64_t batch, int64_t seq_len) override {
    auto window = at::empty({batch, seq_len + 1}, at::kLong);
    auto* w = window.data_ptr<int64_t>();
    // A partial Fisher-Yates shuffle of 0..vocab-1 gives the alphabet; only
    // the positions it touches are stored, so a huge vocabulary costs nothing.
    std::unordered_map<int64_t, int64_t> moved;
    auto at_pos = [&](int64_t i) {
      auto it = moved.find(i);
      return it == moved.end() ? i : it->second;
    };
    std::vector<int64_t> perm(static_cast<size_t>(alphabet_));
    for (int64_t b = 0; b < batch; ++b) {
      moved.clear();
      for (int64_t i = 0; i < alphabet_; ++i) {
        const int64_t j = i + static_cast<int64_t>(rng_.below(static_cast<uint64_t>(vocab_ - i)));
        const int64_t vi = at_pos(i), vj = at_pos(j);
        moved[i] = vj;
        moved[j] = vi;
        perm[static_cast<size_t>(i)] = vj;
      }
      for (int64_t t = 0; t <= seq_len; ++t) {
        const double u = static_cast<double>(rng_.next() >> 11) * 0x1.0p-53;
        auto rank = std::lower_bound(cumulative_.begin(), cumulative_.end(), u) - cumulative_.begin();
        rank = std::min<int64_t>(rank, alphabet_ - 1);
        w[b * (seq_len + 1) + t] = perm[static_cast<size_t>(rank)];
      }
    }
    return {window.narrow(1, 0, seq_len).contiguous(), window.narrow(1, 1, seq_len).contiguous(),
            batch * seq_len};  // every position has a target
  }

  std::string describe() const override {
    return strf("synthetic in-context alphabet: each sequence uses its own %lld of the %lld "
                "tokens (Zipf frequencies); without reading the context the best loss is "
                "ln(%lld) = %.3f",
                static_cast<long long>(alphabet_), static_cast<long long>(vocab_),
                static_cast<long long>(vocab_), std::log(static_cast<double>(vocab_)));
  }

  std::optional<double> no_context_loss() const override {
    return std::log(static_cast<double>(vocab_));
  }
  std::vector<uint64_t> state() const override { return {rng_.state()}; }
  void restore(const std::vector<uint64_t>& s) override {
    require_input(s.size() == 1, "checkpoint: the data position does not fit the synthetic task");
    rng_.set_state(s[0]);
  }

 private:
  int64_t vocab_;
  int64_t alphabet_ = 0;
  std::vector<double> cumulative_;
  Rng rng_;
};

// A flat file of little-endian token ids of `width` bytes each.
class TokenFile final : public DataSource {
 public:
  TokenFile(std::string path, int width, std::string dtype, int64_t vocab, int64_t seq_len,
            uint64_t seed)
      : path_(std::move(path)), width_(width), dtype_(std::move(dtype)), vocab_(vocab),
        rng_(seed ^ 0xDA7Aull) {
    namespace fs = std::filesystem;
    std::error_code ec;
    require_input(fs::is_regular_file(path_, ec), "data file ", path_, ": not found");
    const auto bytes = static_cast<int64_t>(fs::file_size(path_, ec));
    require_input(!ec, "data file ", path_, ": cannot read its size");
    require_input(bytes > 0, "data file ", path_, ": is empty");
    require_input(bytes % width_ == 0, "data file ", path_, ": size ", bytes,
                  " bytes is not a whole number of ", dtype_, " tokens (", width_, " bytes each)");
    tokens_ = bytes / width_;
    require_input(tokens_ >= seq_len + 1, "data file ", path_, ": holds ", tokens_,
                  " tokens, fewer than seq_len + 1 = ", seq_len + 1);
    file_.open(path_, std::ios::binary);
    require_input(file_.good(), "data file ", path_, ": cannot open");
    scan_ids();
  }

  MicroBatch next(int64_t batch, int64_t seq_len) override {
    require_input(tokens_ >= seq_len + 1, "data file ", path_, ": holds ", tokens_,
                  " tokens, fewer than seq_len + 1 = ", seq_len + 1);
    auto window = at::empty({batch, seq_len + 1}, at::kLong);
    auto* w = window.data_ptr<int64_t>();
    std::vector<int64_t> ids;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t start = static_cast<int64_t>(rng_.below(static_cast<uint64_t>(tokens_ - seq_len)));
      read(start, seq_len + 1, ids);
      std::copy(ids.begin(), ids.end(), w + b * (seq_len + 1));
    }
    return {window.narrow(1, 0, seq_len).contiguous(), window.narrow(1, 1, seq_len).contiguous(),
            batch * seq_len};  // every position has a target
  }

  std::string describe() const override {
    return strf("%s: %s tokens of %s", path_.c_str(), format_count(static_cast<double>(tokens_)).c_str(),
                dtype_.c_str());
  }
  std::string fingerprint() const override {
    return strf("flat %s file: %lld tokens, id hash %016llx", dtype_.c_str(), static_cast<long long>(tokens_),
                static_cast<unsigned long long>(hash_));
  }
  std::vector<uint64_t> state() const override { return {rng_.state()}; }
  void restore(const std::vector<uint64_t>& s) override {
    require_input(s.size() == 1, "checkpoint: the data position does not fit data file ", path_);
    rng_.set_state(s[0]);
  }

 private:
  void read(int64_t start, int64_t count, std::vector<int64_t>& out) {
    std::vector<unsigned char> raw(static_cast<size_t>(count * width_));
    file_.clear();
    file_.seekg(start * width_);
    file_.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
    if (file_.gcount() != static_cast<std::streamsize>(raw.size()))
      throw InputError(cat("data file ", path_, ": short read at token ", start));
    out.resize(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      const unsigned char* p = raw.data() + i * width_;
      int64_t id = 0;
      for (int k = width_ - 1; k >= 0; --k) id = (id << 8) | p[k];
      if (id >= vocab_)
        throw InputError(cat("data file ", path_, ": token id ", id, " at position ", start + i,
                             " is >= the model's vocabulary size ", vocab_));
      out[static_cast<size_t>(i)] = id;
    }
  }

  // Checks every id up front (in 1M-token blocks), so a bad file fails before
  // training starts rather than mid-run.
  // The same pass hashes the ids (fingerprint()).
  void scan_ids() {
    std::vector<int64_t> ids;
    const int64_t block = 1 << 20;
    for (int64_t start = 0; start < tokens_; start += block) {
      read(start, std::min(block, tokens_ - start), ids);
      for (int64_t id : ids) hash_ = hash_token(hash_, id);
    }
  }

  std::string path_;
  int width_;
  std::string dtype_;
  int64_t vocab_;
  int64_t tokens_ = 0;
  uint64_t hash_ = kTokenHashSeed;
  Rng rng_;
  std::ifstream file_;
};

}  // namespace

std::unique_ptr<DataSource> make_synthetic_source(const SyntheticOptions& options,
                                                  int64_t seq_len) {
  return std::make_unique<SyntheticAlphabet>(options, seq_len);
}

std::unique_ptr<DataSource> make_file_source(const std::string& path, const std::string& dtype,
                                             int64_t vocab, int64_t seq_len, uint64_t seed) {
  if (is_megatron_data(path, dtype))
    return make_packed_source(open_token_corpus(path, dtype, vocab), seq_len, seed);
  const auto format = flat_token_format(path, dtype);
  if (format.kind == "text")
    require_input(vocab >= 256, "data file ", path, " is read as bytes (vocabulary 256) but the model's "
                  "vocabulary is only ", vocab);
  return std::make_unique<TokenFile>(path, format.width, format.kind, vocab, seq_len, seed);
}

FlatTokenFormat flat_token_format(const std::string& path, const std::string& dtype) {
  FlatTokenFormat f;
  f.kind = dtype;
  if (f.kind == "auto") f.kind = std::filesystem::path(path).extension() == ".bin" ? "uint16" : "text";
  f.width = f.kind == "text" ? 1 : f.kind == "uint16" ? 2 : f.kind == "uint32" ? 4 : 0;
  require_input(f.width > 0, "data dtype \"", dtype, "\" is unknown (expected auto, text, uint16, uint32 or megatron)");
  return f;
}

}  // namespace memo::train
