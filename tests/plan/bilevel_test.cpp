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

// Two layer regions, each with two overlapping transients, and a request
// crossing them: a small plan with arena placements that share bytes over time.
RequestTrace two_layers() {
  RequestTrace t;
  int64_t clock = 0;
  for (int layer = 0; layer < 2; ++layer) {
    const int64_t begin = clock++;
    const auto region = static_cast<int64_t>(t.regions.size());
    t.requests.push_back({256, clock++, -1, region, 0});
    t.requests.push_back({128, clock++, -1, region, 0});
    t.requests[t.requests.size() - 2].free_time = clock++;
    t.requests[t.requests.size() - 1].free_time = clock++;
    t.regions.push_back({"layer_fwd", begin, clock++});
  }
  t.requests.push_back({512, clock++, -1, -1, 0});
  t.requests.back().free_time = clock++;
  t.end_time = clock;
  return t;
}

TEST(ValidatePlan, AcceptsWhatThePlannerMakes) {
  const auto plan = plan_bilevel(two_layers(), 64, deterministic());
  EXPECT_EQ(validate_plan(plan, 64), "");
}

TEST(ValidatePlan, NamesEveryWayAnEditedPlanIsUnsafe) {
  const auto good = plan_bilevel(two_layers(), 64, deterministic());
  ASSERT_EQ(good.placements[0].kind, Placement::Kind::Arena);
  struct Case {
    const char* expect;
    void (*edit)(BilevelPlan&);
  };
  const Case cases[] = {
      {"negative offset", [](BilevelPlan& p) { p.placements[0].offset = -64; }},
      {"ends beyond the arena", [](BilevelPlan& p) { p.placements[0].offset = p.arena_bytes; }},
      {"ends beyond the arena", [](BilevelPlan& p) { p.placements[0].offset = INT64_MAX - 63; }},  // overflows
      {"not a multiple of the alignment", [](BilevelPlan& p) { p.placements[0].offset += 8; }},
      {"negative size", [](BilevelPlan& p) { p.placements[1].bytes = -1; }},
      {"negative size", [](BilevelPlan& p) { p.arena_bytes = -1; }},
      {"ends beyond the arena", [](BilevelPlan& p) { p.arena_bytes = 64; }},
      {"need exactly", [](BilevelPlan& p) { p.arena_bytes *= 1024; }},
      {"no valid lifetime", [](BilevelPlan& p) { p.placements[0].free_time = p.placements[0].alloc_time; }},
      {"overlap", [](BilevelPlan& p) {
         for (auto& pl : p.placements) pl.offset = 0;
       }},
      {"LOAD is recorded", [](BilevelPlan& p) { p.flat_load += 1; }},
  };
  for (const auto& c : cases) {
    BilevelPlan p = good;
    c.edit(p);
    const auto problem = validate_plan(p, 64);
    EXPECT_NE(problem.find(c.expect), std::string::npos) << "expected \"" << c.expect << "\", got \"" << problem << "\"";
  }
}

}  // namespace
}  // namespace memo::plan
