// The skyline greedy with pre-placed buffers, and the peak anchors that
// pre-place the buffers alive at the time of maximum load.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "dsa_test_util.h"
#include "plan/dsa_internal.h"
#include "plan/dsa_solver.h"
#include "plan/dsa_validate.h"

namespace memo::plan {
namespace {

using testing::make_problem;
using testing::random_problem;

std::vector<int> identity_order(const Problem& p) {
  std::vector<int> order(p.buffers.size());
  std::iota(order.begin(), order.end(), 0);
  return order;
}

Offsets fit(const Problem& p, const Offsets* fixed, const std::vector<int>& order) {
  return detail::skyline_fit(p, detail::make_sections(p), detail::rank_of(order), fixed);
}

// A random instance with a random subset of a valid packing pre-placed (the
// rest kNoOffset), and a random order for the rest.
struct Case {
  Problem problem;
  Offsets fixed;
  std::vector<int> order;
};
Case random_case(std::mt19937_64& rng, int trial) {
  Case c;
  c.problem = random_problem(rng, 5 + trial % 40, 25, 60, /*aligned=*/trial % 3 == 0);
  c.order = identity_order(c.problem);
  std::shuffle(c.order.begin(), c.order.end(), rng);
  // Any valid packing will do as the source of the pre-placed offsets; the
  // greedy's own, from another order, is one.
  std::vector<int> other = c.order;
  std::shuffle(other.begin(), other.end(), rng);
  c.fixed = fit(c.problem, nullptr, other);
  std::bernoulli_distribution keep(trial % 2 == 0 ? 0.3 : 0.7);
  for (int64_t& offset : c.fixed)
    if (!keep(rng)) offset = kNoOffset;
  return c;
}

TEST(DsaSkylineFit, NeverMovesAPrePlacedBuffer) {
  std::mt19937_64 rng(21);
  for (int trial = 0; trial < 300; ++trial) {
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    Case c = random_case(rng, trial);
    Offsets offsets = fit(c.problem, &c.fixed, c.order);
    for (size_t b = 0; b < offsets.size(); ++b)
      if (c.fixed[b] != kNoOffset) EXPECT_EQ(offsets[b], c.fixed[b]) << "buffer " << b;
  }
}

TEST(DsaSkylineFit, PackingAroundPrePlacedBuffersValidates) {
  std::mt19937_64 rng(22);
  for (int trial = 0; trial < 300; ++trial) {
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    Case c = random_case(rng, trial);
    Validation v = validate(c.problem, fit(c.problem, &c.fixed, c.order));
    EXPECT_TRUE(v.ok()) << v.summary();
  }
}

TEST(DsaSkylineFit, FillsTheHoleBelowAPrePlacedBuffer) {
  // Buffer 0 is pinned at offset 2 for the whole time; the two short ones
  // fit side by side in the hole below it, the long one goes on top.
  Problem p = make_problem({{0, 10, 4}, {0, 5, 2}, {5, 10, 2}, {0, 10, 3}});
  Offsets fixed = {2, kNoOffset, kNoOffset, kNoOffset};
  Offsets offsets = fit(p, &fixed, identity_order(p));
  EXPECT_EQ(offsets, (Offsets{2, 0, 0, 6}));
}

TEST(DsaSkylineFit, BuildsAroundAPrePlacedBufferInTheMiddleOfTime) {
  // Buffer 0 (time [3, 6)) is pinned at offset 0: the long-lived buffer 1
  // cannot go below it and lands on top; buffers 2 and 3 use the floor
  // before and after it.
  Problem p = make_problem({{3, 6, 5}, {0, 9, 2}, {0, 3, 4}, {6, 9, 4}});
  Offsets fixed = {0, kNoOffset, kNoOffset, kNoOffset};
  Offsets offsets = fit(p, &fixed, identity_order(p));
  EXPECT_EQ(offsets, (Offsets{0, 5, 0, 0}));
  EXPECT_TRUE(validate(p, offsets).ok());
}

TEST(DsaSkylineFit, KeepsClearOfAZeroSizePrePlacedBuffer) {
  // The validator counts a zero-size buffer strictly inside another as an
  // overlap, so the size-5 buffer may not straddle offset 3.
  Problem p = make_problem({{0, 4, 0}, {0, 4, 5}});
  Offsets fixed = {3, kNoOffset};
  Offsets offsets = fit(p, &fixed, identity_order(p));
  EXPECT_TRUE(validate(p, offsets).ok()) << validate(p, offsets).summary();
  EXPECT_EQ(offsets[1], 3);
}

TEST(DsaSkylineFit, NothingPrePlacedIsThePlainGreedy) {
  std::mt19937_64 rng(23);
  for (int trial = 0; trial < 50; ++trial) {
    Problem p = random_problem(rng, 30, 20, 50, trial % 2 == 0);
    std::vector<int> order = identity_order(p);
    std::shuffle(order.begin(), order.end(), rng);
    Offsets none(p.buffers.size(), kNoOffset);
    EXPECT_EQ(fit(p, &none, order), fit(p, nullptr, order)) << "trial " << trial;
  }
}

TEST(DsaPeakAnchors, StackExactlyTheBuffersAliveAtMaximumLoad) {
  std::mt19937_64 rng(24);
  for (int trial = 0; trial < 100; ++trial) {
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    Problem p = random_problem(rng, 3 + trial % 30, 20, 50);
    int64_t most = load(p);
    for (const Offsets& fixed : detail::peak_anchors(p, detail::make_sections(p))) {
      // The pinned buffers are alive together (at one common time), so they
      // are disjoint in space, and their sizes sum to LOAD: they fill [0, LOAD).
      int64_t lower = INT64_MIN, upper = INT64_MAX, total = 0, top = 0;
      for (size_t b = 0; b < p.buffers.size(); ++b) {
        if (fixed[b] == kNoOffset) continue;
        lower = std::max(lower, p.buffers[b].lower);
        upper = std::min(upper, p.buffers[b].upper);
        total += p.buffers[b].size;
        top = std::max(top, fixed[b] + p.buffers[b].size);
      }
      EXPECT_LT(lower, upper);
      EXPECT_EQ(total, most);
      EXPECT_EQ(top, most);
      EXPECT_FALSE(validate(p, fixed).has(ViolationKind::kOverlap));
    }
  }
}

TEST(DsaPeakAnchors, FirstAnchorPutsTheLatestEndAtTheBottom) {
  Problem p = make_problem({{0, 4, 1}, {1, 9, 2}, {2, 6, 3}, {7, 8, 1}});
  Offsets fixed = detail::peak_anchors(p, detail::make_sections(p)).at(0);
  // Alive at the maximum (time 2 or 3, load 6): buffers 0, 1, 2.
  EXPECT_EQ(fixed, (Offsets{5, 0, 2, kNoOffset}));
}

TEST(DsaBestFit, AnchoredRunPacksAtLoadWhereNoPlainOrderDoes) {
  // Found by random search: none of the 7 plain orders packs it below 17;
  // runs 8 to 10 are the anchored ones, and one of them reaches LOAD (15).
  Problem p = make_problem({{4, 7, 2}, {3, 5, 2}, {0, 1, 1}, {1, 6, 1}, {0, 7, 1},
                            {6, 8, 5}, {3, 5, 2}, {3, 8, 6}, {1, 4, 3}});
  SolveOptions o;
  o.node_limit = 10;
  SolveResult r = solve_bestfit(p, o);
  EXPECT_EQ(r.peak, 15);
  EXPECT_EQ(r.status, Status::kOptimal);
  EXPECT_TRUE(validate(p, r.offsets).ok());
}

}  // namespace
}  // namespace memo::plan
