// CSV reading/writing and LOAD.
#include <gtest/gtest.h>

#include <sstream>

#include "core/error.h"
#include "plan/dsa_problem.h"
#include "dsa_test_util.h"

namespace memo::plan {
namespace {

CsvContents parse(const std::string& text) {
  std::istringstream in(text);
  return parse_csv(in, "test.csv");
}

// The message of the InputError that parsing `text` throws ("" if none).
std::string parse_error(const std::string& text) {
  try {
    parse(text);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

// Parsing `text` fails with a message naming "test.csv:<line>:" and `fragment`.
void expect_error(const std::string& text, int line, const std::string& fragment) {
  std::string msg = parse_error(text);
  EXPECT_NE(msg.find("test.csv:" + std::to_string(line) + ":"), std::string::npos) << msg;
  EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
}

TEST(DsaCsv, ReadsMinimallocFormat) {
  CsvContents csv = parse("id,lower,upper,size\nb1,0,3,4\nb2,3,9,4\n");
  ASSERT_EQ(csv.problem.buffers.size(), 2u);
  EXPECT_EQ(csv.problem.buffers[1].id, "b2");
  EXPECT_EQ(csv.problem.buffers[1].lower, 3);
  EXPECT_EQ(csv.problem.buffers[1].upper, 9);
  EXPECT_EQ(csv.problem.buffers[1].size, 4);
  EXPECT_TRUE(csv.offsets.empty());
}

TEST(DsaCsv, ReadsColumnsInAnyOrderWithOffsetsAndAlignment) {
  CsvContents csv = parse("size,id,offset,upper,lower,alignment\n8,x,16,5,1,8\n");
  ASSERT_EQ(csv.problem.buffers.size(), 1u);
  EXPECT_EQ(csv.problem.buffers[0].size, 8);
  EXPECT_EQ(csv.problem.buffers[0].alignment, 8);
  ASSERT_EQ(csv.offsets.size(), 1u);
  EXPECT_EQ(csv.offsets[0], 16);
}

TEST(DsaCsv, WriteThenReadRoundTrips) {
  Problem p = testing::make_problem({{0, 2, 3}, {1, 4, 5, 4}});
  std::ostringstream out;
  write_csv(out, p, {0, 4});
  CsvContents back = parse(out.str());
  ASSERT_EQ(back.problem.buffers.size(), 2u);
  EXPECT_EQ(back.problem.buffers[1].alignment, 4);
  EXPECT_EQ(back.offsets, (Offsets{0, 4}));
}

TEST(DsaCsv, EmptyFileIsAnError) {
  EXPECT_NE(parse_error("").find("empty file"), std::string::npos);
  EXPECT_NE(parse_error("").find("test.csv"), std::string::npos);
}

TEST(DsaCsv, MissingColumnNamesTheColumnAndLine) {
  expect_error("id,lower,upper\nb1,0,3\n", 1, "size");
}

TEST(DsaCsv, ShortRowNamesTheLine) {
  expect_error("id,lower,upper,size\nb1,0,3,4\nb2,0,3\n", 3, "fields");
}

TEST(DsaCsv, NonNumericFieldNamesTheLine) {
  // The blank line 3 still counts.
  expect_error("id,lower,upper,size\nb1,0,3,4\n\nb2,0,x3,4\n", 4, "x3");
}

TEST(DsaCsv, NegativeSizeNamesTheLine) {
  expect_error("id,lower,upper,size\nb1,0,3,-4\n", 2, "negative size");
}

TEST(DsaCsv, EmptyLifetimeNamesTheLine) {
  expect_error("id,lower,upper,size\nb1,3,3,4\n", 2, "lower");
}

TEST(DsaCsv, DuplicateIdNamesTheLine) {
  expect_error("id,lower,upper,size\nb1,0,3,4\nb1,1,2,4\n", 3, "duplicate id");
}

TEST(DsaCsv, UnknownColumnIsAnError) {
  EXPECT_NE(parse_error("id,lower,upper,size,colour\n").find("colour"), std::string::npos);
}

TEST(DsaCsv, MissingFileIsAnInputError) {
  EXPECT_THROW(read_csv("/nonexistent/dir/x.csv"), InputError);
}

TEST(DsaLoad, IsTheMostBytesAliveAtOnce) {
  // b0 and b1 touch at t=3 (half-open), so they are never alive together.
  Problem p = testing::make_problem({{0, 3, 4}, {3, 9, 4}, {0, 9, 4}, {2, 4, 1}});
  EXPECT_EQ(load(p), 9);  // at t=2: b0 + b2 + b3, and at t=3: b1 + b2 + b3
  EXPECT_EQ(load(Problem{}), 0);
}

}  // namespace
}  // namespace memo::plan
