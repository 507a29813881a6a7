// Bi-level memory plan (docs/design.md section 6) from one profiled step: level 1
// packs the requests that live and die inside a region (a layer's forward, a
// layer's backward, the loss...) once per distinct region signature, and
// every instance reuses it; level 2 packs the whole step with each region
// instance as one pseudo-buffer of its level-1 peak, beside the requests that
// cross regions. Pure C++: the input is a plain request trace.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "plan/dsa_problem.h"
#include "plan/dsa_solver.h"

namespace memo::plan {

// One allocation request of the profiled step, in request order. Times come
// from one counter that ticks at every allocation, free and region boundary.
struct Request {
  int64_t bytes = 0;
  int64_t alloc_time = 0;
  int64_t free_time = -1;  // -1: still alive when the step ended
  int64_t region = -1;     // index into RequestTrace::regions, -1: outside any
  int64_t stream = 0;      // 0: the step's compute stream; 1, 2...: other streams, by first use
};

struct RegionSpan {
  std::string name;  // "layer_fwd", "layer_bwd", "loss", "embed", "optimizer"
  int64_t begin_time = 0;
  int64_t end_time = 0;
};

struct RequestTrace {
  std::vector<Request> requests;
  std::vector<RegionSpan> regions;
  int64_t end_time = 0;
};

// Where the k-th request of a planned step goes.
struct Placement {
  enum class Kind { Arena, Fallback };
  Kind kind = Kind::Fallback;
  int64_t bytes = 0;   // the size the plan expects
  int64_t offset = 0;  // byte offset in the arena
  int64_t alloc_time = 0;   // the request's lifetime in the profiled step, [alloc_time, free_time):
  int64_t free_time = -1;   // what validate_plan checks arena placements against (-1: never freed)
};

struct Level1Plan {
  std::string region;     // region name
  int64_t instances = 0;  // how many region instances share it
  Problem problem;        // the transient requests of one instance
  Offsets offsets;
  int64_t peak = 0;
  int64_t load = 0;
};

struct BilevelPlan {
  std::vector<Placement> placements;  // one per request, in request order
  std::vector<Level1Plan> level1;
  Problem level2;                     // pseudo-buffers and crossing requests
  Offsets level2_offsets;
  int64_t arena_bytes = 0;            // the level-2 peak
  int64_t flat_load = 0;              // LOAD of every arena request, flattened: a lower bound
  int64_t fallback_requests = 0;      // requests the plan leaves to the fallback
};

// Builds the plan with the best-fit solver; offsets are multiples of
// `alignment`. Give options.node_limit for a plan that is the same on every
// run (a time limit makes the polishing, and so the plan, timing-dependent).
BilevelPlan plan_bilevel(const RequestTrace& trace, int64_t alignment, const SolveOptions& options);

// Every arena request as one flat DSA problem with absolute offsets, for the
// independent validator.
void flatten(const RequestTrace& trace, const BilevelPlan& plan, Problem& problem, Offsets& offsets);

// Whether a plan is safe to arm, whatever its origin (a cached plan is a file
// anyone can edit): the arena is positive when anything is placed in it and
// exactly the placements' peak; every arena placement has bytes >= 0, an
// offset >= 0 that is a multiple of `alignment`, ends within the arena
// (checked int64) and has a lifetime alloc_time < free_time; no two arena
// placements alive together share a byte (the independent DSA validator);
// flat_load is their LOAD. Returns "" when safe, else the first problem.
std::string validate_plan(const BilevelPlan& plan, int64_t alignment);

// One region instance's transient requests as a DSA problem (times relative).
Problem region_problem(const RequestTrace& trace, int64_t region);

}  // namespace memo::plan
