// Bi-level planning: group region instances by signature, pack each group
// once (level 1), then pack the step (level 2).
#include "plan/bilevel.h"

#include <algorithm>
#include <map>

#include "plan/dsa_validate.h"

#include "core/error.h"

namespace memo::plan {

namespace {

// Only requests on the compute stream are planned: the arena reuses bytes in
// host order, which is safe only within one stream's order. The rest go to
// the fallback (a stream-aware caching allocator on CUDA).
bool plannable(const Request& r) { return r.stream == 0; }

// A request stays inside its region when it is freed before the region ends.
bool transient(const RequestTrace& t, const Request& r) {
  return plannable(r) && r.region >= 0 && r.free_time >= 0 &&
         r.free_time <= t.regions[static_cast<size_t>(r.region)].end_time;
}

}  // namespace

Problem region_problem(const RequestTrace& t, int64_t region) {
  Problem p;
  const auto& span = t.regions[static_cast<size_t>(region)];
  for (size_t k = 0; k < t.requests.size(); ++k) {
    const auto& r = t.requests[k];
    if (r.region != region || !transient(t, r)) continue;
    p.buffers.push_back({std::to_string(k), r.alloc_time - span.begin_time, r.free_time - span.begin_time,
                         r.bytes, 1});
  }
  return p;
}

BilevelPlan plan_bilevel(const RequestTrace& t, int64_t alignment, const SolveOptions& options) {
  BilevelPlan plan;
  plan.placements.resize(t.requests.size());
  for (size_t k = 0; k < t.requests.size(); ++k) {
    plan.placements[k].bytes = t.requests[k].bytes;
    plan.placements[k].alloc_time = t.requests[k].alloc_time;
    plan.placements[k].free_time = t.requests[k].free_time;
  }

  // Level 1: one plan per distinct (name, transient sizes in order) signature.
  std::map<std::pair<std::string, std::vector<int64_t>>, size_t> groups;
  std::vector<size_t> group_of(t.regions.size());
  for (size_t r = 0; r < t.regions.size(); ++r) {
    auto p = region_problem(t, static_cast<int64_t>(r));
    std::vector<int64_t> sig;
    for (const auto& b : p.buffers) sig.push_back(b.size), sig.push_back(b.lower), sig.push_back(b.upper);
    auto key = std::make_pair(t.regions[r].name, sig);
    auto it = groups.find(key);
    if (it == groups.end()) {
      Level1Plan l1;
      l1.region = t.regions[r].name;
      l1.problem = p;
      for (auto& b : l1.problem.buffers) b.alignment = alignment;
      if (!l1.problem.buffers.empty()) {
        auto res = solve_bestfit(l1.problem, options);
        if (!res.found) throw Error(cat("memory plan: no packing for region ", l1.region));
        l1.offsets = res.offsets;
        l1.peak = res.peak;
        l1.load = res.load;
      }
      it = groups.emplace(key, plan.level1.size()).first;
      plan.level1.push_back(std::move(l1));
    }
    group_of[r] = it->second;
    plan.level1[it->second].instances++;
  }

  // Level 2: region instances as pseudo-buffers, plus requests that cross
  // regions but are freed within the step.
  std::vector<int64_t> region_buffer(t.regions.size(), -1);
  for (size_t r = 0; r < t.regions.size(); ++r) {
    const auto& l1 = plan.level1[group_of[r]];
    if (l1.peak == 0) continue;
    region_buffer[r] = static_cast<int64_t>(plan.level2.buffers.size());
    plan.level2.buffers.push_back({"region:" + t.regions[r].name + ":" + std::to_string(r),
                                   t.regions[r].begin_time, t.regions[r].end_time + 1, l1.peak, alignment});
  }
  std::vector<int64_t> request_buffer(t.requests.size(), -1);
  for (size_t k = 0; k < t.requests.size(); ++k) {
    const auto& r = t.requests[k];
    if (transient(t, r) || r.free_time < 0 || !plannable(r)) continue;  // level 1, escapes the step, other stream
    request_buffer[k] = static_cast<int64_t>(plan.level2.buffers.size());
    plan.level2.buffers.push_back({std::to_string(k), r.alloc_time, r.free_time, r.bytes, alignment});
  }
  if (!plan.level2.buffers.empty()) {
    auto res = solve_bestfit(plan.level2, options);
    if (!res.found) throw Error("memory plan: no packing for the step");
    plan.level2_offsets = res.offsets;
    plan.arena_bytes = res.peak;
  }

  // Placements, request by request.
  std::vector<size_t> next_in_region(t.regions.size(), 0);
  for (size_t k = 0; k < t.requests.size(); ++k) {
    const auto& r = t.requests[k];
    auto& pl = plan.placements[k];
    if (transient(t, r)) {
      const size_t g = group_of[static_cast<size_t>(r.region)];
      const size_t j = next_in_region[static_cast<size_t>(r.region)]++;
      // A region whose transient requests are all empty has peak 0 and no
      // pseudo-buffer in level 2: its requests take no bytes, offset 0 will do.
      const int64_t rb = region_buffer[static_cast<size_t>(r.region)];
      const int64_t base = rb >= 0 ? plan.level2_offsets[static_cast<size_t>(rb)] : 0;
      pl.kind = Placement::Kind::Arena;
      pl.offset = base + plan.level1[g].offsets[j];
    } else if (request_buffer[k] >= 0) {
      pl.kind = Placement::Kind::Arena;
      pl.offset = plan.level2_offsets[static_cast<size_t>(request_buffer[k])];
    } else {
      pl.kind = Placement::Kind::Fallback;
      plan.fallback_requests++;
    }
  }
  Problem flat;
  Offsets flat_offsets;
  flatten(t, plan, flat, flat_offsets);
  plan.flat_load = load(flat);
  return plan;
}

void flatten(const RequestTrace& t, const BilevelPlan& plan, Problem& problem, Offsets& offsets) {
  problem.buffers.clear();
  offsets.clear();
  for (size_t k = 0; k < t.requests.size(); ++k) {
    const auto& pl = plan.placements[k];
    if (pl.kind != Placement::Kind::Arena) continue;
    const auto& r = t.requests[k];
    problem.buffers.push_back({std::to_string(k), r.alloc_time, r.free_time, r.bytes, 1});
    offsets.push_back(pl.offset);
  }
}

}  // namespace memo::plan

namespace memo::plan {

std::string validate_plan(const BilevelPlan& plan, int64_t alignment) {
  if (plan.arena_bytes < 0) return cat("the arena has a negative size (", plan.arena_bytes, " bytes)");
  Problem flat;
  Offsets offsets;
  int64_t top = 0;
  for (size_t k = 0; k < plan.placements.size(); ++k) {
    const auto& pl = plan.placements[k];
    const std::string what = cat("request ", k);
    if (pl.bytes < 0) return cat(what, " has a negative size (", pl.bytes, " bytes)");
    if (pl.kind != Placement::Kind::Arena) continue;
    if (pl.offset < 0) return cat(what, " is placed at a negative offset (", pl.offset, ")");
    if (alignment > 1 && pl.offset % alignment != 0)
      return cat(what, " is placed at offset ", pl.offset, ", not a multiple of the alignment ", alignment);
    int64_t end = 0;
    if (__builtin_add_overflow(pl.offset, pl.bytes, &end) || end > plan.arena_bytes)
      return cat(what, " (", pl.bytes, " bytes at offset ", pl.offset, ") ends beyond the arena of ",
                 plan.arena_bytes, " bytes");
    if (pl.bytes == 0) continue;  // an empty tensor uses no bytes
    if (!(pl.alloc_time >= 0 && pl.alloc_time < pl.free_time))
      return cat(what, " has no valid lifetime [", pl.alloc_time, ", ", pl.free_time, ")");
    top = std::max(top, end);
    flat.buffers.push_back({std::to_string(k), pl.alloc_time, pl.free_time, pl.bytes, 1});
    offsets.push_back(pl.offset);
  }
  if (top > 0 && plan.arena_bytes != top)
    return cat("the arena is ", plan.arena_bytes, " bytes but its placements need exactly ", top);
  if (top == 0 && plan.arena_bytes != 0)
    return cat("the arena is ", plan.arena_bytes, " bytes but nothing is placed in it");
  const auto v = validate(flat, offsets, plan.arena_bytes);
  if (!v.ok()) return "placements alive at the same time overlap: " + v.summary();
  if (load(flat) != plan.flat_load)
    return cat("LOAD is recorded as ", plan.flat_load, " bytes but the placements give ", load(flat));
  return {};
}

}  // namespace memo::plan
