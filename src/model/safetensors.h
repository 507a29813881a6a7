// The safetensors file format, our own reader and writer (no torch here, so
// the fuzz target builds it alone): an 8-byte little-endian header length N,
// N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]},
// optional "__metadata__": {string: string}}, then the raw little-endian bytes
// (offsets relative to the end of the header). Every malformed input throws
// InputError naming the file and, where there is one, the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/mapped_file.h"

namespace memo::model {

// Bytes per element of a safetensors dtype ("F32", "BF16", ...); 0 if unsupported.
int64_t safetensors_dtype_size(const std::string& dtype);

// "[2, 3]": a tensor shape for messages.
std::string shape_str(const std::vector<int64_t>& shape);

struct SafetensorsTensor {
  std::string name;
  std::string dtype;           // F64, F32, F16, BF16, I64, I32
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // absolute byte offsets in the file
  int64_t numel() const;
};

struct SafetensorsHeader {
  uint64_t data_start = 0;                  // 8 + header length
  std::vector<SafetensorsTensor> tensors;   // in file order (by begin offset)
  std::map<std::string, std::string> metadata;
  const SafetensorsTensor* find(const std::string& name) const;
};

// Parses and validates the header of a file of `file_size` bytes whose first
// `size` bytes are at `data` (size may be less than file_size: only the header
// must be there). Checks: header length within the file, valid JSON object,
// known dtypes, non-negative shapes, data_offsets in range, end - begin equal
// to the shape's bytes, no two tensors overlapping. `source` names the file.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, uint64_t file_size,
                                           const std::string& source);

// A safetensors file mapped read-only into memory.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const SafetensorsHeader& header() const { return header_; }
  // The raw bytes of one tensor (end - begin of them).
  const uint8_t* bytes(const SafetensorsTensor& t) const { return file_.data() + t.begin; }

 private:
  MappedFile file_;
  SafetensorsHeader header_;
};

// One tensor to write: its bytes must be little-endian and contiguous.
struct SafetensorsOutput {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t bytes = 0;
};

// The header bytes (length prefix included, JSON padded to 8-byte alignment)
// for these tensors laid out in the given order.
std::string safetensors_header_bytes(const std::vector<SafetensorsOutput>& tensors,
                                     const std::map<std::string, std::string>& metadata);

// Writes a safetensors file at `path` (not atomic: callers write into a
// temporary directory and rename it) and fsyncs it. Throws InputError naming
// the path when it cannot be opened, Error when writing fails (a full disk).
void write_safetensors(const std::string& path, const std::vector<SafetensorsOutput>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace memo::model
