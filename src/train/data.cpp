// Micro-batches: the synthetic in-context task, random windows of a flat
// token file, packed sequences of a corpus, and the batch's move to the device.
#include "train/data.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/units.h"
#include "train/loss.h"

namespace memo::train {

int64_t supervised_of(const MicroBatch& b) {
  if (b.supervised >= 0) return b.supervised;
  return b.targets.ne(kIgnoreTarget).sum().item<int64_t>();
}

MicroBatch to_device(MicroBatch batch, const at::Device& device) {
  batch.supervised = supervised_of(batch);
  auto move = [&](const at::Tensor& t) {
    if (t.device() == device) return t;
    // Pageable memory would make the copy wait for the device; a pinned
    // staging copy lets it queue (the host allocator keeps the staging
    // block until the copy has run).
    if (device.is_cuda() && t.is_cpu()) return t.pin_memory().to(device, t.scalar_type(), /*non_blocking=*/true);
    return t.to(device);
  };
  batch.tokens = move(batch.tokens);
  batch.targets = move(batch.targets);
  return batch;
}

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

// Random windows of a flat token file (the corpus checks and maps it).
class TokenFile final : public DataSource {
 public:
  TokenFile(const std::string& path, const FlatTokenFormat& format, int64_t vocab, int64_t seq_len,
            uint64_t seed)
      : path_(path), dtype_(format.kind), corpus_(open_flat_corpus(path, format, vocab)),
        rng_(seed ^ 0xDA7Aull) {
    tokens_ = corpus_->size();
    require_input(tokens_ >= seq_len + 1, "data file ", path_, ": holds ", tokens_,
                  " tokens, fewer than seq_len + 1 = ", seq_len + 1);
    // Every id is checked up front, so a bad file fails before training
    // starts rather than mid-run; the same pass hashes the ids (fingerprint()).
    corpus_->scan();
  }

  MicroBatch next(int64_t batch, int64_t seq_len) override {
    require_input(tokens_ >= seq_len + 1, "data file ", path_, ": holds ", tokens_,
                  " tokens, fewer than seq_len + 1 = ", seq_len + 1);
    auto window = at::empty({batch, seq_len + 1}, at::kLong);  // [B, S + 1]
    auto* w = window.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t start = static_cast<int64_t>(rng_.below(static_cast<uint64_t>(tokens_ - seq_len)));
      corpus_->read(start, seq_len + 1, w + b * (seq_len + 1));
    }
    return {window.narrow(1, 0, seq_len).contiguous(), window.narrow(1, 1, seq_len).contiguous(),
            batch * seq_len};  // every position has a target
  }

  std::string describe() const override { return corpus_->describe(); }
  // Kept as it was before the corpus existed: checkpoints store it.
  std::string fingerprint() const override {
    return strf("flat %s file: %lld tokens, id hash %016llx", dtype_.c_str(), static_cast<long long>(tokens_),
                static_cast<unsigned long long>(corpus_->id_hash()));
  }
  std::vector<uint64_t> state() const override { return {rng_.state()}; }
  void restore(const std::vector<uint64_t>& s) override {
    require_input(s.size() == 1, "checkpoint: the data position does not fit data file ", path_);
    rng_.set_state(s[0]);
  }

 private:
  std::string path_;
  std::string dtype_;
  std::unique_ptr<TokenCorpus> corpus_;
  int64_t tokens_ = 0;
  Rng rng_;
};

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
  return std::make_unique<TokenFile>(path, format, vocab, seq_len, seed);
}

std::unique_ptr<DataSource> make_packed_source(std::unique_ptr<TokenCorpus> corpus, int64_t seq_len,
                                               uint64_t seed) {
  return std::make_unique<PackedSource>(std::move(corpus), seq_len, seed);
}

}  // namespace memo::train
