// The validator (the oracle of every solver test) catches each kind of violation.
#include <gtest/gtest.h>

#include "dsa_test_util.h"
#include "plan/dsa_validate.h"

namespace memo::plan {
namespace {

using testing::make_problem;

TEST(DsaValidate, AcceptsAValidPacking) {
  Problem p = make_problem({{0, 4, 2}, {2, 6, 3}});
  Validation v = validate(p, {0, 2}, 5);
  EXPECT_TRUE(v.ok()) << v.summary();
  EXPECT_EQ(v.peak, 5);
}

TEST(DsaValidate, CatchesOverlapInTimeAndSpace) {
  Problem p = make_problem({{0, 4, 2}, {2, 6, 3}});
  Validation v = validate(p, {0, 1});
  EXPECT_FALSE(v.ok());
  EXPECT_TRUE(v.has(ViolationKind::kOverlap));
  EXPECT_EQ(v.violation_count, 1u);
}

TEST(DsaValidate, AllowsTouchingLifetimes) {
  Problem p = make_problem({{0, 3, 4}, {3, 6, 4}});  // [0,3) and [3,6) never coexist
  EXPECT_TRUE(validate(p, {0, 0}).ok());
}

TEST(DsaValidate, AllowsTouchingInSpace) {
  Problem p = make_problem({{0, 5, 4}, {1, 6, 4}});
  EXPECT_TRUE(validate(p, {0, 4}).ok());  // [0,4) and [4,8)
  EXPECT_FALSE(validate(p, {0, 3}).ok());
}

TEST(DsaValidate, AllowsSameSpaceAtDifferentTimes) {
  Problem p = make_problem({{0, 2, 8}, {5, 7, 8}});
  EXPECT_TRUE(validate(p, {0, 0}).ok());
}

TEST(DsaValidate, CatchesMisalignment) {
  Problem p = make_problem({{0, 2, 4, 8}});
  EXPECT_TRUE(validate(p, {16}).ok());
  Validation v = validate(p, {4});
  EXPECT_TRUE(v.has(ViolationKind::kMisaligned));
}

TEST(DsaValidate, CatchesOverCapacity) {
  Problem p = make_problem({{0, 2, 4}, {0, 2, 4}});
  EXPECT_TRUE(validate(p, {0, 4}, 8).ok());
  Validation v = validate(p, {0, 4}, 7);
  EXPECT_TRUE(v.has(ViolationKind::kOverCapacity));
}

TEST(DsaValidate, CatchesMissingOffset) {
  Problem p = make_problem({{0, 2, 4}, {0, 2, 4}});
  EXPECT_TRUE(validate(p, {0, kNoOffset}).has(ViolationKind::kMissingOffset));
  EXPECT_TRUE(validate(p, {0}).has(ViolationKind::kMissingOffset));  // too few offsets
}

TEST(DsaValidate, ReportsEveryOverlappingPair) {
  Problem p = make_problem({{0, 2, 4}, {0, 2, 4}, {0, 2, 4}});
  EXPECT_EQ(validate(p, {0, 0, 0}).violation_count, 3u);
}

}  // namespace
}  // namespace memo::plan
