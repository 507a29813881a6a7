// CSV reading/writing for DSA problems and the two basic measures, LOAD and
// peak. The reader is strict: every malformed line is an InputError that names
// the source and the 1-based line number.
#include "plan/dsa_problem.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <ostream>
#include <sstream>
#include <unordered_set>

#include "core/error.h"

namespace memo::plan {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t start = 0;
  while (true) {
    size_t comma = line.find(',', start);
    fields.push_back(trim(line.substr(start, comma - start)));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return fields;
}

// Lines of at most kMaxCsvLineBytes, kMaxCsvBytes in all, read in chunks:
// a device (/dev/zero) or a FIFO that never ends costs bounded memory.
class LineReader {
 public:
  LineReader(std::istream& in, const std::string& source) : buf_(in.rdbuf()), source_(source) {}

  // The next line (without its newline) into `line`; false at the end.
  bool next(std::string& line, int64_t line_no) {
    line.clear();
    bool any = false;
    while (true) {
      if (pos_ == end_ && !refill()) return any;
      any = true;
      const char* start = chunk_.data() + pos_;
      const auto* nl = static_cast<const char*>(std::memchr(start, '\n', end_ - pos_));
      const size_t take = nl ? static_cast<size_t>(nl - start) : end_ - pos_;
      require_input(static_cast<int64_t>(line.size() + take) <= kMaxCsvLineBytes, source_, ":", line_no,
                    ": line longer than ", kMaxCsvLineBytes, " bytes");
      line.append(start, take);
      pos_ += take;
      if (nl) {
        ++pos_;
        return true;
      }
    }
  }

 private:
  bool refill() {
    if (buf_ == nullptr) return false;
    const std::streamsize n = buf_->sgetn(chunk_.data(), static_cast<std::streamsize>(chunk_.size()));
    if (n <= 0) return false;
    total_ += n;
    require_input(total_ <= kMaxCsvBytes, source_, ": larger than ", kMaxCsvBytes,
                  " bytes; refusing to read further");
    pos_ = 0;
    end_ = static_cast<size_t>(n);
    return true;
  }

  std::streambuf* buf_;
  const std::string& source_;
  std::vector<char> chunk_ = std::vector<char>(1 << 20);
  size_t pos_ = 0, end_ = 0;
  int64_t total_ = 0;
};

enum Column { kId, kLower, kUpper, kSize, kAlignment, kOffset, kColumnCount };
const char* const kColumnNames[kColumnCount] = {"id", "lower", "upper", "size", "alignment",
                                                "offset"};

}  // namespace

CsvContents parse_csv(std::istream& in, const std::string& source) {
  std::string line;
  int64_t line_no = 0;
  LineReader reader(in, source);
  // Throws InputError "SOURCE:LINE: parts" unless ok; the message is built
  // only on failure (parsing 10^6 lines must not build 10^7 strings).
  auto check = [&](bool ok, auto&&... parts) {
    if (!ok) throw InputError(cat(source, ":", line_no, ": ", parts...));
  };
  auto next_line = [&] { return reader.next(line, line_no + 1); };

  // Header: skip leading blank lines, then map column names to positions.
  bool have_header = false;
  while (!have_header && next_line()) {
    ++line_no;
    have_header = !trim(line).empty();
  }
  require_input(have_header, source, ": empty file (expected a header `id,lower,upper,size`)");
  std::optional<size_t> position[kColumnCount];
  const std::string header_line = line;  // `header` views point into this copy
  const std::vector<std::string_view> header = split(header_line);
  for (size_t i = 0; i < header.size(); ++i) {
    auto name = header[i];
    auto* it = std::find(std::begin(kColumnNames), std::end(kColumnNames), name);
    check(it != std::end(kColumnNames), "unknown column '", name,
                  "' (expected id, lower, upper, size, alignment, offset)");
    auto column = static_cast<size_t>(it - std::begin(kColumnNames));
    check(!position[column], "duplicate column '", name, "'");
    position[column] = i;
  }
  for (int c = kId; c <= kSize; ++c)
    check(position[c].has_value(), "missing column '", kColumnNames[c],
                  "' in the header (need id,lower,upper,size)");

  CsvContents result;
  std::unordered_set<std::string> seen_ids;
  int64_t total_space = 0;  // sizes plus alignment padding, checked against kMaxTotalBytes
  while (next_line()) {
    ++line_no;
    if (trim(line).empty()) continue;
    auto fields = split(line);
    check(fields.size() == header.size(), "expected ", header.size(),
                  " fields, got ", fields.size());
    auto number = [&](Column c) -> std::optional<int64_t> {
      if (!position[c]) return std::nullopt;
      std::string_view text = fields[*position[c]];
      int64_t value = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
      check(ec == std::errc() && end == text.data() + text.size(), "column '",
                    kColumnNames[c], "': '", text, "' is not an integer");
      return value;
    };
    Buffer b;
    b.id = std::string(fields[*position[kId]]);
    check(!b.id.empty(), "empty id");
    check(seen_ids.insert(b.id).second, "duplicate id '", b.id, "'");
    b.lower = *number(kLower);
    b.upper = *number(kUpper);
    b.size = *number(kSize);
    check(b.lower < b.upper, "lower (", b.lower, ") must be < upper (",
                  b.upper, ")");
    check(b.size >= 0, "negative size ", b.size);
    int64_t span = 0;
    check(!__builtin_sub_overflow(b.upper, b.lower, &span), "upper - lower overflows");
    if (auto a = number(kAlignment)) {
      check(*a >= 1, "alignment must be >= 1, got ", *a);
      b.alignment = *a;
    }
    check(!__builtin_add_overflow(total_space, b.size, &total_space) &&
              !__builtin_add_overflow(total_space, b.alignment - 1, &total_space) &&
              total_space <= kMaxTotalBytes,
          "the sizes and alignments so far sum to more than 2^60 bytes (1 EiB); offsets "
                  "could overflow, so the instance is refused");
    if (position[kOffset]) {
      bool empty = fields[*position[kOffset]].empty();  // empty field: not placed
      int64_t offset = empty ? kNoOffset : *number(kOffset);
      check(empty || offset >= 0, "negative offset ", offset);
      check(empty || offset <= kMaxTotalBytes, "offset ", offset, " is above 2^60");
      result.offsets.push_back(offset);
    }
    result.problem.buffers.push_back(std::move(b));
  }
  return result;
}

CsvContents read_csv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  require_input(in.good(), "cannot open '", path, "'");
  return parse_csv(in, path);
}

void check_limits(const Problem& problem, const std::string& source) {
  int64_t total = 0;
  for (const Buffer& b : problem.buffers) {
    int64_t span = 0;
    require_input(b.size >= 0 && b.alignment >= 1, source, ": buffer '", b.id,
                  "' has a negative size or an alignment below 1");
    require_input(!__builtin_sub_overflow(b.upper, b.lower, &span), source, ": buffer '", b.id,
                  "': upper - lower overflows");
    require_input(!__builtin_add_overflow(total, b.size, &total) &&
                      !__builtin_add_overflow(total, b.alignment - 1, &total) && total <= kMaxTotalBytes,
                  source, ": the sizes and alignments sum to more than 2^60 bytes (1 EiB); offsets could "
                  "overflow, so the problem is refused");
  }
}

void write_csv(std::ostream& out, const Problem& problem, const Offsets& offsets) {
  bool aligned = std::any_of(problem.buffers.begin(), problem.buffers.end(),
                             [](const Buffer& b) { return b.alignment > 1; });
  out << "id,lower,upper,size" << (aligned ? ",alignment" : "") << ",offset\n";
  for (size_t i = 0; i < problem.buffers.size(); ++i) {
    const Buffer& b = problem.buffers[i];
    out << b.id << ',' << b.lower << ',' << b.upper << ',' << b.size;
    if (aligned) out << ',' << b.alignment;
    out << ',';
    if (i < offsets.size() && offsets[i] != kNoOffset) out << offsets[i];
    out << '\n';
  }
}

std::string to_csv(const Problem& problem, const Offsets& offsets) {
  std::ostringstream out;
  write_csv(out, problem, offsets);
  return out.str();
}

int64_t load(const Problem& problem) {
  // Sweep over +size/-size events; at equal times frees come first, since a
  // buffer ending at t and one starting at t are never alive together.
  std::vector<std::pair<int64_t, int64_t>> events;
  events.reserve(problem.buffers.size() * 2);
  for (const Buffer& b : problem.buffers) {
    events.emplace_back(b.lower, b.size);
    events.emplace_back(b.upper, -b.size);
  }
  std::sort(events.begin(), events.end());  // negative deltas sort first
  int64_t live = 0, most = 0;
  for (auto [time, delta] : events) {
    live += delta;
    most = std::max(most, live);
  }
  return most;
}

int64_t peak(const Problem& problem, const Offsets& offsets) {
  int64_t top = 0;
  for (size_t i = 0; i < problem.buffers.size() && i < offsets.size(); ++i)
    if (offsets[i] != kNoOffset) top = std::max(top, offsets[i] + problem.buffers[i].size);
  return top;
}

}  // namespace memo::plan
