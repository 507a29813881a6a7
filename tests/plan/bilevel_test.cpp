// The bi-level plan on hand-made request traces (no torch): the corner cases
// a profiled step rarely shows on purpose.
#include <gtest/gtest.h>

#include "plan/bilevel.h"
#include "plan/dsa_validate.h"

namespace memo::plan {
namespace {

SolveOptions deterministic() {
  SolveOptions o;
  o.node_limit = 50;
  return o;
}

TEST(Bilevel, ARegionWithOnlyEmptyRequestsGetsOffsetZero) {
  // Region 0 allocates and frees one empty tensor (level-1 peak 0, so no
  // pseudo-buffer in level 2); region 1 a real one. Time ticks at every event.
  RequestTrace t;
  t.regions = {{"embed", 0, 3}, {"layer_fwd", 4, 7}};
  t.requests = {{0, 1, 2, 0, 0}, {256, 5, 6, 1, 0}};
  t.end_time = 8;
  const auto plan = plan_bilevel(t, 64, deterministic());
  ASSERT_EQ(plan.placements.size(), 2u);
  EXPECT_EQ(plan.placements[0].kind, Placement::Kind::Arena);
  EXPECT_EQ(plan.placements[0].offset, 0);
  EXPECT_EQ(plan.placements[1].kind, Placement::Kind::Arena);
  EXPECT_EQ(plan.arena_bytes, 256);
}

TEST(Bilevel, RequestsOnAnotherStreamAreLeftToTheFallback) {
  RequestTrace t;
  t.regions = {{"layer_fwd", 0, 5}};
  t.requests = {{128, 1, 2, 0, 0}, {128, 3, 4, 0, 1}};
  t.end_time = 6;
  const auto plan = plan_bilevel(t, 64, deterministic());
  EXPECT_EQ(plan.placements[0].kind, Placement::Kind::Arena);
  EXPECT_EQ(plan.placements[1].kind, Placement::Kind::Fallback);
  EXPECT_EQ(plan.fallback_requests, 1);
}

TEST(Bilevel, PlansOfIdenticalTracesAreIdentical) {
  // Three layer regions with the same signature and one crossing request.
  RequestTrace t;
  int64_t clock = 0;
  for (int layer = 0; layer < 3; ++layer) {
    const int64_t begin = clock++;
    t.requests.push_back({192, clock++, -1, static_cast<int64_t>(t.regions.size()), 0});
    t.requests.push_back({0, clock++, -1, static_cast<int64_t>(t.regions.size()), 0});
    t.requests[t.requests.size() - 1].free_time = clock++;
    t.requests[t.requests.size() - 2].free_time = clock++;
    t.regions.push_back({"layer_fwd", begin, clock++});
  }
  t.requests.push_back({64, clock++, -1, -1, 0});
  t.requests.back().free_time = clock++;
  t.end_time = clock;
  const auto a = plan_bilevel(t, 64, deterministic());
  const auto b = plan_bilevel(t, 64, deterministic());
  ASSERT_EQ(a.placements.size(), b.placements.size());
  for (size_t k = 0; k < a.placements.size(); ++k) {
    EXPECT_EQ(a.placements[k].offset, b.placements[k].offset) << k;
    EXPECT_EQ(a.placements[k].offset % 64, 0) << k;
  }
  Problem flat;
  Offsets offsets;
  flatten(t, a, flat, offsets);
  EXPECT_TRUE(validate(flat, offsets, a.arena_bytes).ok());
  EXPECT_EQ(a.level1.size(), 1u) << "the three layers share one level-1 plan";
}

}  // namespace
}  // namespace memo::plan
