// The offset-assignment (dynamic storage allocation, DSA) problem: buffers with
// half-open lifetimes [lower, upper) and sizes, and a solution that gives each
// buffer a byte offset. Plain data plus minimalloc's CSV format
// (`id,lower,upper,size[,alignment][,offset]`, header required).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace memo::plan {

struct Buffer {
  std::string id;
  int64_t lower = 0;      // first step the buffer is alive
  int64_t upper = 0;      // first step it is dead again (half-open)
  int64_t size = 0;       // bytes (or any unit), > 0
  int64_t alignment = 1;  // the offset must be a multiple of this, >= 1
};

struct Problem {
  std::vector<Buffer> buffers;
};

// offsets[i] is the offset of problem.buffers[i]; kNoOffset marks "not placed".
using Offsets = std::vector<int64_t>;
inline constexpr int64_t kNoOffset = -1;

// What a CSV file holds: the problem, plus offsets when it has an offset column
// (empty otherwise).
struct CsvContents {
  Problem problem;
  Offsets offsets;
};

// Limits on what is accepted, so that no sum of sizes, offsets or alignments
// can overflow int64 in any solver (whose "infinity" is 2^61): the sizes plus
// alignment padding of all buffers sum to at most kMaxTotalBytes (2^60,
// 1 EiB), and upper - lower must be representable.
inline constexpr int64_t kMaxTotalBytes = int64_t{1} << 60;
// Input is read with bounds, so a device (/dev/zero) or a FIFO cannot fill
// memory: at most kMaxCsvBytes in all and kMaxCsvLineBytes per line.
inline constexpr int64_t kMaxCsvBytes = int64_t{4} << 30;
inline constexpr int64_t kMaxCsvLineBytes = 64 << 10;

// Parses minimalloc's CSV. Columns are found by header name (any order);
// id, lower, upper and size are required, alignment and offset optional.
// Throws memo::InputError naming `source` and the line on any malformed input
// (the limits above included).
CsvContents parse_csv(std::istream& in, const std::string& source);
CsvContents read_csv(const std::string& path);

// Throws InputError naming `source` when a problem breaks the limits above
// (for problems built in code; parse_csv checks them line by line).
void check_limits(const Problem& problem, const std::string& source);

// Writes `id,lower,upper,size,offset` (plus alignment when any buffer has one).
// Files are written by the callers with write_file_atomic (core/files.h).
void write_csv(std::ostream& out, const Problem& problem, const Offsets& offsets);
std::string to_csv(const Problem& problem, const Offsets& offsets);

// LOAD: the most bytes alive at any one time, a lower bound on every peak.
int64_t load(const Problem& problem);

// The peak of a (complete) solution: max over buffers of offset + size.
int64_t peak(const Problem& problem, const Offsets& offsets);

inline int64_t align_up(int64_t value, int64_t alignment) {
  return alignment <= 1 ? value : (value + alignment - 1) / alignment * alignment;
}

}  // namespace memo::plan
