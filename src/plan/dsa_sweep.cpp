// Sweep best-fit: the buffers are allocated in time order, as an online
// allocator would, each into the smallest free gap that holds it (else on
// top), and freed at their end. O(n log n) whatever the instance, so it is
// the packing best-fit always has in hand before the skyline greedy runs,
// which on 10^6 buffers may not finish within the time limit.
#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "plan/dsa_internal.h"

namespace memo::plan::detail {

namespace {

// Free space below `top_`: maximal gaps [offset, end), by offset and by size.
class FreeSpace {
 public:
  // Takes `size` bytes at a multiple of `alignment`: the smallest gap that
  // holds them (a few candidates are tried when alignment wastes space),
  // else the top (extending the gap just below it, if any).
  int64_t take(int64_t size, int64_t alignment) {
    auto it = by_size_.lower_bound({size, INT64_MIN});
    for (int tries = 0; it != by_size_.end() && tries < 16; ++it, ++tries) {
      const int64_t begin = it->second, end = gaps_.at(begin);
      const int64_t offset = align_up(begin, alignment);
      if (offset + size <= end) {
        erase(begin);
        insert(begin, offset);
        insert(offset + size, end);
        return offset;
      }
    }
    int64_t base = top_;
    if (!gaps_.empty() && std::prev(gaps_.end())->second == top_) {  // a gap reaching the top
      base = std::prev(gaps_.end())->first;
      erase(base);
    }
    const int64_t offset = align_up(base, alignment);
    insert(base, offset);
    top_ = offset + size;
    return offset;
  }

  // Gives [offset, offset + size) back, merged with its neighbours; a gap
  // that reaches the top lowers the top instead.
  void give(int64_t offset, int64_t size) {
    int64_t begin = offset, end = offset + size;
    auto next = gaps_.find(end);
    if (next != gaps_.end()) {
      end = next->second;
      erase(next->first);
    }
    auto after = gaps_.lower_bound(begin);
    if (after != gaps_.begin() && std::prev(after)->second == begin) {
      begin = std::prev(after)->first;
      erase(begin);
    }
    if (end == top_)
      top_ = begin;
    else
      insert(begin, end);
  }

 private:
  void insert(int64_t begin, int64_t end) {
    if (end <= begin) return;
    gaps_[begin] = end;
    by_size_.insert({end - begin, begin});
  }
  void erase(int64_t begin) {
    auto it = gaps_.find(begin);
    by_size_.erase({it->second - begin, begin});
    gaps_.erase(it);
  }

  std::map<int64_t, int64_t> gaps_;
  std::set<std::pair<int64_t, int64_t>> by_size_;  // (size, offset)
  int64_t top_ = 0;
};

}  // namespace

Offsets sweep_fit(const Problem& problem) {
  const auto& bufs = problem.buffers;
  Offsets offsets(bufs.size(), kNoOffset);
  // (time, 0 = free / 1 = allocate, buffer): at equal times frees come first,
  // since lifetimes are half-open.
  std::vector<std::tuple<int64_t, int, size_t>> events;
  events.reserve(2 * bufs.size());
  for (size_t b = 0; b < bufs.size(); ++b) {
    events.emplace_back(bufs[b].lower, 1, b);
    events.emplace_back(bufs[b].upper, 0, b);
  }
  std::sort(events.begin(), events.end());
  FreeSpace space;
  for (const auto& [time, allocate, b] : events) {
    const Buffer& buf = bufs[b];
    if (buf.size == 0) {  // takes no space; offset 0 lies inside no other buffer
      offsets[b] = 0;
      continue;
    }
    if (allocate)
      offsets[b] = space.take(buf.size, buf.alignment);
    else if (offsets[b] != kNoOffset)
      space.give(offsets[b], buf.size);
  }
  return offsets;
}

}  // namespace memo::plan::detail
