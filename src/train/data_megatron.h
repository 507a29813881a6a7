// Token corpora read in order, and the packed data source built on them.
// A corpus is a flat token file (text bytes, uint16, uint32; memory-mapped) or
// a Megatron-LM indexed dataset (PREFIX.bin + PREFIX.idx, the "MMIDIDX"
// format: magic "MMIDIDX\0\0", uint64 version 1, uint8 dtype code, uint64
// sequence count, uint64 document count, int32 sizes[], int64 pointers[]
// (byte offsets into .bin), int64 doc_idx[]). Documents are concatenated in
// order, end-of-document tokens kept as stored.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "train/data.h"

namespace memo::train {

class TokenCorpus {
 public:
  virtual ~TokenCorpus() = default;
  virtual int64_t size() const = 0;  // tokens
  // Copies tokens [start, start + count) into out; throws InputError for ids >= vocab.
  virtual void read(int64_t start, int64_t count, int64_t* out) const = 0;
  virtual std::string describe() const = 0;
  // The format without the path ("megatron int32", "flat uint16").
  virtual std::string kind() const = 0;

  // Reads every token once, so an id outside the vocabulary fails here,
  // before any work, and hashes the ids (open_token_corpus calls it).
  void scan();
  // Kind, size and the ids' hash: the same data anywhere (after scan()).
  std::string fingerprint() const;

 private:
  uint64_t hash_ = 0;
};

// Whether `path` names a Megatron dataset: dtype "megatron", or dtype "auto"
// and PREFIX.idx exists next to PREFIX.bin (path may be PREFIX, .bin or .idx).
bool is_megatron_data(const std::string& path, const std::string& dtype);

// Opens a corpus: megatron (see above), or a flat file of dtype text, uint16,
// uint32 or auto (.bin -> uint16, else text), and scans it. Throws InputError
// naming the file for anything malformed (bad magic, version, dtype code,
// counts that do not fit the file, pointers past the end of .bin, an empty
// corpus, a token id outside the vocabulary, with its position).
std::unique_ptr<TokenCorpus> open_token_corpus(const std::string& path, const std::string& dtype,
                                               int64_t vocab);

// Fixed-length sequences packed from the corpus: sample i is tokens
// [i S, i S + S] (inputs and shifted targets), visited in a seeded shuffled
// order per epoch. The position (epoch, index) is the resumable state.
std::unique_ptr<DataSource> make_packed_source(std::unique_ptr<TokenCorpus> corpus, int64_t seq_len,
                                               uint64_t seed);

}  // namespace memo::train
