// The launch environment parser and the mesh check: pure functions, no ranks.
#include <gtest/gtest.h>

#include "core/error.h"
#include "dist/launch.h"
#include "dist/mesh.h"

namespace {

using memo::InputError;
using namespace memo::dist;

// The message of the InputError `f` throws ("" when it does not throw).
template <typename F>
std::string input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(DistLaunch, NoVariablesIsOneProcess) {
  const auto l = parse_launch({});
  EXPECT_EQ(l.world_size, 1);
  EXPECT_EQ(l.rank, 0);
  EXPECT_FALSE(l.distributed());
  EXPECT_EQ(l.launcher, "single");
  // WORLD_SIZE=1 too, without needing MASTER_*.
  EXPECT_FALSE(parse_launch({{"WORLD_SIZE", "1"}, {"RANK", "0"}}).distributed());
}

TEST(DistLaunch, TorchrunVariables) {
  const auto l = parse_launch({{"WORLD_SIZE", "8"}, {"RANK", "5"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"},
                               {"MASTER_ADDR", "node3"}, {"MASTER_PORT", "29611"},
                               {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"TORCHELASTIC_RUN_ID", "x"},
                               {"TORCHELASTIC_RESTART_COUNT", "2"}});
  EXPECT_EQ(l.world_size, 8);
  EXPECT_EQ(l.rank, 5);
  EXPECT_EQ(l.local_rank, 1);
  EXPECT_EQ(l.local_world_size, 4);
  EXPECT_EQ(l.master_addr, "node3");
  EXPECT_EQ(l.master_port, 29611);
  EXPECT_TRUE(l.agent_store);
  EXPECT_EQ(l.restart_count, 2);
  EXPECT_EQ(l.launcher, "torchrun");
}

TEST(DistLaunch, PlainVariablesWithoutLocalRank) {
  const auto l = parse_launch({{"WORLD_SIZE", "4"}, {"RANK", "3"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(l.launcher, "env");
  EXPECT_FALSE(l.agent_store);
  EXPECT_EQ(l.local_rank, 3);  // one node: the rank
  // TORCHELASTIC_USE_AGENT_STORE other than "True" is not the agent's store.
  auto env = Environment{{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"},
                         {"TORCHELASTIC_USE_AGENT_STORE", "False"}};
  EXPECT_FALSE(parse_launch(env).agent_store);
}

TEST(DistLaunch, SlurmFallback) {
  const auto l = parse_launch({{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"},
                               {"SLURM_JOB_NODELIST", "gpu17"}});
  EXPECT_EQ(l.launcher, "srun");
  EXPECT_EQ(l.rank, 2);
  EXPECT_EQ(l.world_size, 4);
  EXPECT_EQ(l.local_rank, 0);
  EXPECT_EQ(l.master_addr, "gpu17");
  EXPECT_EQ(l.master_port, 29500);
  // The step's task count wins over the allocation's.
  EXPECT_EQ(parse_launch({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SLURM_STEP_NUM_TASKS", "2"},
                          {"MASTER_ADDR", "a"}}).world_size, 2);
  // A node list of several hosts needs MASTER_ADDR.
  EXPECT_NE(input_error([] {
              parse_launch({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SLURM_JOB_NODELIST", "gpu[1-2]"}});
            }).find("MASTER_ADDR"),
            std::string::npos);
  // WORLD_SIZE (torchrun inside an allocation) wins over SLURM's.
  EXPECT_EQ(parse_launch({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"WORLD_SIZE", "1"}}).world_size, 1);
}

TEST(DistLaunch, BadValuesNameTheVariable) {
  const Environment ok = {{"WORLD_SIZE", "4"}, {"RANK", "1"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "29500"}};
  auto with = [&](const std::string& k, const std::string& v) {
    Environment e = ok;
    if (v.empty()) e.erase(k); else e[k] = v;
    return input_error([&] { parse_launch(e); });
  };
  EXPECT_NE(with("RANK", "4").find("RANK=\"4\""), std::string::npos);
  EXPECT_NE(with("RANK", "-1").find("RANK"), std::string::npos);
  EXPECT_NE(with("RANK", "1x").find("RANK"), std::string::npos);
  EXPECT_NE(with("RANK", "").find("RANK"), std::string::npos);
  EXPECT_NE(with("WORLD_SIZE", "0").find("WORLD_SIZE"), std::string::npos);
  EXPECT_NE(with("WORLD_SIZE", "four").find("WORLD_SIZE"), std::string::npos);
  EXPECT_NE(with("MASTER_PORT", "0").find("MASTER_PORT"), std::string::npos);
  EXPECT_NE(with("MASTER_PORT", "70000").find("MASTER_PORT"), std::string::npos);
  EXPECT_NE(with("MASTER_PORT", "").find("MASTER_PORT"), std::string::npos);
  EXPECT_NE(with("MASTER_ADDR", "").find("MASTER_ADDR"), std::string::npos);
  EXPECT_NE(with("LOCAL_WORLD_SIZE", "9").find("LOCAL_WORLD_SIZE"), std::string::npos);
  EXPECT_EQ(with("MASTER_PORT", "65535"), "");
  EXPECT_NE(input_error([] { parse_launch({{"WORLD_SIZE", "1"}, {"RANK", "1"}}); }).find("RANK"), std::string::npos);
}

TEST(DistMesh, ShapesAndCoordinates) {
  const auto m = check_mesh(8, 2, {4096, 8, 32, 8});
  EXPECT_EQ(m.dp, 4);
  EXPECT_EQ(m.sp, 2);
  EXPECT_EQ(m.describe(), "world 8 = dp 4 x sp 2");
  // sp groups are consecutive ranks; dp groups take one of each.
  EXPECT_EQ(sp_group_ranks(m, 5), (std::vector<int>{4, 5}));
  EXPECT_EQ(dp_group_ranks(m, 5), (std::vector<int>{1, 3, 5, 7}));
  for (int r = 0; r < 8; ++r) EXPECT_EQ(rank_at(m, coords_of(m, r)), r);
  EXPECT_EQ(coords_of(m, 5).dp_index, 2);
  EXPECT_EQ(coords_of(m, 5).sp_index, 1);
  // Every rank in exactly one sp group and one dp group.
  std::vector<int> seen_sp(8), seen_dp(8);
  for (int r = 0; r < 8; r += 2)
    for (int x : sp_group_ranks(m, r)) seen_sp[static_cast<size_t>(x)]++;
  for (int r = 0; r < 2; ++r)
    for (int x : dp_group_ranks(m, r)) seen_dp[static_cast<size_t>(x)]++;
  EXPECT_EQ(seen_sp, std::vector<int>(8, 1));
  EXPECT_EQ(seen_dp, std::vector<int>(8, 1));
}

TEST(DistMesh, GqaSplitOrReplicated) {
  EXPECT_EQ(kv_sharding(8, 4), KvSharding::Split);
  EXPECT_EQ(kv_sharding(8, 16), KvSharding::Replicated);
  EXPECT_EQ(local_heads(8, 4), 2);
  EXPECT_EQ(local_heads(8, 16), 1);
  EXPECT_NO_THROW(check_mesh(16, 16, {0, 0, 32, 8}));  // 8 kv heads replicated twice
  EXPECT_NO_THROW(check_mesh(4, 4, {0, 0, 32, 8}));    // split two each
}

TEST(DistMesh, BadMeshNamesTheQuantity) {
  EXPECT_NE(input_error([] { check_mesh(4, 3, {}); }).find("--sp 3 does not divide the world of 4"), std::string::npos);
  EXPECT_NE(input_error([] { check_mesh(1, 2, {}); }).find("--sp 2"), std::string::npos);
  EXPECT_NE(input_error([] { check_mesh(4, 2, {101, 0, 0, 0}); }).find("--seq-len 101 is not divisible by --sp 2"), std::string::npos);
  EXPECT_NE(input_error([] { check_mesh(4, 2, {64, 3, 0, 0}); }).find("--batch 3 is not divisible by dp = 2"),
            std::string::npos);
  EXPECT_NE(input_error([] { check_mesh(4, 4, {64, 1, 6, 2}); }).find("6 attention heads"), std::string::npos);
  EXPECT_NE(input_error([] { check_mesh(4, 4, {64, 1, 12, 3}); }).find("3 key/value heads"), std::string::npos);
  EXPECT_NE(input_error([] { check_mesh(6, 6, {0, 1, 12, 4}); }).find("4 key/value heads"), std::string::npos);
  EXPECT_NE(input_error([] { check_mesh(4, 0, {}); }).find("--sp"), std::string::npos);
}

}  // namespace
