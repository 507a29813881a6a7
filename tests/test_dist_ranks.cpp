// Real ranks over Gloo on this host: memo_dist_worker scenarios and `memo
// train` started as 2-4 processes with RANK/WORLD_SIZE/MASTER_* (and once
// through torchrun --no-python), each rank's exit code and output checked.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "cli_runner.h"
#include "dist/context.h"
#include "rank_runner.h"

namespace {

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
  args.insert(args.begin(), MEMO_DIST_WORKER);
  return args;
}

std::vector<std::string> memo_train(std::vector<std::string> args) {
  args.insert(args.begin(), {MEMO_BINARY, "train"});
  return args;
}

void expect_all_ok(const std::vector<ProcessResult>& rs, const std::string& marker) {
  for (size_t r = 0; r < rs.size(); ++r) {
    EXPECT_EQ(rs[r].code, 0) << describe(rs);
    EXPECT_TRUE(contains(rs[r].output, "rank " + std::to_string(r) + ": " + marker)) << describe(rs);
  }
}

TEST(DistRanks, LayoutsTwoRanks) {
  REQUIRE_DIST();
  expect_all_ok(run_processes(env_ranks(2, worker({"layouts", "--sp", "2"}), free_port()), 120), "layouts ok");
}

TEST(DistRanks, LayoutsFourRanksSp4ReplicatesKvHeads) {
  REQUIRE_DIST();
  expect_all_ok(run_processes(env_ranks(4, worker({"layouts", "--sp", "4"}), free_port()), 120), "layouts ok");
}

TEST(DistRanks, LayoutsFourRanksDp2Sp2) {
  REQUIRE_DIST();
  const auto rs = run_processes(env_ranks(4, worker({"layouts", "--sp", "2"}), free_port()), 120);
  expect_all_ok(rs, "layouts ok (world 4 = dp 2 x sp 2");
  EXPECT_TRUE(contains(rs[3].output, "sp group sp1")) << describe(rs);
}

TEST(DistRanks, CollectivesTwoRanks) {
  REQUIRE_DIST();
  expect_all_ok(run_processes(env_ranks(2, worker({"collectives"}), free_port()), 120), "collectives ok");
}

TEST(DistRanks, CollectivesFourRanksDp2Sp2) {
  REQUIRE_DIST();
  expect_all_ok(run_processes(env_ranks(4, worker({"collectives", "--sp", "2"}), free_port()), 120),
                "collectives ok (world 4 = dp 2 x sp 2");
}

// A rank dies while the others wait in a collective: each of them exits 1 within
// the timeout (here at once: the sockets close) naming it.
TEST(DistRanks, DeadRankIsNamed) {
  REQUIRE_DIST();
  const auto rs = run_processes(env_ranks(3, worker({"die", "--timeout-ms", "5000"}), free_port()), 60);
  EXPECT_EQ(rs[2].code, 7) << describe(rs);
  for (int r : {0, 1}) {
    EXPECT_EQ(rs[static_cast<size_t>(r)].code, 1) << describe(rs);
    EXPECT_TRUE(contains(rs[static_cast<size_t>(r)].output, "from rank 2 (died or frozen)")) << describe(rs);
    EXPECT_TRUE(contains(rs[static_cast<size_t>(r)].output, "all_to_all (collective #5)")) << describe(rs);
    EXPECT_LT(rs[static_cast<size_t>(r)].seconds, 5 + 20) << describe(rs);
  }
}

// A rank hangs outside communication: the others time out after
// --timeout-ms and name it as alive but behind.
TEST(DistRanks, HungRankIsNamed) {
  REQUIRE_DIST();
  const auto rs = run_processes(env_ranks(2, worker({"hang", "--timeout-ms", "5000"}), free_port()), 60, {1});
  EXPECT_TRUE(rs[1].killed) << describe(rs);
  EXPECT_EQ(rs[0].code, 1) << describe(rs);
  EXPECT_TRUE(contains(rs[0].output, "rank 1 is alive but has issued 4 of the 5 collectives")) << describe(rs);
  EXPECT_GE(rs[0].seconds, 5.0) << describe(rs);  // it waited for the timeout
  EXPECT_LT(rs[0].seconds, 5 + 20) << describe(rs);
}

// A frozen rank (SIGSTOP: no thread of it runs) stops beating.
TEST(DistRanks, FrozenRankIsNamed) {
  REQUIRE_DIST();
  const auto rs = run_processes(env_ranks(2, worker({"freeze", "--timeout-ms", "3000"}), free_port()), 60, {1});
  EXPECT_TRUE(rs[1].killed) << describe(rs);
  EXPECT_EQ(rs[0].code, 1) << describe(rs);
  EXPECT_TRUE(contains(rs[0].output, "from rank 1 (died or frozen)")) << describe(rs);
  EXPECT_LT(rs[0].seconds, 3 + 20) << describe(rs);
}

TEST(DistRanks, MissingRankIsNamedAtTheJoin) {
  REQUIRE_DIST();
  auto ranks = env_ranks(3, worker({"collectives", "--timeout-ms", "2000"}), free_port());
  ranks.pop_back();  // rank 2 never starts
  const auto rs = run_processes(ranks, 60);
  for (const auto& r : rs) {
    EXPECT_EQ(r.code, 1) << describe(rs);
    EXPECT_TRUE(contains(r.output, "rank 2 of 3 did not join within 2 s")) << describe(rs);
  }
}

// A bad mesh exits 2 on every rank before any store or collective: nothing
// listens at MASTER_PORT, so a rank that tried to reach it would wait the
// 60 s timeout.
TEST(DistTrain, BadMeshExitsTwoOnEveryRankBeforeAnyCollective) {
  REQUIRE_DIST();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--sp", "3"}, "--sp 3 does not divide the world of 2 ranks"},
      {{"--batch", "3"}, "--batch 3 is not divisible by dp = 2"},
      {{"--sp", "2", "--seq-len", "63"}, "--seq-len 63 is not divisible by --sp 2"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> args = {"--steps", "1", "--dist-timeout", "60"};
    args.insert(args.end(), flags.begin(), flags.end());
    auto ranks = env_ranks(2, memo_train(args), free_port());
    const auto rs = run_processes(ranks, 30);
    for (const auto& r : rs) {
      EXPECT_EQ(r.code, 2) << describe(rs);
      EXPECT_TRUE(contains(r.output, message)) << describe(rs);
    }
  }
  // Heads that cannot be split: a model of 3 query heads over sp 2.
  const auto dir = memo::testing::scratch_dir("dist_heads");
  const auto config = memo::testing::write_text(
      dir / "config.json",
      R"({"model_type": "llama", "hidden_size": 24, "intermediate_size": 32, "num_attention_heads": 3,
          "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 256})");
  const auto rs = run_processes(env_ranks(2, memo_train({"--sp", "2", "--model", config, "--steps", "1",
                                                         "--dist-timeout", "60"}), free_port()), 30);
  for (const auto& r : rs) {
    EXPECT_EQ(r.code, 2) << describe(rs);
    EXPECT_TRUE(contains(r.output, "3 attention heads cannot be split over --sp 2")) << describe(rs);
  }
  std::filesystem::remove_all(dir);
}

TEST(DistTrain, RanksGivenOtherOptionsExitTwo) {
  REQUIRE_DIST();
  auto ranks = env_ranks(2, memo_train({"--seq-len", "64", "--batch", "2", "--dist-timeout", "60"}), free_port());
  ranks[1].argv[3] = "32";  // rank 1: --seq-len 32
  const auto rs = run_processes(ranks, 60);
  for (const auto& r : rs) {
    EXPECT_EQ(r.code, 2) << describe(rs);
    EXPECT_TRUE(contains(r.output, "rank 1 started with other options than rank 0")) << describe(rs);
  }
}

// --dist-timeout bounds the join: rank 1 of 2 never starts, rank 0 exits 1
// naming it after the timeout (2 s), not the default 300 s.
TEST(DistTrain, MissingRankNamedWithinTheDistTimeout) {
  REQUIRE_DIST();
  auto ranks = env_ranks(2, memo_train({"--seq-len", "64", "--batch", "2", "--dist-timeout", "2"}), free_port());
  ranks.pop_back();
  const auto rs = run_processes(ranks, 60);
  EXPECT_EQ(rs[0].code, 1) << describe(rs);
  EXPECT_TRUE(contains(rs[0].output, "rank 1 of 2 did not join within 2 s")) << describe(rs);
  EXPECT_LT(rs[0].seconds, 2 + 20) << describe(rs);
}

TEST(DistTrain, SpWithoutRanksExitsTwo) {
  const auto rs = run_processes({{memo_train({"--sp", "2", "--steps", "1"}), {}}}, 30);
  EXPECT_EQ(rs[0].code, 2) << describe(rs);
  EXPECT_TRUE(contains(rs[0].output, "--sp 2 does not divide the world of 1 rank")) << describe(rs);
}

// torchrun --no-python: its agent hosts the store (TORCHELASTIC_USE_AGENT_STORE).
TEST(DistTorchrun, CollectivesUnderTorchrun) {
  REQUIRE_DIST();
  const std::string torchrun = std::string(MEMO_SOURCE_DIR) + "/.venv/bin/torchrun";
  if (!std::filesystem::exists(torchrun)) GTEST_SKIP() << "no " << torchrun << " (scripts/setup.sh makes it)";
  const auto rs = run_processes(
      {{{torchrun, "--no-python", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
         std::to_string(free_port()), MEMO_DIST_WORKER, "collectives", "--sp", "2"},
        {{"OMP_NUM_THREADS", "1"}}}},
      120);
  EXPECT_EQ(rs[0].code, 0) << describe(rs);
  for (const char* rank : {"rank 0", "rank 1"})
    EXPECT_TRUE(contains(rs[0].output, std::string(rank) +
                                           ": collectives ok (world 2 = dp 1 x sp 2, launcher torchrun, agent store 1"))
        << describe(rs);
}

}  // namespace
