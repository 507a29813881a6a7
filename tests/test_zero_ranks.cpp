// ZeRO stages 1-3 over real Gloo ranks (memo_zero_worker, tests/dist/): the
// sharded optimizer and weight source against the unsharded AdamW in float64,
// checkpoints written by 4 ranks loaded on 2 and on 1, a rank killed while a
// checkpoint is saved.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "dist/context.h"
#include "rank_runner.h"
#include "train/checkpoint.h"

namespace {

namespace fs = std::filesystem;
using memo::testing::env_ranks;
using memo::testing::free_port;
using memo::testing::Process;
using memo::testing::ProcessResult;
using memo::testing::contains;
using memo::testing::describe;
using memo::testing::run_processes;

#define REQUIRE_DIST() \
  if (!memo::dist::available()) GTEST_SKIP() << memo::dist::unavailable_reason()

std::vector<std::string> worker(std::vector<std::string> args) {
  args.insert(args.begin(), MEMO_ZERO_WORKER);
  return args;
}

// Every process exits 0 and says `marker`.
void expect_all_ok(const std::vector<ProcessResult>& rs, const std::string& marker) {
  for (size_t r = 0; r < rs.size(); ++r) {
    EXPECT_EQ(rs[r].code, 0) << describe(rs);
    EXPECT_TRUE(contains(rs[r].output, marker)) << describe(rs);
  }
}

std::vector<ProcessResult> ranks(int world, const std::vector<std::string>& args) {
  return run_processes(env_ranks(world, worker(args), free_port()), 300);
}

// One process with no launcher variables: a world of one.
std::vector<ProcessResult> single(const std::vector<std::string>& args) {
  return run_processes({Process{worker(args), {{"OMP_NUM_THREADS", "1"}}}}, 300);
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("memo_zero_" + std::to_string(::getpid()) + "_" + std::to_string(free_port()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

TEST(ZeroRanks, Stage1TwoRanks) {
  REQUIRE_DIST();
  expect_all_ok(ranks(2, {"optimizer", "--stage", "1"}), "optimizer ok (stage 1");
}

TEST(ZeroRanks, Stage2TwoRanks) {
  REQUIRE_DIST();
  expect_all_ok(ranks(2, {"optimizer", "--stage", "2"}), "optimizer ok (stage 2");
}

TEST(ZeroRanks, Stage3TwoRanks) {
  REQUIRE_DIST();
  expect_all_ok(ranks(2, {"optimizer", "--stage", "3"}), "optimizer ok (stage 3");
}

// Three ranks: every unit's shards are padded.
TEST(ZeroRanks, Stage3ThreeRanksPadded) {
  REQUIRE_DIST();
  expect_all_ok(ranks(3, {"optimizer", "--stage", "3", "--steps", "2"}), "optimizer ok (stage 3");
}

TEST(ZeroRanks, Stage2FourRanksDp2Sp2) {
  REQUIRE_DIST();
  expect_all_ok(ranks(4, {"optimizer", "--stage", "2", "--sp", "2", "--steps", "2"}),
                "optimizer ok (stage 2, world 4 = dp 2 x sp 2");
}

// Saved by 4 ranks under stage 3 (dp 2 x sp 2); loaded on 2 ranks (stage 2),
// on 1 rank (stage 1) and by today's single-process load_checkpoint: the same
// weights, moments and step count, and the next step continues the run.
TEST(ZeroRanks, CheckpointFromFourRanksLoadsOnTwoAndOne) {
  REQUIRE_DIST();
  TempDir out;
  const std::string dir = out.path.string();
  expect_all_ok(ranks(4, {"ckpt-save", "--stage", "3", "--sp", "2", "--steps", "2", "--dir", dir}), "saved");
  EXPECT_TRUE(fs::exists(out.path / "checkpoints" / "step-00000002" / "optimizer.safetensors"));
  expect_all_ok(ranks(2, {"ckpt-load", "--stage", "2", "--steps", "2", "--dir", dir, "--writer-world", "4"}),
                "loaded into shards (stage 2");
  expect_all_ok(single({"ckpt-load", "--stage", "1", "--steps", "2", "--dir", dir, "--writer-world", "4"}),
                "loaded into shards (stage 1");
  expect_all_ok(single({"ckpt-load", "--stage", "0", "--steps", "2", "--dir", dir, "--writer-world", "4"}),
                "loaded unsharded");
}

// A rank dies while step 2's checkpoint is saved: every other rank fails
// (exit 1), step 2 never appears, and step 1's checkpoint loads whole with
// today's code.
void crash_during_save(int world, int victim) {
  TempDir out;
  const std::string dir = out.path.string();
  const auto rs = run_processes(
      env_ranks(world, worker({"ckpt-crash", "--stage", "2", "--dir", dir, "--victim", std::to_string(victim),
                               "--timeout-ms", "5000"}),
                free_port()),
      120);
  for (int r = 0; r < world; ++r) {
    const auto& p = rs[static_cast<size_t>(r)];
    if (r == victim) {
      EXPECT_TRUE(contains(p.output, "dies during the second save")) << describe(rs);
      EXPECT_NE(p.code, 0) << describe(rs);
      EXPECT_NE(p.code, 4) << describe(rs);
    } else {
      EXPECT_EQ(p.code, 1) << describe(rs);
    }
  }
  EXPECT_FALSE(fs::exists(out.path / "checkpoints" / "step-00000002")) << describe(rs);
  EXPECT_EQ(fs::path(memo::train::find_checkpoint(dir)).filename(), "step-00000001");
  expect_all_ok(single({"ckpt-load", "--stage", "0", "--steps", "1", "--dir", dir, "--writer-world",
                        std::to_string(world)}),
                "loaded unsharded");
}

TEST(ZeroRanks, WriterKilledMidSaveLeavesThePreviousCheckpoint) {
  REQUIRE_DIST();
  crash_during_save(2, 0);
}

TEST(ZeroRanks, OtherRankKilledMidSaveLeavesThePreviousCheckpoint) {
  REQUIRE_DIST();
  crash_during_save(3, 2);
}

}  // namespace
