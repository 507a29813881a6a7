// CSV reading/writing for DSA problems and the two basic measures, LOAD and
// peak. The reader is strict: every malformed line is an InputError that names
// the source and the 1-based line number.
#include "plan/dsa_problem.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <map>
#include <optional>
#include <ostream>
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

enum Column { kId, kLower, kUpper, kSize, kAlignment, kOffset, kColumnCount };
const char* const kColumnNames[kColumnCount] = {"id", "lower", "upper", "size", "alignment",
                                                "offset"};

}  // namespace

CsvContents parse_csv(std::istream& in, const std::string& source) {
  std::string line;
  int64_t line_no = 0;
  auto where = [&] { return cat(source, ":", line_no, ": "); };

  // Header: skip leading blank lines, then map column names to positions.
  bool have_header = false;
  while (!have_header && std::getline(in, line)) {
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
    require_input(it != std::end(kColumnNames), where(), "unknown column '", name,
                  "' (expected id, lower, upper, size, alignment, offset)");
    auto column = static_cast<size_t>(it - std::begin(kColumnNames));
    require_input(!position[column], where(), "duplicate column '", name, "'");
    position[column] = i;
  }
  for (int c = kId; c <= kSize; ++c)
    require_input(position[c].has_value(), where(), "missing column '", kColumnNames[c],
                  "' in the header (need id,lower,upper,size)");

  CsvContents result;
  std::unordered_set<std::string> seen_ids;
  while (std::getline(in, line)) {
    ++line_no;
    if (trim(line).empty()) continue;
    auto fields = split(line);
    require_input(fields.size() == header.size(), where(), "expected ", header.size(),
                  " fields, got ", fields.size());
    auto number = [&](Column c) -> std::optional<int64_t> {
      if (!position[c]) return std::nullopt;
      std::string_view text = fields[*position[c]];
      int64_t value = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
      require_input(ec == std::errc() && end == text.data() + text.size(), where(), "column '",
                    kColumnNames[c], "': '", text, "' is not an integer");
      return value;
    };
    Buffer b;
    b.id = std::string(fields[*position[kId]]);
    require_input(!b.id.empty(), where(), "empty id");
    require_input(seen_ids.insert(b.id).second, where(), "duplicate id '", b.id, "'");
    b.lower = *number(kLower);
    b.upper = *number(kUpper);
    b.size = *number(kSize);
    require_input(b.lower < b.upper, where(), "lower (", b.lower, ") must be < upper (",
                  b.upper, ")");
    require_input(b.size >= 0, where(), "negative size ", b.size);
    if (auto a = number(kAlignment)) {
      require_input(*a >= 1, where(), "alignment must be >= 1, got ", *a);
      b.alignment = *a;
    }
    if (position[kOffset]) {
      bool empty = fields[*position[kOffset]].empty();  // empty field: not placed
      int64_t offset = empty ? kNoOffset : *number(kOffset);
      require_input(empty || offset >= 0, where(), "negative offset ", offset);
      result.offsets.push_back(offset);
    }
    result.problem.buffers.push_back(std::move(b));
  }
  return result;
}

CsvContents read_csv(const std::string& path) {
  std::ifstream in(path);
  require_input(in.good(), "cannot open '", path, "'");
  return parse_csv(in, path);
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

void write_csv(const std::string& path, const Problem& problem, const Offsets& offsets) {
  std::ofstream out(path);
  require_input(out.good(), "cannot write '", path, "'");
  write_csv(out, problem, offsets);
  if (!out.good()) throw Error(cat("writing '", path, "' failed"));
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
