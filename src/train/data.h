// Training data: a built-in synthetic in-context task, a text file
// read as bytes (vocabulary 256), a flat binary file of uint16/uint32 token
// ids (the nanoGPT / llm.c format), or a Megatron indexed dataset (the
// corpora are in token_corpus.h). Each source hands out [batch, seq_len]
// micro-batches of tokens and next-token targets, deterministically from a seed.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "train/token_corpus.h"

namespace memo::train {

// What one forward/backward consumes.
struct MicroBatch {
  at::Tensor tokens;   // [B, S] int64
  at::Tensor targets;  // [B, S] int64, kIgnoreTarget where there is no target
  // Targets that are not kIgnoreTarget, counted on the host while the batch
  // was on the CPU; -1: not counted (counted when needed, a host
  // synchronisation if the targets are on a device by then).
  int64_t supervised = -1;
};

// batch.supervised, or the targets that are not kIgnoreTarget counted now (a
// host synchronisation when the targets are already on a device).
int64_t supervised_of(const MicroBatch& batch);

// The batch on `device`, with its targets counted first (on the host). On
// CUDA the copies go through pinned memory without blocking the host.
MicroBatch to_device(MicroBatch batch, const at::Device& device);

class DataSource {
 public:
  virtual ~DataSource() = default;
  // One micro-batch on the CPU: tokens and targets [batch, seq_len] int64,
  // with `supervised` counted.
  virtual MicroBatch next(int64_t batch, int64_t seq_len) = 0;
  // One line for the resolved-configuration printout.
  virtual std::string describe() const = 0;
  // What the data is, without where it lives: its kind, size and a hash of
  // every token id (file sources), so a resumed run can tell the same data
  // moved elsewhere from different data. Defaults to describe().
  virtual std::string fingerprint() const { return describe(); }
  // The loss a model that ignores the context would reach (synthetic task), if known.
  virtual std::optional<double> no_context_loss() const { return std::nullopt; }
  // The resumable position (RNG state, counters) as integers, for checkpoints.
  virtual std::vector<uint64_t> state() const { return {}; }
  // Continues from a state() of a source built with the same arguments.
  virtual void restore(const std::vector<uint64_t>& state);
};

// Small deterministic generator (splitmix64): identical streams on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  // Uniform in [0, n), n > 0.
  uint64_t below(uint64_t n);
  uint64_t state() const { return state_; }
  void set_state(uint64_t s) { state_ = s; }

 private:
  uint64_t state_;
};

// In-context alphabet: every sequence uses its own random subset of the
// vocabulary with Zipf frequencies, so without reading the context the best
// loss is ln(vocab); reading further back reveals the rarer members.
struct SyntheticOptions {
  int64_t vocab = 256;
  int64_t alphabet = 0;  // tokens per sequence's alphabet; 0: min(16, vocab / 4)
  uint64_t seed = 0;
};
std::unique_ptr<DataSource> make_synthetic_source(const SyntheticOptions& options,
                                                  int64_t seq_len);

// A token file: a flat file sampled at random windows, or a Megatron dataset
// packed (make_packed_source). dtype: "text" (bytes), "uint16", "uint32",
// "megatron", or "auto" (a Megatron PREFIX when PREFIX.idx and PREFIX.bin
// exist, else .bin -> uint16, anything else -> text). Throws InputError for a missing or empty
// file, a size that is not a whole number of tokens, fewer than seq_len + 1
// tokens, or token ids >= vocab.
std::unique_ptr<DataSource> make_file_source(const std::string& path, const std::string& dtype,
                                             int64_t vocab, int64_t seq_len, uint64_t seed);

// Fixed-length sequences packed from the corpus: sample i is tokens
// [i S, i S + S] (inputs and shifted targets), visited in a seeded shuffled
// order per epoch. The position (epoch, index) is the resumable state.
std::unique_ptr<DataSource> make_packed_source(std::unique_ptr<TokenCorpus> corpus, int64_t seq_len,
                                               uint64_t seed);

}  // namespace memo::train
