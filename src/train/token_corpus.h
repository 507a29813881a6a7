// Token corpora: the token ids of a file, read in order. A corpus is a flat
// token file (text bytes, uint16 or uint32 little-endian ids: the nanoGPT /
// llm.c format) or a Megatron-LM indexed dataset (PREFIX.bin + PREFIX.idx,
// the "MMIDIDX" format: magic "MMIDIDX\0\0", uint64 version 1, uint8 dtype
// code, uint64 sequence count, uint64 document count, int32 sizes[], int64
// pointers[] (byte offsets into .bin), int64 doc_idx[]); documents are
// concatenated in order, end-of-document tokens kept as stored. Both are
// memory-mapped (core/mapped_file.h) and check every id against the model's
// vocabulary with one message. The data sources that cut micro-batches out
// of a corpus are in train/data.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace memo::train {

// A 64-bit running hash of token ids (FNV-1a over whole ids), for fingerprints.
inline constexpr uint64_t kTokenHashSeed = 1469598103934665603ull;
inline uint64_t hash_token(uint64_t h, int64_t id) {
  return (h ^ static_cast<uint64_t>(id)) * 1099511628211ull;
}

class TokenCorpus {
 public:
  virtual ~TokenCorpus() = default;
  virtual int64_t size() const = 0;  // tokens
  // Copies tokens [start, start + count) into out; throws InputError for ids
  // outside the vocabulary.
  virtual void read(int64_t start, int64_t count, int64_t* out) const = 0;
  virtual std::string describe() const = 0;
  // The format without the path ("megatron int32", "flat uint16").
  virtual std::string kind() const = 0;

  // Reads every token once, so an id outside the vocabulary fails here,
  // before any work, and hashes the ids (open_token_corpus calls it).
  void scan();
  // The hash of every id in order (after scan()).
  uint64_t id_hash() const { return hash_; }
  // Kind, size and the ids' hash: the same data anywhere (after scan()).
  std::string fingerprint() const;

 private:
  uint64_t hash_ = kTokenHashSeed;
};

// A flat token file's dtype ("auto" resolved by the extension) and its bytes
// per token. Throws InputError for a dtype that is not text, uint16 or uint32.
struct FlatTokenFormat {
  std::string kind;  // "text", "uint16" or "uint32"
  int width = 0;     // 1, 2 or 4
};
FlatTokenFormat flat_token_format(const std::string& path, const std::string& dtype);

// Whether `path` names a Megatron dataset: dtype "megatron", or dtype "auto"
// and PREFIX.idx exists next to PREFIX.bin (path may be PREFIX, .bin or .idx).
bool is_megatron_data(const std::string& path, const std::string& dtype);

// A flat token file, not yet scanned. Throws InputError for a missing or
// empty file, or a size that is not a whole number of tokens.
std::unique_ptr<TokenCorpus> open_flat_corpus(const std::string& path, const FlatTokenFormat& format,
                                              int64_t vocab);

// Opens a corpus: megatron (see above), or a flat file of dtype text, uint16,
// uint32 or auto (.bin -> uint16, else text), and scans it. Throws InputError
// naming the file for anything malformed (bad magic, version, dtype code,
// counts that do not fit the file, pointers past the end of .bin, an empty
// corpus, a token id outside the vocabulary, with its position).
std::unique_ptr<TokenCorpus> open_token_corpus(const std::string& path, const std::string& dtype,
                                               int64_t vocab);

}  // namespace memo::train
